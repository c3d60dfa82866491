r"""Classifier heads and the loss that trains each of them.

A head maps features ``x [B, d]`` to class scores ``[B, K]`` and lives in the model (so that
DistributedDataParallel all-reduces its gradients and checkpoints hold it); :class:`HeadLoss`
trains the model's own head, never a copy.

=============  ================================================  ==================================
``head``       module held by the model                          loss (:class:`HeadLoss`)
=============  ================================================  ==================================
``linear``     :class:`LinearHead`: 1x1 conv (bias-free) and     cross-entropy on its output
               BatchNorm over the classes, as the official
               AdderNet classifier
``slac``       :class:`~addernet_cuda.nn.SkewLaplaceMixture`     the SLAC loss of
                                                                 :class:`~addernet_cuda.nn.SLACLoss`
                                                                 (``lam``, ``beta``; ``beta = 0``
                                                                 is "SL")
``lgm``        :class:`~addernet_cuda.nn.LGMLoss` itself         the head (it owns its means and
                                                                 covariances; ``alpha``, ``lam``)
``mom``        :class:`~addernet_cuda.nn.MoMLoss` itself         the head
``lsoftmax``   :class:`~addernet_cuda.nn.LSoftmaxLoss` itself    the head (``margin``)
=============  ================================================  ==================================

Every head has the same small protocol (:mod:`addernet_cuda.nn._head_common`): ``logits(x)``
(margin-free for LGM, MoM and L-Softmax; ``log f_k(x) + log(1/K)`` for SLAC; argmax = prediction),
``loss(x, y)`` (the loss, its terms and the logits, from one pass), ``optimizer_groups(...)`` and
``op_count()``. Each head carries its loss settings (SLAC's ``lam``, ``beta``, ``detach_target``;
LGM/MoM's ``alpha``, ``lam``; L-Softmax's ``margin``), set by :func:`make_head` from the keyword
arguments of its row in :data:`HEAD_REGISTRY`, the one place that tells the kinds apart.
"""

from __future__ import annotations

from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn

from ..nn import LGMLoss, LSoftmaxLoss, MoMLoss, SkewLaplaceMixture
from ..nn._head_common import (
    HeadOutput,
    PlainClassifierGroups,
    batch_mean_cross_entropy,
)

__all__ = [
    "HEADS",
    "HEAD_REGISTRY",
    "LinearHead",
    "make_head",
    "head_kind",
    "head_logits",
    "HeadLoss",
    "head_param_groups",
]


class LinearHead(PlainClassifierGroups, nn.Module):
    """``BatchNorm(Conv1x1(x))``: the official AdderNet classifier (``fc`` then ``bn2``), on
    features ``[B, d]``; a 1x1 convolution of a 1x1 map is a linear layer, multiplicative.
    Trained with cross-entropy (batch mean; 0 for an empty batch)."""

    def __init__(
        self, feat_dim: int, num_classes: int, bias: bool = False, batch_norm: bool = True
    ):
        super().__init__()
        self.feat_dim, self.num_classes = int(feat_dim), int(num_classes)
        self.fc = nn.Conv2d(feat_dim, num_classes, 1, bias=bias)
        self.bn = nn.BatchNorm2d(num_classes) if batch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(x[:, :, None, None])).flatten(1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)

    def loss(self, x: torch.Tensor, targets: torch.Tensor) -> HeadOutput:
        logits = self(x)
        loss = batch_mean_cross_entropy(logits.float(), targets)
        return HeadOutput(loss, {"loss": loss.detach()}, logits)

    def op_count(self) -> Tuple[int, int]:
        """(0, 0): the 1x1 convolution is counted as a layer by the op counter."""
        return 0, 0


class HeadSpec(NamedTuple):
    """A row of :data:`HEAD_REGISTRY`: the head's class and how :func:`make_head` builds it from
    ``(num_classes, feat_dim, options)`` (``options``: make_head's keyword arguments)."""

    cls: type
    build: Callable[[int, int, dict], nn.Module]


def _slac(k: int, d: int, o: dict) -> nn.Module:
    frozen = {f"freeze_{p}": o.get(f"freeze_{p}", False) for p in _FROZEN}
    slac = {n: o[n] for n in ("lam", "beta", "detach_target") if n in o}
    return SkewLaplaceMixture(k, d, **frozen, **slac)


_FROZEN = ("location", "covariance", "skewness")
HEAD_REGISTRY: Dict[str, HeadSpec] = {
    "linear": HeadSpec(LinearHead, lambda k, d, o: LinearHead(d, k)),
    "slac": HeadSpec(SkewLaplaceMixture, _slac),
    "lgm": HeadSpec(
        LGMLoss, lambda k, d, o: LGMLoss(k, d, o.get("lgm_alpha", 0.1), o.get("lgm_lam", 0.01))
    ),
    "mom": HeadSpec(
        MoMLoss, lambda k, d, o: MoMLoss(k, d, o.get("lgm_alpha", 0.1), o.get("lgm_lam", 0.01))
    ),
    "lsoftmax": HeadSpec(
        LSoftmaxLoss, lambda k, d, o: LSoftmaxLoss(k, d, margin=o.get("lsoftmax_margin", 4))
    ),
}
HEADS = tuple(HEAD_REGISTRY)
_OPTIONS = {"lgm_alpha", "lgm_lam", "lsoftmax_margin", "lam", "beta", "detach_target"}
_OPTIONS |= {f"freeze_{p}" for p in _FROZEN}


def make_head(kind: str, num_classes: int, feat_dim: int, **options) -> nn.Module:
    """The head module for ``kind`` (one of :data:`HEADS`). Options: ``freeze_location``,
    ``freeze_covariance``, ``freeze_skewness`` (Table 4 of the SLAC paper), ``lam``, ``beta``,
    ``detach_target`` (the SLAC loss) for ``slac``; ``lgm_alpha``, ``lgm_lam`` for ``lgm`` and
    ``mom``; ``lsoftmax_margin`` for ``lsoftmax``. Options of other heads are ignored."""
    if kind not in HEAD_REGISTRY:
        raise ValueError(f"head must be one of {HEADS}, got {kind!r}")
    unknown = set(options) - _OPTIONS
    if unknown:
        raise TypeError(f"make_head: unknown options {sorted(unknown)}")
    return HEAD_REGISTRY[kind].build(int(num_classes), int(feat_dim), options)


def head_kind(head: nn.Module) -> str:
    """The registry name of a head module."""
    for kind, spec in HEAD_REGISTRY.items():
        if type(head) is spec.cls:
            return kind
    raise TypeError(f"not a known head: {type(head).__name__}")


def head_logits(head: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Class scores ``[B, K]`` of any head (argmax = prediction)."""
    return head.logits(features)


def head_param_groups(
    head: nn.Module,
    lr: float,
    *,
    weight_decay: float,
    head_weight_decay: float,
    cov_lr_scale: float,
) -> List[dict]:
    """Optimizer groups for a head's trainable parameters (``head.optimizer_groups``).

    ``linear`` and ``lsoftmax`` are ordinary classifiers: one group with the model's
    ``weight_decay``. For the distribution heads (``slac``, ``lgm``, ``mom``) the covariances
    (``log_var``) get ``lr / cov_lr_scale`` (the SLAC recipe; applied to LGM and MoM too, so the
    compared heads are trained alike) and every distribution parameter gets
    ``head_weight_decay`` (0 by default: decay would pull locations to the origin and skewness to
    0, see :meth:`SkewLaplaceMixture.param_groups`). Frozen parameters are left out."""
    return head.optimizer_groups(
        lr,
        weight_decay=weight_decay,
        head_weight_decay=head_weight_decay,
        cov_lr_scale=cov_lr_scale,
    )


class HeadLoss(nn.Module):
    """The training loss of a model's head: ``forward(features, targets) -> loss`` (a scalar),
    keeping the detached scores in ``last_logits`` and the separate terms in ``last_terms``, all
    from one pass over the head (``head.loss``).

    Args:
        head: the model's head (``model.head``; with DDP, ``ddp_model.module.head``). Its loss
            settings (SLAC's ``lam``, ``beta``; LGM's margin ...) are the head's own, set by
            :func:`make_head`.
    """

    def __init__(self, head: nn.Module):
        super().__init__()
        self.kind = head_kind(head)
        self.head = head
        self.last_logits: Optional[torch.Tensor] = None
        self.last_terms: Dict[str, Optional[torch.Tensor]] = {}

    def forward(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        out = self.head.loss(features, targets)
        self.last_logits, self.last_terms = out.logits.detach(), dict(out.terms)
        return out.loss
