r"""What the classifier heads share: the head protocol's result type, argument checks, the
compute dtype, the batch-mean cross-entropy, the quadratic form by expansion, the optimizer
groups, and the base class of the heads that are losses.

Every head (:class:`~addernet_cuda.models.heads.LinearHead`,
:class:`~addernet_cuda.nn.SkewLaplaceMixture`, :class:`~addernet_cuda.nn.LGMLoss`,
:class:`~addernet_cuda.nn.MoMLoss`, :class:`~addernet_cuda.nn.LSoftmaxLoss`) has

- ``logits(x)``: class scores ``[B, K]`` (margin-free; argmax = prediction);
- ``loss(x, y)``: a :class:`HeadOutput` (the scalar loss, its terms detached, the logits), from
  one pass over the head;
- ``optimizer_groups(lr, *, weight_decay, head_weight_decay, cov_lr_scale)``: its trainable
  parameters as optimizer groups;
- ``op_count()``: ``(mul, add)`` per image of what the op counter's layer hooks do not see.

Batch means divide by ``max(B, 1)``, so an empty batch gives a loss of 0 rather than NaN.
float16/bfloat16 heads compute in float32 (:func:`compute_dtype`); targets are integer class
indices (:func:`class_targets`).
"""

from __future__ import annotations

import contextlib
import operator
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class HeadOutput(NamedTuple):
    """What ``head.loss(x, y)`` returns: ``loss`` (a scalar with its graph), ``terms`` (the
    loss's parts, detached scalars or None, ``"loss"`` among them) and ``logits`` ``[B, K]``."""

    loss: torch.Tensor
    terms: Dict[str, Optional[torch.Tensor]]
    logits: torch.Tensor


class LossHead(nn.Module):
    """Base of the heads that are losses (LGM, MoM, L-Softmax, softmax): ``forward(features,
    targets)`` returns ``self.loss(...).loss`` and keeps the terms in ``last_terms``."""

    def forward(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        out = self.loss(features, targets)
        self.last_terms = out.terms
        return out.loss

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """The class of highest score, ``[B]``."""
        return self.logits(features).argmax(1)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a head computes in: float32 for float16/bfloat16, else its own dtype."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def positive_int(name: str, value) -> int:
    """``value`` as an int >= 1, or a TypeError/ValueError naming ``name``."""
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)  # also numpy and 0-d tensor integers
    except TypeError:
        raise TypeError(f"{name} must be an int, got {value!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def class_targets(targets: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Integer class-index targets ``[B]`` as int64 on the logits' device; float, bool and
    complex targets are refused (they would be truncated to a class index)."""
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a tensor of class indices, got {type(targets).__name__}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(
            f"targets must be class indices of an integer dtype (torch.long), got {targets.dtype}"
        )
    if targets.shape != logits.shape[:1]:
        raise ValueError(f"targets must be [{logits.shape[0]}], got {list(targets.shape)}")
    return targets.to(device=logits.device, dtype=torch.long)


def batch_mean_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``sum_i CE(logits_i, y_i) / max(B, 1)``."""
    return F.cross_entropy(logits, targets, reduction="sum") / max(logits.shape[0], 1)


def sq_mahalanobis(x: torch.Tensor, loc: torch.Tensor, prec: torch.Tensor):
    """``Q[b, k] = sum_j prec[k, j] (x[b, j] - loc[k, j])^2`` by expansion, clamped at 0.

    ``x [B, d]``, ``loc [K, d]``, ``prec [K, d]``. Both sides are shifted by the (detached) mean
    location first, which leaves Q unchanged and reduces float32 cancellation when the features
    and locations sit far from the origin. Returns ``(Q [B, K], x - c, loc - c)``.
    """
    c = loc.detach().mean(0)
    xc = x - c
    lc = loc - c
    pl = prec * lc
    q = torch.addmm((pl * lc).sum(1).unsqueeze(0), xc * xc, prec.t())
    q = torch.addmm(q, xc, pl.t(), alpha=-2.0)
    return q.clamp_min(0.0), xc, lc


def no_autocast(device_type: str):
    """Autocast disabled for ``device_type`` (a no-op where it has no autocast)."""
    try:
        return torch.autocast(device_type=device_type, enabled=False)
    except RuntimeError:  # a device type without autocast support
        return contextlib.nullcontext()


class PlainClassifierGroups:
    """Mixin of the ordinary classifiers (linear, L-Softmax): ``optimizer_groups`` gives their
    trainable parameters one group with the model's weight decay at the optimizer's rate."""

    def optimizer_groups(
        self, lr: float, *, weight_decay: float, head_weight_decay: float, cov_lr_scale: float
    ) -> List[dict]:
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "weight_decay": weight_decay, "name": "head"}] if params else []


def distribution_groups(
    names: Tuple[str, str],
    main: Sequence[torch.Tensor],
    covariance: torch.Tensor,
    lr: float,
    weight_decay: float,
    cov_lr_scale: float,
) -> List[dict]:
    """A distribution head's trainable parameters: ``main`` (locations, skewness, mixing) at
    ``lr`` and the covariance at ``lr / cov_lr_scale``, all with ``weight_decay``; frozen ones
    left out. ``names``: the two groups' names."""
    if cov_lr_scale <= 0:
        raise ValueError(f"cov_lr_scale must be positive, got {cov_lr_scale}")
    groups = []
    main = [p for p in main if p.requires_grad]
    if main:
        groups.append({"params": main, "lr": lr, "weight_decay": weight_decay, "name": names[0]})
    if covariance.requires_grad:
        groups.append(
            {
                "params": [covariance],
                "lr": lr / cov_lr_scale,
                "weight_decay": weight_decay,
                "name": names[1],
            }
        )
    return groups
