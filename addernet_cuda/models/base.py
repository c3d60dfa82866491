"""The shared skeleton of the models: a feature extractor ``[B, C, H, W] -> [B, d]`` and a head.

``model(x)`` returns class scores ``[B, K]`` (``head_logits``); ``model(x, return_features=True)``
returns the features ``[B, d]`` that the losses take, which is how the training loop calls a
DistributedDataParallel-wrapped model (the head's parameters then get their gradients in the same
backward, through :class:`~addernet_cuda.models.heads.HeadLoss`).

Layers: ``conv_layer(cnn, ...)`` builds the model's adder layers, or, for the CNN twin
(``cnn=True``), ``nn.Conv2d`` with the same configuration, so both have the same structure, names
and state-dict keys (the adder weight is ``weight`` as in ``nn.Conv2d``).
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn as nn

from ..nn import AdderConv2d
from .heads import HEADS, head_logits, make_head


def conv_layer(
    cnn: bool,
    in_channels: int,
    out_channels: int,
    kernel_size: Union[int, Tuple[int, int]],
    stride: Union[int, Tuple[int, int]] = 1,
    padding: Union[int, Tuple[int, int]] = 0,
    *,
    eta: Optional[float] = 0.2,
    input_grad: str = "hardtanh",
) -> nn.Module:
    """A bias-free adder layer (``AdderConv2d``), or ``nn.Conv2d`` when ``cnn``."""
    if cnn:
        return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
    return AdderConv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride,
        padding,
        bias=False,
        eta=eta,
        input_grad=input_grad,
    )


class Classifier(nn.Module):
    """Base class of the models: a subclass calls ``super().__init__(num_classes, **options)``,
    builds its body with :meth:`conv` (``_body``: image -> ``[B, natural_dim, ...]``) and calls
    :meth:`_finish`, which adds the projection to ``feat_dim`` (if it differs from the natural
    size) and the head.

    Args (the options every model takes, by keyword):
        num_classes: ``K``.
        head: one of ``linear`` (default), ``slac``, ``lgm``, ``mom``, ``lsoftmax``.
        feat_dim: feature size; default (``None``) the model's natural size. Another size adds a
            ``Linear(natural_dim, feat_dim) + BatchNorm1d`` projection (e.g. 2 for plots).
        cnn: the CNN twin (``nn.Conv2d`` in place of every adder layer).
        eta, input_grad: passed to every ``AdderConv2d``.
        head_kwargs: passed to :func:`~addernet_cuda.models.heads.make_head`.

    Attributes: ``num_classes``, ``feat_dim``, ``natural_dim``, ``head_kind``, ``cnn``,
    ``input_size`` (``(C, H, W)`` the model is built for), ``head``, ``proj`` (``None`` or
    ``Linear(natural_dim, feat_dim, bias=False)`` + ``BatchNorm1d``: multiplicative, like the
    classifier it sits next to; the op counter counts it).
    """

    input_size: Tuple[int, int, int] = (3, 32, 32)

    def __init__(
        self,
        num_classes: int,
        *,
        head: str = "linear",
        feat_dim: Optional[int] = None,
        cnn: bool = False,
        eta: Optional[float] = 0.2,
        input_grad: str = "hardtanh",
        head_kwargs: Optional[dict] = None,
    ):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        self.num_classes = int(num_classes)
        self.head_kind = head
        self.cnn = bool(cnn)
        self._requested_feat_dim = feat_dim
        self._conv_options = {"eta": eta, "input_grad": input_grad}
        self._head_kwargs = dict(head_kwargs or {})

    def conv(self, in_channels, out_channels, kernel_size, stride=1, padding=0) -> nn.Module:
        """One of the model's adder layers (``nn.Conv2d`` in the CNN twin); see :func:`conv_layer`."""
        return conv_layer(
            self.cnn, in_channels, out_channels, kernel_size, stride, padding, **self._conv_options
        )

    def _finish(self, natural_dim: int) -> None:
        self.natural_dim = int(natural_dim)
        feat_dim = self._requested_feat_dim
        self.feat_dim = int(feat_dim) if feat_dim is not None else self.natural_dim
        if self.feat_dim < 1:
            raise ValueError(f"feat_dim must be >= 1, got {feat_dim}")
        self.proj = None
        if self.feat_dim != self.natural_dim:
            self.proj = nn.Sequential(
                nn.Linear(self.natural_dim, self.feat_dim, bias=False),
                nn.BatchNorm1d(self.feat_dim),
            )
        self.head = make_head(self.head_kind, self.num_classes, self.feat_dim, **self._head_kwargs)

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, feat_dim]``."""
        f = self._body(x).flatten(1)
        return f if self.proj is None else self.proj(f)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        f = self.features(x)
        return f if return_features else head_logits(self.head, f)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self(x).argmax(1)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, feat_dim={self.feat_dim}, head={self.head_kind!r}, "
            f"{'cnn' if self.cnn else 'ann'}"
        )
