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
``slac``       :class:`~addernet_cuda.nn.SkewLaplaceMixture`     :class:`~addernet_cuda.nn.SLACLoss`
                                                                 sharing the mixture (``lam``,
                                                                 ``beta``; ``beta = 0`` is "SL")
``lgm``        :class:`~addernet_cuda.nn.LGMLoss` itself         the head (it owns its means and
                                                                 covariances; ``alpha``, ``lam``)
``mom``        :class:`~addernet_cuda.nn.MoMLoss` itself         the head
``lsoftmax``   :class:`~addernet_cuda.nn.LSoftmaxLoss` itself    the head (``margin``)
=============  ================================================  ==================================

The baseline losses of :mod:`addernet_cuda.nn.losses` own their classifier parameters and take
no shared module, so for them the loss module *is* the head. Every head's scores come from
:func:`head_logits` (margin-free for LGM, MoM and L-Softmax; ``log f_k(x) + log(1/K)`` for SLAC),
whose argmax is the prediction.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn import LGMLoss, LSoftmaxLoss, MoMLoss, SkewLaplaceMixture, SLACLoss

HEADS = ("linear", "slac", "lgm", "mom", "lsoftmax")

__all__ = ["HEADS", "LinearHead", "make_head", "head_logits", "HeadLoss", "head_param_groups"]


class LinearHead(nn.Module):
    """``BatchNorm(Conv1x1(x))``: the official AdderNet classifier (``fc`` then ``bn2``), on
    features ``[B, d]``; a 1x1 convolution of a 1x1 map is a linear layer, multiplicative."""

    def __init__(
        self, feat_dim: int, num_classes: int, bias: bool = False, batch_norm: bool = True
    ):
        super().__init__()
        self.feat_dim, self.num_classes = int(feat_dim), int(num_classes)
        self.fc = nn.Conv2d(feat_dim, num_classes, 1, bias=bias)
        self.bn = nn.BatchNorm2d(num_classes) if batch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(x[:, :, None, None])).flatten(1)


def make_head(
    kind: str,
    num_classes: int,
    feat_dim: int,
    *,
    lgm_alpha: float = 0.1,
    lgm_lam: float = 0.01,
    lsoftmax_margin: int = 4,
    freeze_location: bool = False,
    freeze_covariance: bool = False,
    freeze_skewness: bool = False,
) -> nn.Module:
    """The head module for ``kind`` (one of :data:`HEADS`). The freeze switches apply to
    ``slac`` (Table 4 of the SLAC paper), ``lgm_*`` to ``lgm`` and ``mom``."""
    if kind == "linear":
        return LinearHead(feat_dim, num_classes)
    if kind == "slac":
        return SkewLaplaceMixture(
            num_classes,
            feat_dim,
            freeze_location=freeze_location,
            freeze_covariance=freeze_covariance,
            freeze_skewness=freeze_skewness,
        )
    if kind == "lgm":
        return LGMLoss(num_classes, feat_dim, alpha=lgm_alpha, lam=lgm_lam)
    if kind == "mom":
        return MoMLoss(num_classes, feat_dim, alpha=lgm_alpha, lam=lgm_lam)
    if kind == "lsoftmax":
        return LSoftmaxLoss(num_classes, feat_dim, margin=lsoftmax_margin)
    raise ValueError(f"head must be one of {HEADS}, got {kind!r}")


def head_kind(head: nn.Module) -> str:
    for kind, cls in (
        ("linear", LinearHead),
        ("slac", SkewLaplaceMixture),
        ("mom", MoMLoss),
        ("lgm", LGMLoss),
        ("lsoftmax", LSoftmaxLoss),
    ):
        if isinstance(head, cls):
            return kind
    raise TypeError(f"not a known head: {type(head).__name__}")


def head_logits(head: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Class scores ``[B, K]`` of any head (argmax = prediction)."""
    if isinstance(head, (LinearHead, SkewLaplaceMixture)):
        return head(features)
    return head.logits(features)


def head_param_groups(
    head: nn.Module,
    lr: float,
    *,
    weight_decay: float,
    head_weight_decay: float,
    cov_lr_scale: float,
) -> List[dict]:
    """Optimizer groups for a head's trainable parameters.

    ``linear`` and ``lsoftmax`` are ordinary classifiers: one group with the model's
    ``weight_decay``. For the distribution heads (``slac``, ``lgm``, ``mom``) the covariances
    (``log_var``) get ``lr / cov_lr_scale`` (the SLAC recipe; applied to LGM and MoM too, so the
    compared heads are trained alike) and every distribution parameter gets
    ``head_weight_decay`` (0 by default: decay would pull locations to the origin and skewness to
    0, see :meth:`SkewLaplaceMixture.param_groups`). Frozen parameters are left out."""
    if isinstance(head, (LinearHead, LSoftmaxLoss)):
        params = [p for p in head.parameters() if p.requires_grad]
        return [{"params": params, "weight_decay": weight_decay, "name": "head"}] if params else []
    if isinstance(head, SkewLaplaceMixture):
        return head.param_groups(lr, weight_decay=head_weight_decay, cov_lr_scale=cov_lr_scale)
    cov = [p for n, p in head.named_parameters() if n == "log_var" and p.requires_grad]
    rest = [p for n, p in head.named_parameters() if n != "log_var" and p.requires_grad]
    groups = []
    if rest:
        groups.append({"params": rest, "lr": lr, "weight_decay": head_weight_decay, "name": "head"})
    if cov:
        groups.append(
            {
                "params": cov,
                "lr": lr / cov_lr_scale,
                "weight_decay": head_weight_decay,
                "name": "head_covariance",
            }
        )
    return groups


class HeadLoss(nn.Module):
    """The training loss of a model's head: ``forward(features, targets) -> loss`` (a scalar),
    keeping the detached scores in ``last_logits`` and the separate terms in ``last_terms``.

    Args:
        head: the model's head (``model.head``; with DDP, ``ddp_model.module.head``).
        lam, beta, detach_target: SLAC's weights (``slac`` only; ``beta = 0`` is the paper's
            "SL" variant). LGM/MoM/L-Softmax carry their settings in the head itself.
    """

    def __init__(
        self, head: nn.Module, *, lam: float = 0.01, beta: float = 0.1, detach_target: bool = True
    ):
        super().__init__()
        self.kind = head_kind(head)
        if self.kind == "slac":
            self.loss = SLACLoss(
                head.num_classes,
                head.feat_dim,
                lam=lam,
                beta=beta,
                mixture=head,
                detach_target=detach_target,
            )
        else:
            self.loss = head
        self.last_logits: Optional[torch.Tensor] = None
        self.last_terms: Dict[str, Optional[torch.Tensor]] = {}

    def forward(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear":
            logits = self.loss(features)
            loss = F.cross_entropy(logits.float(), targets)
            self.last_logits = logits.detach()
            self.last_terms = {"loss": loss.detach()}
            return loss
        loss = self.loss(features, targets)
        if self.kind == "slac":
            self.last_logits = self.loss.last_logits
        else:
            with torch.no_grad():
                self.last_logits = self.loss.logits(features.detach())
        self.last_terms = dict(self.loss.last_terms)
        return loss
