r"""Skew Laplace mixture head and the SLAC loss (Dong et al., NeurIPS 2021).

Features ``x[B, d]``, ``K`` classes. Class ``k`` has a location ``mu[k]``, a diagonal covariance
``Sigma_k = diag(var[k])`` and a skewness ``gamma[k]`` (all ``[K, d]``), and its features follow
Arslan's multivariate skew Laplace distribution:

    log f_k(x) = -1/2 sum_j log var_kj - log alpha_k - alpha_k sqrt(Q_k(x))
                 + (x - mu_k)^T Sigma_k^-1 gamma_k - c_d
    Q_k(x)     = (x - mu_k)^T Sigma_k^-1 (x - mu_k)
    alpha_k    = sqrt(1 + gamma_k^T Sigma_k^-1 gamma_k)
    c_d        = d log 2 + (d - 1)/2 log pi + log Gamma((d + 1)/2)

This is the density that integrates to 1. The paper's Eq. 2 prints the square root over the skew
term as well, and Eq. 4 prints ``alpha_k`` and ``0.5 |Sigma_k|`` where the log-likelihood has
``log alpha_k`` and ``0.5 log |Sigma_k|``; both are read as above. With the uniform prior
``p(k) = 1/K``, the logits are ``log f_k(x) + log p(k)`` ``[B, K]`` and

    L_c   = cross_entropy(logits, y)                                              (Eq. 5)
    L_nll = mean_i [ -log f_{y_i}(x_i) - log p(y_i) ]                             (Eq. 4, batch mean)
    D_gamma(m, n) = cos(gamma_m, gamma_n)                                         (Eq. 6)
    D_mu(m, n)    = (mu_m - mu_n)^T Sigma_n^-1 (mu_m - mu_n)                      (Eq. 7)
    T(m, n)       = (max_n' D_mu(m, n') - 2 D_mu(m, n)) / max_n' D_mu(m, n')
    L_ac  = mean_{m, n} (D_gamma(m, n) - T(m, n))^2                               (Eq. 8)
    L     = L_c + lam * L_nll + beta * L_ac,    lam = 0.01, beta = 0.1            (Eq. 9)

Eq. 4 sums the negative log-likelihood over the batch; here it is the batch mean (as the
large-margin Gaussian mixture loss does for the same ``lam = 0.01``), so ``lam`` does not depend
on the batch size.

Memory: nothing of size ``B x K x d`` or ``K x K x d`` is formed. ``Q``, the skew term and ``D_mu``
are expanded into matrix products, e.g. ``Q = (x*x) @ P^T - 2 x @ (P*mu)^T + sum_j P mu^2`` with
``P = 1/var``, so an ImageNet head (B = 256, K = 1000, d = 2048) needs a few ``[B, K]`` and
``[K, K]`` buffers besides its ``[K, d]`` parameters. Both sides are first centred on the mean
location (a constant shift, which leaves ``Q`` unchanged) to limit float32 cancellation; what
cancellation is left is handled by clamping ``Q`` and ``D_mu`` at 0 and setting ``D_mu``'s
diagonal to exactly 0. ``sqrt(Q)`` is taken of ``max(Q, eps)`` (``eps`` the compute dtype's
machine epsilon), so its gradient stays bounded where a feature sits on a location; the cosine
divides by ``max(||gamma||, 1e-8)``, so ``gamma = 0`` (the initial value) gives a cosine of 0, not
NaN.

The head computes with autocast disabled, in its own dtype when that is float32 or float64 and in
float32 when it is float16 or bfloat16 (its parameters are cast up for the computation, and the
logits and losses come out in float32): the expanded quadratic form does not survive half
precision, and the epsilons above (1e-8 underflows to 0 in float16) are only valid in float32 and
float64. It does not change the global TF32 setting; with TF32 matmuls enabled on a GPU, ``Q``
carries TF32's ~1e-3 relative error of ``|x|^2``.

Targets are class indices of an integer dtype, as :func:`torch.nn.functional.cross_entropy`
requires; float and bool targets are refused rather than truncated.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from ._head_common import (
    HeadOutput,
    batch_mean_cross_entropy,
    class_targets,
    compute_dtype,
    distribution_groups,
    no_autocast,
    positive_int,
    sq_mahalanobis,
)

__all__ = ["SkewLaplaceMixture", "SLACLoss", "skew_laplace_log_norm"]

_COS_EPS = 1e-8  # valid in float32 and float64, the only dtypes the heads compute in


def skew_laplace_log_norm(d: int) -> float:
    """``c_d = d log 2 + (d-1)/2 log pi + log Gamma((d+1)/2)``, the log of the density's constant."""
    return d * math.log(2.0) + 0.5 * (d - 1) * math.log(math.pi) + math.lgamma(0.5 * (d + 1))


class SkewLaplaceMixture(nn.Module):
    r"""A mixture of ``K`` multivariate skew Laplace distributions over ``d``-dim features, with a
    uniform prior: the classifier head of SLAC (see the module docstring for the formulas).

    Parameters (all ``[K, d]``; Algorithm 1's initialisation):

    - ``mu``: locations, Xavier-uniform (bound ``sqrt(6 / (K + d))``).
    - ``gamma``: skewness, 0 (the head starts as a symmetric Laplace mixture).
    - ``log_var``: the diagonal covariance as log-variances, 0 (``Sigma = I``);
      :meth:`covariance` returns ``exp(log_var)``. The log keeps the variances positive without a
      clamp or projection. Under SGD a step on ``log_var`` rescales each variance by
      ``exp(-lr * g)``: multiplicative and scale-free; at the initial ``var = 1`` it equals, to
      first order, a step on the variance itself (``d var = var * d log_var``), so the paper's
      covariance learning rate divided by 100 (CIFAR) or 1000 (ImageNet) carries over. Weight
      decay on ``log_var`` would pull the variances towards 1 (not towards 0).

    Args:
        num_classes, feat_dim: ``K`` and ``d``.
        freeze_location, freeze_covariance, freeze_skewness: keep that parameter at its initial
            value (``requires_grad = False``), the "fixed after initialization" rows of the
            paper's Table 4. :meth:`set_frozen` changes them later.
        lam, beta, detach_target: the SLAC loss that :meth:`loss` computes (as
            :class:`SLACLoss`; ``beta = 0`` is the paper's "SL").

    ``forward(x)`` and :meth:`logits` return ``log f_k(x) + log(1/K)`` ``[B, K]``; :meth:`loss`
    the SLAC loss with its terms and the logits (the head protocol of
    :mod:`addernet_cuda.nn._head_common`); :meth:`log_prob` the
    normalised ``log f_k(x)``; :meth:`predict` the most probable class; :meth:`angle_constraint`
    ``L_ac`` (Eq. 8). Inputs are cast to the head's dtype and computed with autocast disabled.
    """

    def __init__(
        self,
        num_classes: int,
        feat_dim: int,
        *,
        freeze_location: bool = False,
        freeze_covariance: bool = False,
        freeze_skewness: bool = False,
        lam: float = 0.01,
        beta: float = 0.1,
        detach_target: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        num_classes = positive_int("num_classes", num_classes)
        feat_dim = positive_int("feat_dim", feat_dim)
        factory = {"device": device, "dtype": dtype}
        self.num_classes = int(num_classes)
        self.feat_dim = int(feat_dim)
        self.mu = nn.Parameter(torch.empty(num_classes, feat_dim, **factory))
        self.gamma = nn.Parameter(torch.empty(num_classes, feat_dim, **factory))
        self.log_var = nn.Parameter(torch.empty(num_classes, feat_dim, **factory))
        self.log_norm_const = skew_laplace_log_norm(self.feat_dim)
        self.reset_parameters()
        self.set_frozen(
            location=freeze_location, covariance=freeze_covariance, skewness=freeze_skewness
        )
        self.lam, self.beta, self.detach_target = float(lam), float(beta), bool(detach_target)

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.mu)
        nn.init.zeros_(self.gamma)
        nn.init.zeros_(self.log_var)

    def set_frozen(
        self,
        location: Optional[bool] = None,
        covariance: Optional[bool] = None,
        skewness: Optional[bool] = None,
    ) -> None:
        """Freezes (True) or unfreezes (False) the location, covariance or skewness; None leaves
        it as it is. A frozen parameter has ``requires_grad = False``, gets no gradient, and is
        therefore left alone by every optimizer, weight decay and momentum included."""
        for param, frozen in (
            (self.mu, location),
            (self.log_var, covariance),
            (self.gamma, skewness),
        ):
            if frozen is not None:
                param.requires_grad_(not frozen)

    @property
    def frozen(self) -> Dict[str, bool]:
        return {
            "location": not self.mu.requires_grad,
            "covariance": not self.log_var.requires_grad,
            "skewness": not self.gamma.requires_grad,
        }

    def covariance(self) -> torch.Tensor:
        """The variances ``diag(Sigma_k)``, ``[K, d]``, positive."""
        return self.log_var.exp()

    def precision(self) -> torch.Tensor:
        """``1 / var``, ``[K, d]``."""
        return torch.exp(-self.log_var)

    def alpha(self) -> torch.Tensor:
        """``alpha_k = sqrt(1 + gamma_k^T Sigma_k^-1 gamma_k)``, ``[K]``."""
        return torch.sqrt(1.0 + (self.precision() * self.gamma * self.gamma).sum(1))

    @property
    def log_prior(self) -> float:
        return -math.log(self.num_classes)

    def _params(self):
        """``(mu, gamma, log_var)`` in the compute dtype (float32 for a half-precision head)."""
        dtype = compute_dtype(self.mu.dtype)
        return self.mu.to(dtype), self.gamma.to(dtype), self.log_var.to(dtype)

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.feat_dim:
            raise ValueError(f"features must be [B, {self.feat_dim}], got {list(x.shape)}")
        return x.to(compute_dtype(self.mu.dtype))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log f_k(x)`` for every feature and class, ``[B, K]`` (normalised, ``c_d`` included)."""
        with no_autocast(x.device.type):
            x = self._check(x)
            mu, gamma, log_var = self._params()
            prec = torch.exp(-log_var)
            q, xc, mc = sq_mahalanobis(x, mu, prec)
            pg = prec * gamma
            # (x - mu_k)^T Sigma_k^-1 gamma_k = xc @ pg^T - sum_j mc pg
            skew = torch.addmm(-(pg * mc).sum(1).unsqueeze(0), xc, pg.t())
            alpha = torch.sqrt(1.0 + (pg * gamma).sum(1))
            root = q.clamp_min(torch.finfo(q.dtype).eps).sqrt()
            const = -0.5 * log_var.sum(1) - alpha.log() - self.log_norm_const
            return skew - alpha * root + const

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``log f_k(x) + log p(k)`` with ``p(k) = 1/K``, ``[B, K]``."""
        return self.log_prob(x) + self.log_prior

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The class of highest posterior ``p(k | x)``, ``[B]`` (int64)."""
        return self.log_prob(x).argmax(1)

    def location_distances(self) -> torch.Tensor:
        """``D_mu(m, n) = (mu_m - mu_n)^T Sigma_n^-1 (mu_m - mu_n)``, ``[K, K]`` (Eq. 7), by
        expansion; clamped at 0 and with a diagonal of exactly 0."""
        with no_autocast(self.mu.device.type):
            mu, _, log_var = self._params()
            d_mu, _, _ = sq_mahalanobis(mu, mu, torch.exp(-log_var))
            eye = torch.eye(self.num_classes, dtype=torch.bool, device=d_mu.device)
            return d_mu.masked_fill(eye, 0.0)

    def skewness_cosines(self) -> torch.Tensor:
        """``D_gamma(m, n) = cos(gamma_m, gamma_n)``, ``[K, K]`` (Eq. 6); 0 where a skewness is 0."""
        with no_autocast(self.gamma.device.type):
            gamma = self._params()[1]
            unit = gamma / gamma.norm(dim=1, keepdim=True).clamp_min(_COS_EPS)
            return unit @ unit.t()

    def angle_target(self, detach: bool = True) -> torch.Tensor:
        """The adaptive target ``T(m, n) = 1 - 2 D_mu(m, n) / max_n' D_mu(m, n')``, ``[K, K]``
        (Eq. 8): 1 on the diagonal, -1 at the class farthest from ``m``, in ``[-1, 1]``. A row
        whose maximum is 0 (``K = 1``, or coinciding locations) is all 1. With ``detach`` it is
        computed without autograd."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not detach):
            d_mu = self.location_distances()
            row_max = d_mu.amax(1, keepdim=True).clamp_min(torch.finfo(d_mu.dtype).tiny)
            return 1.0 - 2.0 * d_mu / row_max

    def angle_constraint(self, detach_target: bool = True) -> torch.Tensor:
        """``L_ac = mean_{m,n} (D_gamma(m, n) - T(m, n))^2`` (Eq. 8), a scalar. See
        :class:`SLACLoss` for why the target is detached by default."""
        return (self.skewness_cosines() - self.angle_target(detach=detach_target)).square().mean()

    @torch.no_grad()
    def sample(
        self, classes: torch.Tensor, generator: Optional[torch.Generator] = None
    ) -> torch.Tensor:
        """One draw from ``SL(mu_k, Sigma_k, gamma_k)`` per entry of ``classes`` ``[n]``, ``[n, d]``.

        Uses the normal mean-variance mixture ``x = mu + V gamma + sqrt(V) Sigma^(1/2) z`` with
        ``z ~ N(0, I)`` and ``V ~ Gamma((d+1)/2, rate 1/2)`` (a chi-square with ``d + 1`` degrees
        of freedom), whose density is the one above; so ``E[x] = mu + (d+1) gamma``."""
        classes = torch.as_tensor(classes, dtype=torch.long, device=self.mu.device)
        n, d = classes.numel(), self.feat_dim
        opts = {"device": self.mu.device, "dtype": self.mu.dtype, "generator": generator}
        v = torch.randn(n, d + 1, **opts).square().sum(1, keepdim=True)
        z = torch.randn(n, d, **opts)
        std = (0.5 * self.log_var[classes]).exp()
        return self.mu[classes] + v * self.gamma[classes] + v.sqrt() * std * z

    def param_groups(
        self, lr: float, *, weight_decay: float = 0.0, cov_lr_scale: float = 100.0
    ) -> List[dict]:
        """Optimizer parameter groups for the trainable distribution parameters: location and
        skewness at ``lr``, the covariance (``log_var``) at ``lr / cov_lr_scale`` (100 for CIFAR,
        1000 for ImageNet in the paper). Learning-rate schedulers scale each group from its own
        initial rate, so the ratio holds throughout a schedule.

        ``weight_decay`` applies to all three and defaults to 0: decay would shrink the
        locations towards the origin (changing the class separation the loss is trying to
        build), pull the skewness towards 0 (a symmetric Laplace, against the angle constraint)
        and the variances towards 1. The paper gives one weight decay (5e-4) for training without
        saying whether it reaches these parameters; pass it here to reproduce that reading. With
        SGD the decay of the covariance group is scaled by its divided rate as well.

        Frozen parameters are left out; call this after setting the freeze switches."""
        return distribution_groups(
            ("slac_location_skewness", "slac_covariance"),
            (self.mu, self.gamma),
            self.log_var,
            lr,
            weight_decay,
            cov_lr_scale,
        )

    # The head protocol (see addernet_cuda.nn._head_common).

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)

    def loss(self, x: torch.Tensor, targets: torch.Tensor) -> HeadOutput:
        """The SLAC loss with this head's ``lam``, ``beta`` and ``detach_target``."""
        return slac_loss(self, x, targets, self.lam, self.beta, self.detach_target)

    def optimizer_groups(
        self, lr: float, *, weight_decay: float, head_weight_decay: float, cov_lr_scale: float
    ) -> List[dict]:
        """:meth:`param_groups` with ``head_weight_decay`` (the model's ``weight_decay`` does not
        reach the distribution parameters)."""
        return self.param_groups(lr, weight_decay=head_weight_decay, cov_lr_scale=cov_lr_scale)

    def op_count(self) -> Tuple[int, int]:
        """``3Kd + K`` multiplications and ``3Kd + 2K`` additions per image (``Q_k`` and the skew
        term over ``x - mu_k``, with what depends on the parameters only precomputed)."""
        k, d = self.num_classes, self.feat_dim
        return 3 * k * d + k, 3 * k * d + 2 * k

    def extra_repr(self) -> str:
        frozen = [k for k, v in self.frozen.items() if v]
        return f"num_classes={self.num_classes}, feat_dim={self.feat_dim}" + (
            f", frozen={frozen}" if frozen else ""
        )


def slac_loss(
    mixture: SkewLaplaceMixture,
    features: torch.Tensor,
    targets: torch.Tensor,
    lam: float,
    beta: float,
    detach_target: bool,
) -> HeadOutput:
    """``L = L_c + lam * L_nll + beta * L_ac`` (Eq. 9) on ``mixture``, with its terms (``"ac"``
    None when ``beta = 0``) and the logits."""
    logits = mixture(features)
    targets = class_targets(targets, logits)
    ce = batch_mean_cross_entropy(logits, targets)
    nll = -logits.gather(1, targets.unsqueeze(1)).sum() / max(logits.shape[0], 1)
    loss = ce + lam * nll
    ac = None
    if beta != 0.0:
        ac = mixture.angle_constraint(detach_target=detach_target)
        loss = loss + beta * ac
    terms = {"loss": loss, "ce": ce, "nll": nll, "ac": ac}
    return HeadOutput(
        loss, {k: None if v is None else v.detach() for k, v in terms.items()}, logits
    )


class SLACLoss(nn.Module):
    r"""``L = L_c + lam * L_nll + beta * L_ac`` (Eq. 9) on a :class:`SkewLaplaceMixture`.

    Args:
        num_classes, feat_dim: ``K`` and ``d``.
        lam: weight of the negative log-likelihood (batch mean, see the module docstring). 0.01.
        beta: weight of the angle-based constraint. 0.1. With ``beta = 0`` ``L_ac`` is not
            computed.
        mixture: the head to use. ``None`` creates one (standalone use, held here). Pass the
            model's own head to share it: the model then owns the parameters, so
            DistributedDataParallel all-reduces their gradients and the model's checkpoints hold
            them (build the loss on ``ddp_model.module.head``; the parameters get their gradients
            in the same backward).
        detach_target: compute the ``L_ac`` target without autograd (default True). Eq. 8 calls
            ``T`` a target: an adaptive one built from the current locations and covariances, at
            which the skewness cosines are regressed. Detached, ``L_ac`` trains the skewness only,
            and the locations keep being shaped by ``L_c`` and ``L_nll``; letting gradients flow
            through ``T`` would have the constraint move the locations and rescale the
            covariances to match the current tail angles instead, and through the row maximum,
            which is not smooth. ``False`` gives the full derivative of Eq. 8.
        cov_lr_scale: default divisor of the covariance learning rate in :meth:`param_groups`.
        freeze_location, freeze_covariance, freeze_skewness: passed to the mixture (Table 4's
            ablation); ``None`` leaves a shared mixture's setting alone.

    ``forward(features [B, d], targets [B])`` returns the scalar loss and keeps the separate terms,
    detached, in ``last_terms`` (``"loss"``, ``"ce"``, ``"nll"``, ``"ac"``; ``"ac"`` is None
    when ``beta = 0``) and the logits in ``last_logits``, for logging without a second pass.

    Gradient with respect to a feature (what reaches the network; per sample, times ``1/B``):

        dL/dx = (1 - p(y|x) + lam) [ alpha_y Q_y^(-1/2) Sigma_y^-1 (x - mu_y) - Sigma_y^-1 gamma_y ]
                + sum_{k != y} p(k|x) [ Sigma_k^-1 gamma_k - alpha_k Q_k^(-1/2) Sigma_k^-1 (x - mu_k) ]

    The paper's Eq. 10 prints ``+ Sigma_y^-1 gamma_y`` in the first bracket; it must be
    ``- Sigma_y^-1 gamma_y``, since ``d log f_k / dx = Sigma_k^-1 gamma_k - alpha_k Q_k^(-1/2)
    Sigma_k^-1 (x - mu_k)`` and the target class enters with the opposite sign (the two brackets
    are then negatives of one another, as they must be). Autograd computes it; no hand-written
    backward is involved.
    """

    def __init__(
        self,
        num_classes: int,
        feat_dim: int,
        lam: float = 0.01,
        beta: float = 0.1,
        mixture: Optional[SkewLaplaceMixture] = None,
        *,
        detach_target: bool = True,
        cov_lr_scale: float = 100.0,
        freeze_location: Optional[bool] = None,
        freeze_covariance: Optional[bool] = None,
        freeze_skewness: Optional[bool] = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if mixture is None:
            mixture = SkewLaplaceMixture(num_classes, feat_dim, device=device, dtype=dtype)
        elif not isinstance(mixture, SkewLaplaceMixture):
            raise TypeError(f"mixture must be a SkewLaplaceMixture, got {type(mixture).__name__}")
        elif (mixture.num_classes, mixture.feat_dim) != (num_classes, feat_dim):
            raise ValueError(
                f"mixture is for K={mixture.num_classes}, d={mixture.feat_dim}; "
                f"expected K={num_classes}, d={feat_dim}"
            )
        self.mixture = mixture
        self.mixture.set_frozen(
            location=freeze_location, covariance=freeze_covariance, skewness=freeze_skewness
        )
        self.lam = float(lam)
        self.beta = float(beta)
        self.detach_target = bool(detach_target)
        self.cov_lr_scale = float(cov_lr_scale)
        self.last_terms: Dict[str, Optional[torch.Tensor]] = {}
        self.last_logits: Optional[torch.Tensor] = None

    @property
    def num_classes(self) -> int:
        return self.mixture.num_classes

    @property
    def feat_dim(self) -> int:
        return self.mixture.feat_dim

    def forward(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        out = slac_loss(self.mixture, features, targets, self.lam, self.beta, self.detach_target)
        self.last_terms, self.last_logits = out.terms, out.logits.detach()
        return out.loss

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.mixture(features)

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.mixture.predict(features)

    def param_groups(
        self,
        lr: float,
        *,
        weight_decay: float = 0.0,
        cov_lr_scale: Optional[float] = None,
        model: Optional[nn.Module] = None,
        model_weight_decay: Optional[float] = None,
    ) -> List[dict]:
        """Optimizer parameter groups: :meth:`SkewLaplaceMixture.param_groups` (covariance at
        ``lr / cov_lr_scale``, ``weight_decay`` on the distribution parameters, 0 by default).

        With ``model``, a first group holds the model's other trainable parameters (those that
        are not the mixture's, so a head the model owns is listed once), with
        ``model_weight_decay`` if given, else the optimizer's default, at the optimizer's
        default rate::

            opt = torch.optim.SGD(criterion.param_groups(0.1, model=model, model_weight_decay=5e-4),
                                  lr=0.1, momentum=0.9)
        """
        scale = self.cov_lr_scale if cov_lr_scale is None else cov_lr_scale
        groups = self.mixture.param_groups(lr, weight_decay=weight_decay, cov_lr_scale=scale)
        if model is not None:
            own = {id(p) for p in self.mixture.parameters()}
            rest = [p for p in model.parameters() if p.requires_grad and id(p) not in own]
            if rest:
                group = {"params": rest, "name": "model"}
                if model_weight_decay is not None:
                    group["weight_decay"] = model_weight_decay
                groups.insert(0, group)
        return groups

    def extra_repr(self) -> str:
        return f"lam={self.lam}, beta={self.beta}, detach_target={self.detach_target}"
