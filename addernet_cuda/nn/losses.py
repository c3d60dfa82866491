r"""Baseline classification losses the SLAC paper compares against (its Table 3).

All take features ``x[B, d]`` and targets ``y[B]`` (int64 in ``[0, K)``), own their classifier
parameters, return a scalar from ``loss(features, targets)``, predict with ``.predict(features)``
-> ``[B]``, give the margin-free logits ``[B, K]`` with ``.logits(features)``, and keep the
separate terms, detached, in ``.last_terms``.

- :class:`LGMLoss`, large-margin Gaussian mixture (Wan et al., CVPR 2018). Class ``k`` is
  ``N(mu_k, Sigma_k)`` with ``Sigma_k = diag(var_k)``; with ``d_k = 1/2 (x-mu_k)^T Sigma_k^-1 (x-mu_k)``

      logits_k   = -d_k - 1/2 log|Sigma_k|         (uniform prior and the common -d/2 log 2 pi dropped)
      margin     : the target class's d_y is multiplied by (1 + alpha)
      L          = cross_entropy(margin logits, y) + lam * mean_i [ d_{y_i} + 1/2 log|Sigma_{y_i}| ]

- :class:`MoMLoss`, the paper's "mixture of Gaussian mixture": each class is a mixture of ``C = 2``
  diagonal Gaussians with learnable mixing weights ``pi_k = softmax(w_k)`` (``w = 0`` at init,
  so ``pi = 1/2``); with ``d_kc`` as above for component ``c`` of class ``k``

      logits_k   = logsumexp_c [ log pi_kc - d_kc - 1/2 log|Sigma_kc| ]
      margin     : for the target class every component's d_yc is multiplied by (1 + alpha)
      L          = cross_entropy(margin logits, y) + lam * mean_i [ -logits_{y_i} ]

  With one component it is :class:`LGMLoss`.

- :class:`LSoftmaxLoss`, large-margin softmax (Liu et al., ICML 2016), on a bias-free linear head
  ``W[K, d]``: the target logit ``|w_y| |x| cos(theta)`` is replaced by

      f_y = |w_y| |x| (lambda cos(theta) + psi(theta)) / (1 + lambda)
      psi(theta) = (-1)^k cos(m theta) - 2k,   theta in [k pi/m, (k+1) pi/m],  k = 0..m-1

  and ``lambda`` is annealed from large (plain softmax) towards ``lambda_min`` by the official
  schedule ``lambda(t) = max(lambda_min, base (1 + gamma t)^(-power))``, ``t`` the number of
  training-mode forward passes so far (kept in the state dict).

- :class:`SoftmaxLoss`, cross-entropy on a linear head with bias.

The Gaussian quadratic forms are expanded into matrix products as in :mod:`.slac`; nothing of size
``B x K x d`` is formed.
As in :mod:`.slac`, a float16/bfloat16 loss computes in float32 (its parameters cast up, the
logits and the loss in float32), and targets must be class indices of an integer dtype.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _head_common as hc

__all__ = ["LGMLoss", "MoMLoss", "LSoftmaxLoss", "SoftmaxLoss"]


def _check(features: torch.Tensor, feat_dim: int, param: torch.Tensor) -> torch.Tensor:
    if features.dim() != 2 or features.shape[1] != feat_dim:
        raise ValueError(f"features must be [B, {feat_dim}], got {list(features.shape)}")
    return features.to(hc.compute_dtype(param.dtype))


def _up(param: torch.Tensor) -> torch.Tensor:
    """``param`` in the compute dtype (float32 for float16/bfloat16; see :mod:`.slac`)."""
    return param.to(hc.compute_dtype(param.dtype))


class _GaussianMixtureLoss(hc.LossHead):
    """Shared part of LGM and MoM: ``C`` diagonal Gaussian components per class."""

    def __init__(
        self,
        num_classes: int,
        feat_dim: int,
        num_components: int,
        alpha: float,
        lam: float,
        device=None,
        dtype=None,
    ):
        super().__init__()
        num_classes = hc.positive_int("num_classes", num_classes)
        feat_dim = hc.positive_int("feat_dim", feat_dim)
        num_components = hc.positive_int("num_components", num_components)
        if alpha < 0:
            raise ValueError(f"alpha (the margin) must be >= 0, got {alpha}")
        factory = {"device": device, "dtype": dtype}
        self.num_classes, self.feat_dim, self.num_components = (
            int(num_classes),
            int(feat_dim),
            int(num_components),
        )
        self.alpha = float(alpha)
        self.lam = float(lam)
        self.means = nn.Parameter(torch.empty(num_classes * num_components, feat_dim, **factory))
        self.log_var = nn.Parameter(torch.zeros(num_classes * num_components, feat_dim, **factory))
        nn.init.xavier_uniform_(self.means)
        self.last_terms: Dict[str, torch.Tensor] = {}

    def covariance(self) -> torch.Tensor:
        """Variances, ``[K * C, d]`` (component ``c`` of class ``k`` at row ``k * C + c``)."""
        return self.log_var.exp()

    def _component_terms(self, x: torch.Tensor):
        """``d_kc`` and ``-1/2 log|Sigma_kc|``, as ``[B, K, C]`` and ``[K, C]``."""
        log_var = _up(self.log_var)
        q, _, _ = hc.sq_mahalanobis(x, _up(self.means), torch.exp(-log_var))
        k, c = self.num_classes, self.num_components
        return 0.5 * q.view(-1, k, c), -0.5 * log_var.sum(1).view(k, c)

    def _log_mixing(self) -> Optional[torch.Tensor]:
        return None

    @staticmethod
    def _class_logits(dist: torch.Tensor, comp_const: torch.Tensor) -> torch.Tensor:
        """``logsumexp_c [comp_const - dist]`` (``log pi - 1/2 log|Sigma|`` minus ``d``)."""
        return (comp_const - dist).logsumexp(-1)

    def _comp_const(self, half_logdet: torch.Tensor) -> torch.Tensor:
        log_pi = self._log_mixing()
        return half_logdet if log_pi is None else half_logdet + log_pi

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Margin-free logits (log-likelihood up to a common constant), ``[B, K]``."""
        with hc.no_autocast(features.device.type):
            x = _check(features, self.feat_dim, self.means)
            dist, half_logdet = self._component_terms(x)
            return self._class_logits(dist, self._comp_const(half_logdet))

    def loss(self, features: torch.Tensor, targets: torch.Tensor) -> hc.HeadOutput:
        """The loss, its terms and the margin-free logits, from one pass (the head protocol)."""
        with hc.no_autocast(features.device.type):
            x = _check(features, self.feat_dim, self.means)
            dist, half_logdet = self._component_terms(x)
            comp_const = self._comp_const(half_logdet)
            logits = self._class_logits(dist, comp_const)
            y = hc.class_targets(targets, logits)
            # The target class's log-likelihood with every component distance scaled by 1 + alpha.
            dist_y = dist.gather(1, y.view(-1, 1, 1).expand(-1, 1, self.num_components)).squeeze(1)
            margin_y = self._class_logits((1.0 + self.alpha) * dist_y, comp_const[y])
            margin_logits = logits.scatter(1, y.unsqueeze(1), margin_y.unsqueeze(1))
            ce = hc.batch_mean_cross_entropy(margin_logits, y)
            nll = -logits.gather(1, y.unsqueeze(1)).sum() / max(logits.shape[0], 1)
            loss = ce + self.lam * nll
        terms = {"loss": loss.detach(), "ce": ce.detach(), "nll": nll.detach()}
        return hc.HeadOutput(loss, terms, logits)

    def optimizer_groups(
        self, lr: float, *, weight_decay: float, head_weight_decay: float, cov_lr_scale: float
    ) -> List[dict]:
        """Means (and mixing weights) at ``lr``, covariances at ``lr / cov_lr_scale``, both with
        ``head_weight_decay``: trained as the SLAC head, so the compared heads are alike."""
        main = [p for n, p in self.named_parameters() if n != "log_var"]
        return hc.distribution_groups(
            ("head", "head_covariance"), main, self.log_var, lr, head_weight_decay, cov_lr_scale
        )

    def op_count(self) -> Tuple[int, int]:
        """``2KCd + KC`` multiplications and ``2KCd + KC + K(C-1)`` additions per image."""
        k, c, d = self.num_classes, self.num_components, self.feat_dim
        return 2 * k * c * d + k * c, 2 * k * c * d + k * c + k * (c - 1)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, feat_dim={self.feat_dim}, alpha={self.alpha}, lam={self.lam}"


class LGMLoss(_GaussianMixtureLoss):
    r"""Large-margin Gaussian mixture loss (Wan et al., CVPR 2018), diagonal covariance.

    ``L = cross_entropy(margin logits, y) + lam * mean_i [d_{y_i} + 1/2 log|Sigma_{y_i}|]`` with
    logits ``-d_k - 1/2 log|Sigma_k|``, ``d_k = 1/2 (x-mu_k)^T Sigma_k^-1 (x-mu_k)``, and the target
    class's ``d_y`` multiplied by ``1 + alpha`` in the margin logits (see the module docstring).

    Args:
        alpha: classification margin. 0.1.
        lam: likelihood-regularisation weight; the term is the batch mean. 0.01.
        factory: ``device`` and ``dtype`` of the parameters.

    Parameters: ``means`` ``[K, d]`` (Xavier-uniform) and ``log_var`` ``[K, d]`` (0: identity
    covariance). Wan et al. tune ``alpha`` and ``lam`` per data set; set them accordingly.
    """

    def __init__(self, num_classes: int, feat_dim: int, alpha=0.1, lam=0.01, **factory):
        super().__init__(num_classes, feat_dim, 1, alpha, lam, **factory)


class MoMLoss(_GaussianMixtureLoss):
    r"""Mixture of Gaussian mixtures: :class:`LGMLoss` with each class a mixture of
    ``num_components`` (2, as in the SLAC paper) diagonal Gaussians.

    Mixing: ``p(x | k) = sum_c pi_kc N(x; mu_kc, Sigma_kc)``, ``pi_k = softmax(mix_logits[k])``,
    learned, initialised uniform. Margin: in the margin logits the target class's log-likelihood
    is recomputed with every component's ``d_yc = 1/2 (x-mu_yc)^T Sigma_yc^-1 (x-mu_yc)`` multiplied
    by ``1 + alpha``, which lowers it by at least ``alpha * min_c d_yc`` and reduces to LGM's margin
    for one component. The likelihood term is the mixture's negative log-likelihood (up to the
    common ``d/2 log 2 pi``), batch mean, weighted by ``lam``.

    Parameters: ``means`` and ``log_var`` ``[K * C, d]`` (row ``k * C + c``), ``mix_logits`` ``[K, C]``.
    """

    def __init__(self, num_classes, feat_dim, alpha=0.1, lam=0.01, num_components=2, **factory):
        super().__init__(num_classes, feat_dim, num_components, alpha, lam, **factory)
        self.mix_logits = nn.Parameter(torch.zeros(num_classes, num_components, **factory))

    def _log_mixing(self) -> torch.Tensor:
        return _up(self.mix_logits).log_softmax(1)


class LSoftmaxLoss(hc.PlainClassifierGroups, hc.LossHead):
    r"""Large-margin softmax loss (Liu et al., ICML 2016) on a bias-free linear head ``weight[K, d]``.

    Target logit ``f_y = |w_y||x| (lambda cos(theta) + psi(theta)) / (1 + lambda)`` with
    ``psi(theta) = (-1)^k cos(m theta) - 2k`` on ``[k pi/m, (k+1) pi/m]``; ``cos(m theta)`` is the
    Chebyshev polynomial of ``cos(theta)``, and ``k`` is read off ``theta`` without a gradient
    (``psi`` is continuous and monotonic, so only its polynomial piece carries one). Other logits
    are ``w_k . x``.

    Annealing (the official implementation's schedule): ``lambda(t) = max(lambda_min,
    base * (1 + gamma * t)^(-power))``, ``t`` counting training-mode forward passes. Defaults are
    the official MNIST example's ``base = 1000, gamma = 2.5e-5, power = 35, lambda_min = 0``:
    ``lambda`` is 1000 at the start (almost plain softmax), about 420 after 1k steps, 16 after 5k,
    0.4 after 10k and below 0.001 after 20k. ``margin = 4`` is the paper's best CIFAR setting; ``margin = 1`` is
    plain softmax.
    """

    def __init__(
        self,
        num_classes: int,
        feat_dim: int,
        margin: int = 4,
        *,
        base: float = 1000.0,
        gamma: float = 2.5e-5,
        power: float = 35.0,
        lambda_min: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if int(margin) != margin or margin < 1:
            raise ValueError(f"margin must be a positive integer, got {margin}")
        self.num_classes = hc.positive_int("num_classes", num_classes)
        self.feat_dim = hc.positive_int("feat_dim", feat_dim)
        self.margin = int(margin)
        self.base, self.gamma, self.power, self.lambda_min = (
            float(base),
            float(gamma),
            float(power),
            float(lambda_min),
        )
        self.iteration = 0
        self.weight = nn.Parameter(torch.empty(num_classes, feat_dim, device=device, dtype=dtype))
        nn.init.xavier_uniform_(self.weight)
        # cos(m theta) = sum_n (-1)^n C(m, 2n) cos^(m-2n) (1 - cos^2)^n
        self._cheb = [
            ((-1) ** n * math.comb(self.margin, 2 * n), self.margin - 2 * n, n)
            for n in range(self.margin // 2 + 1)
        ]
        self.last_terms: Dict[str, torch.Tensor] = {}

    def get_extra_state(self):
        return {"iteration": self.iteration}

    def set_extra_state(self, state) -> None:
        self.iteration = int(state["iteration"])

    def current_lambda(self) -> float:
        return max(
            self.lambda_min, self.base * (1.0 + self.gamma * self.iteration) ** (-self.power)
        )

    def psi(self, cos: torch.Tensor) -> torch.Tensor:
        """``psi(theta)`` as a function of ``cos(theta)`` (in ``[-1, 1]``)."""
        sin2 = 1.0 - cos * cos
        cos_m = sum(coef * cos.pow(p) * sin2.pow(n) for coef, p, n in self._cheb)
        with torch.no_grad():
            k = torch.floor(torch.acos(cos) * (self.margin / math.pi)).clamp_(0, self.margin - 1)
            sign = 1.0 - 2.0 * torch.remainder(k, 2.0)
        return sign * cos_m - 2.0 * k

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Plain logits ``x @ weight^T``, ``[B, K]``."""
        return _check(features, self.feat_dim, self.weight) @ _up(self.weight).t()

    def loss(self, features: torch.Tensor, targets: torch.Tensor) -> hc.HeadOutput:
        """The loss and the plain logits, from one pass (the head protocol). A training-mode
        pass with gradients advances the annealing step."""
        x = _check(features, self.feat_dim, self.weight)
        weight = _up(self.weight)
        logits = x @ weight.t()
        y = hc.class_targets(targets, logits)
        lam = self.current_lambda()
        wx = logits.gather(1, y.unsqueeze(1)).squeeze(1)
        norms = weight.norm(dim=1)[y] * x.norm(dim=1)
        cos = (wx / norms.clamp_min(1e-12)).clamp(-1.0, 1.0)
        target_logit = (lam * wx + norms * self.psi(cos)) / (1.0 + lam)
        margin_logits = logits.scatter(1, y.unsqueeze(1), target_logit.unsqueeze(1))
        loss = hc.batch_mean_cross_entropy(margin_logits, y)
        if self.training and torch.is_grad_enabled():
            self.iteration += 1
        return hc.HeadOutput(loss, {"loss": loss.detach()}, logits)

    def op_count(self) -> Tuple[int, int]:
        """``Kd`` multiplications and additions per image (the plain logits at inference)."""
        return self.num_classes * self.feat_dim, self.num_classes * self.feat_dim

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, feat_dim={self.feat_dim}, margin={self.margin}, "
            f"iteration={self.iteration}, lambda={self.current_lambda():.4g}"
        )


class SoftmaxLoss(hc.LossHead):
    """Cross-entropy on a linear head ``fc = nn.Linear(feat_dim, num_classes)`` (with bias)."""

    def __init__(
        self, num_classes: int, feat_dim: int, bias: bool = True, *, device=None, dtype=None
    ):
        super().__init__()
        self.num_classes = hc.positive_int("num_classes", num_classes)
        self.feat_dim = hc.positive_int("feat_dim", feat_dim)
        self.fc = nn.Linear(feat_dim, num_classes, bias=bias, device=device, dtype=dtype)
        self.last_terms: Dict[str, torch.Tensor] = {}

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        bias = None if self.fc.bias is None else _up(self.fc.bias)
        return F.linear(_check(features, self.feat_dim, self.fc.weight), _up(self.fc.weight), bias)

    def loss(self, features: torch.Tensor, targets: torch.Tensor) -> hc.HeadOutput:
        logits = self.logits(features)
        loss = hc.batch_mean_cross_entropy(logits, hc.class_targets(targets, logits))
        return hc.HeadOutput(loss, {"loss": loss.detach()}, logits)
