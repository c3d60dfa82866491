"""Tests of the skew Laplace mixture head, the SLAC loss (Eqs. 4-10 of Dong et al., NeurIPS 2021)
and the baseline losses (LGM, MoM, L-Softmax, softmax).

References used here: a naive float64 implementation that materialises ``x - mu`` as ``[B, K, d]``,
quadrature of the density in d = 1 and 2, hand-worked small cases, the closed-form feature
gradient, float64 gradcheck, and the normal mean-variance mixture representation (sampling).
"""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from addernet_cuda.nn import (
    LGMLoss,
    LSoftmaxLoss,
    MoMLoss,
    SkewLaplaceMixture,
    SLACLoss,
    SoftmaxLoss,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    ),
]


def naive_log_prob(x, mu, var, gamma):
    """log f_k(x), float64, materialising x - mu as [B, K, d]."""
    x, mu, var, gamma = (t.detach().double() for t in (x, mu, var, gamma))
    d = x.shape[1]
    diff = x[:, None, :] - mu[None]
    q = (diff * diff / var).sum(-1)
    skew = (diff * gamma / var).sum(-1)
    alpha = torch.sqrt(1 + (gamma * gamma / var).sum(-1))
    c_d = d * math.log(2) + (d - 1) / 2 * math.log(math.pi) + math.lgamma((d + 1) / 2)
    return -0.5 * var.log().sum(-1) - alpha.log() - alpha * q.sqrt() + skew - c_d


def random_mixture(k, d, dtype=torch.float64, device="cpu", seed=0, skew=0.7):
    g = torch.Generator().manual_seed(seed)
    m = SkewLaplaceMixture(k, d, dtype=dtype, device=device)
    with torch.no_grad():
        m.mu.copy_(torch.randn(k, d, generator=g, dtype=dtype))
        m.gamma.copy_(skew * torch.randn(k, d, generator=g, dtype=dtype))
        m.log_var.copy_(torch.empty(k, d, dtype=dtype).uniform_(-0.7, 0.7, generator=g))
    return m


def set_params(m, mu, var, gamma):
    with torch.no_grad():
        m.mu.copy_(torch.as_tensor(mu, dtype=m.mu.dtype))
        m.log_var.copy_(torch.as_tensor(var, dtype=m.mu.dtype).log())
        m.gamma.copy_(torch.as_tensor(gamma, dtype=m.mu.dtype))


# ----------------------------------------------------------------------------------------------
# The density


def test_init_follows_algorithm_1():
    m = SkewLaplaceMixture(10, 64)
    bound = math.sqrt(6 / (10 + 64))
    assert m.mu.abs().max() <= bound and m.mu.std() > bound / 4  # Xavier-uniform
    assert torch.equal(m.gamma, torch.zeros(10, 64))
    assert torch.equal(m.covariance(), torch.ones(10, 64))
    assert m.log_prob(torch.randn(3, 64)).shape == (3, 10)


def test_density_integrates_to_one_1d():
    m = random_mixture(3, 1)
    set_params(m, [[0.3], [-1.0], [2.0]], [[0.5], [2.0], [1.0]], [[0.8], [-1.5], [0.0]])
    x = torch.linspace(-120, 120, 600_001, dtype=torch.float64)
    dens = m.log_prob(x[:, None]).exp()
    mass = torch.trapezoid(dens, x, dim=0)
    torch.testing.assert_close(mass, torch.ones(3, dtype=torch.float64), atol=1e-6, rtol=0)


def test_density_integrates_to_one_2d():
    m = random_mixture(2, 2)
    set_params(m, [[0.2, -0.3], [1.0, 0.5]], [[1.5, 0.7], [0.5, 1.0]], [[0.5, -0.3], [-0.2, 0.4]])
    t = torch.linspace(-45, 45, 1801, dtype=torch.float64)
    xx, yy = torch.meshgrid(t, t, indexing="ij")
    dens = m.log_prob(torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)).exp().view(1801, 1801, 2)
    mass = torch.trapezoid(torch.trapezoid(dens, t, dim=1), t, dim=0)
    torch.testing.assert_close(mass, torch.ones(2, dtype=torch.float64), atol=2e-4, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_log_prob_matches_naive_float64(device):
    m = random_mixture(7, 5, device=device)
    x = torch.randn(13, 5, dtype=torch.float64, device=device) * 2
    ref = naive_log_prob(x, m.mu, m.covariance(), m.gamma)
    torch.testing.assert_close(m.log_prob(x), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m(x), ref - math.log(7), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m.predict(x), ref.argmax(1))


@pytest.mark.parametrize("device", DEVICES)
def test_log_prob_float32_away_from_origin(device):
    """Features and locations offset by 100: the centred expansion keeps float32 accurate."""
    m64 = random_mixture(6, 32, device=device)
    with torch.no_grad():
        m64.mu.add_(100.0)
    m32 = random_mixture(6, 32, dtype=torch.float32, device=device)
    m32.load_state_dict({k: v.float() for k, v in m64.state_dict().items()})
    x = m64.mu[torch.arange(12, device=device) % 6] + 0.5 * torch.randn(
        12, 32, dtype=torch.float64, device=device
    )
    ref = naive_log_prob(x, m64.mu, m64.covariance(), m64.gamma)
    torch.testing.assert_close(m32.log_prob(x.float()).double(), ref, rtol=1e-4, atol=1e-3)


def test_sampler_moments():
    """x = mu + V gamma + sqrt(V) Sigma^(1/2) z, V ~ chi2(d+1): mean mu + (d+1) gamma,
    covariance (d+1) Sigma + 2 (d+1) gamma gamma^T; and E[d log f / dx] = 0 under f."""
    m = random_mixture(2, 3, seed=3, skew=0.3)
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x = m.sample(torch.ones(n, dtype=torch.long), generator=g)
    mu, gam, var = m.mu[1], m.gamma[1], m.covariance()[1]
    torch.testing.assert_close(x.mean(0), mu + 4 * gam, atol=0.03, rtol=0)
    cov = torch.cov(x.t())
    torch.testing.assert_close(
        cov, 4 * torch.diag(var) + 8 * torch.outer(gam, gam), atol=0.12, rtol=0.03
    )
    xs = x[:20_000].clone().requires_grad_(True)
    (score,) = torch.autograd.grad(m.log_prob(xs)[:, 1].sum(), xs)
    torch.testing.assert_close(
        score.mean(0), torch.zeros(3, dtype=torch.float64), atol=0.03, rtol=0
    )


def test_feature_gradient_closed_form():
    """d log f_k / dx = Sigma_k^-1 gamma_k - alpha_k Q_k^(-1/2) Sigma_k^-1 (x - mu_k)."""
    m = random_mixture(4, 6)
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    prec, alpha = 1 / m.covariance(), m.alpha()
    for k in range(4):
        (grad,) = torch.autograd.grad(m.log_prob(x)[:, k].sum(), x)
        diff = x.detach() - m.mu[k]
        q = (prec[k] * diff * diff).sum(1, keepdim=True)
        expected = prec[k] * m.gamma[k] - alpha[k] * prec[k] * diff / q.sqrt()
        torch.testing.assert_close(grad, expected.detach(), rtol=1e-10, atol=1e-12)


def test_loss_feature_gradient_is_corrected_eq10():
    """Eq. 10 with the sign slip fixed: the target bracket holds - Sigma_y^-1 gamma_y."""
    k, d, b, lam = 5, 4, 6, 0.3
    loss = SLACLoss(k, d, lam=lam, beta=0.1, mixture=random_mixture(k, d))
    m = loss.mixture
    x = torch.randn(b, d, dtype=torch.float64, requires_grad=True)
    y = torch.arange(b) % k
    (grad,) = torch.autograd.grad(loss(x, y), x)
    with torch.no_grad():
        p = m(x).softmax(1)
        prec, alpha = 1 / m.covariance(), m.alpha()
        expected = torch.zeros(b, d, dtype=torch.float64)
        for i in range(b):
            for c in range(k):
                diff = x[i] - m.mu[c]
                pull = (
                    alpha[c] * prec[c] * diff / (prec[c] * diff * diff).sum().sqrt()
                    - prec[c] * m.gamma[c]
                )
                weight = (1 - p[i, c] + lam) if c == y[i] else -p[i, c]
                expected[i] += weight * pull
    torch.testing.assert_close(grad, expected / b, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Eqs. 5, 8, 9 on hand-worked cases


def hand_case_1d(lam=0.5, beta=2.0):
    """K = 2, d = 1: class 0 is Laplace(0, 1) (alpha = 1), class 1 has mu = 2, var = 4, gamma = 1.5,
    so alpha_1 = sqrt(1 + 2.25/4) = 5/4; c_1 = log 2."""
    loss = SLACLoss(2, 1, lam=lam, beta=beta, dtype=torch.float64)
    set_params(loss.mixture, [[0.0], [2.0]], [[1.0], [4.0]], [[0.0], [1.5]])
    return loss


def test_eq5_hand_worked():
    loss = hand_case_1d()
    x = torch.tensor([[1.0], [3.0]], dtype=torch.float64)
    log2, log54 = math.log(2), math.log(1.25)
    # log f_0(x) = -log 2 - |x|;  log f_1(x) = -log 2 - log 2 - log(5/4) - 5/8 |x - 2| + 3/8 (x - 2)
    lf = torch.tensor(
        [[-log2 - 1, -2 * log2 - log54 - 1.0], [-log2 - 3, -2 * log2 - log54 - 0.25]],
        dtype=torch.float64,
    )
    torch.testing.assert_close(loss.mixture.log_prob(x), lf)
    # at x = 1: f_0 = e^-1 / 2, f_1 = e^-1 / 5, so p(0 | x = 1) = 5/7
    torch.testing.assert_close(
        loss.mixture(x).softmax(1)[0, 0], torch.tensor(5 / 7, dtype=torch.float64)
    )
    p1_at_3 = (math.exp(-0.25) / 5) / (math.exp(-3) / 2 + math.exp(-0.25) / 5)
    ce = (math.log(7 / 5) - math.log(p1_at_3)) / 2
    loss(x, torch.tensor([0, 1]))
    assert loss.last_terms["ce"].item() == pytest.approx(ce, rel=1e-12)
    nll = ((log2 + 1 + log2) + (2 * log2 + log54 + 0.25 + log2)) / 2  # -log f_y - log(1/2), mean
    assert loss.last_terms["nll"].item() == pytest.approx(nll, rel=1e-12)


def test_eq8_hand_worked():
    m = SkewLaplaceMixture(3, 2, dtype=torch.float64)
    set_params(m, [[0, 0], [1, 0], [0, 2]], [[1, 1], [2, 2], [1, 4]], [[1, 0], [0, 3], [-2, 0]])
    d_mu = torch.tensor([[0, 0.5, 1], [1, 0, 2], [4, 2.5, 0]], dtype=torch.float64)  # uses Sigma_n
    target = torch.tensor([[1, 0, -1], [0, 1, -1], [-1, -0.25, 1]], dtype=torch.float64)
    cosines = torch.tensor([[1, 0, -1], [0, 1, 0], [-1, 0, 1]], dtype=torch.float64)
    torch.testing.assert_close(m.location_distances(), d_mu)
    torch.testing.assert_close(m.angle_target(), target)
    torch.testing.assert_close(m.skewness_cosines(), cosines)
    assert m.angle_constraint().item() == pytest.approx((1 + 0.25**2) / 9, rel=1e-12)


def test_eq9_hand_worked():
    loss = hand_case_1d(lam=0.5, beta=2.0)
    x, y = torch.tensor([[1.0], [3.0]], dtype=torch.float64), torch.tensor([0, 1])
    total = loss(x, y)
    t = loss.last_terms
    # gamma_0 = 0 -> cos = 0; D_mu = [[0, 1], [4, 0]] -> T = [[1, -1], [-1, 1]];
    # D_gamma = [[0, 0], [0, 1]] -> L_ac = (1 + 1 + 1 + 0) / 4
    assert t["ac"].item() == pytest.approx(0.75, rel=1e-12)
    assert total.item() == pytest.approx(
        t["ce"].item() + 0.5 * t["nll"].item() + 2.0 * 0.75, rel=1e-12
    )
    loss.beta = 0.0
    assert loss(x, y).item() == pytest.approx(t["ce"].item() + 0.5 * t["nll"].item(), rel=1e-12)
    assert loss.last_terms["ac"] is None


def test_angle_target_range():
    m = random_mixture(9, 5, seed=1)
    d_mu, target = m.location_distances(), m.angle_target()
    assert torch.equal(d_mu.diagonal(), torch.zeros(9, dtype=torch.float64))
    assert torch.equal(target.diagonal(), torch.ones(9, dtype=torch.float64))
    far = d_mu.argmax(1)
    assert torch.equal(target[torch.arange(9), far], -torch.ones(9, dtype=torch.float64))
    assert target.min() >= -1 and target.max() <= 1
    assert not target.requires_grad and m.angle_target(detach=False).requires_grad


def test_angle_constraint_at_init_and_degenerate():
    m = SkewLaplaceMixture(4, 3)
    ac = m.angle_constraint()  # gamma = 0: cosines are 0, finite, and L_ac's gradient is 0
    ac.backward()
    assert torch.isfinite(ac) and torch.equal(m.gamma.grad, torch.zeros(4, 3))
    one = SkewLaplaceMixture(1, 3)  # K = 1: D_mu = 0 -> the target is 1
    assert torch.equal(one.angle_target(), torch.ones(1, 1))
    with torch.no_grad():
        m.mu.zero_()  # coinciding locations
    assert torch.equal(m.angle_target(), torch.ones(4, 4))


def test_float32_cancellation_clamped():
    """The expansion of D_mu and Q cancels in float32: D_mu's diagonal is exactly 0, Q >= 0."""
    m = SkewLaplaceMixture(50, 512)
    with torch.no_grad():
        m.mu.add_(30.0)
        m.log_var.uniform_(-3, 3)
    d_mu = m.location_distances()
    assert torch.equal(d_mu.diagonal(), torch.zeros(50)) and (d_mu >= 0).all()
    x = m.mu.detach().clone().requires_grad_(True)  # features sitting exactly on the locations
    logits = m(x)
    logits.diagonal().sum().backward()
    assert torch.isfinite(logits).all() and torch.isfinite(x.grad).all()


# ----------------------------------------------------------------------------------------------
# Gradients


def _loss_fn(loss, y):
    def f(x, mu, gamma, log_var):
        params = {"mixture.mu": mu, "mixture.gamma": gamma, "mixture.log_var": log_var}
        return functional_call(loss, params, (x, y))

    return f


def test_gradcheck_full_loss():
    k, d = 4, 3
    loss = SLACLoss(
        k, d, lam=0.2, beta=0.5, mixture=random_mixture(k, d, seed=2), detach_target=False
    )
    m = loss.mixture
    x = torch.randn(5, d, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 1])
    inputs = (x, *(p.detach().clone().requires_grad_(True) for p in (m.mu, m.gamma, m.log_var)))
    assert torch.autograd.gradcheck(_loss_fn(loss, y), inputs)


def test_gradcheck_detached_target():
    """With the target detached, L_ac is a function of the skewness (for fixed mu, Sigma)."""
    k, d = 4, 3
    loss = SLACLoss(k, d, mixture=random_mixture(k, d, seed=4))
    m = loss.mixture
    y = torch.tensor([3, 1, 0, 2, 2])
    mu, log_var = m.mu.detach(), m.log_var.detach()
    f = _loss_fn(loss, y)
    x = torch.randn(5, d, dtype=torch.float64, requires_grad=True)
    gamma = m.gamma.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, g: f(x, mu, g, log_var), (x, gamma))
    # L_ac's target carries no gradient: mu and Sigma only see L_c + lam L_nll
    loss(x, y).backward()
    with_ac = (m.mu.grad.clone(), m.log_var.grad.clone())
    m.zero_grad()
    loss.beta = 0.0
    loss(x, y).backward()
    torch.testing.assert_close(with_ac, (m.mu.grad, m.log_var.grad))


class _AngleConstraint(torch.nn.Module):
    def __init__(self, mixture):
        super().__init__()
        self.m = mixture

    def forward(self):
        return self.m.angle_constraint(detach_target=False)


def test_gradcheck_angle_constraint_full():
    wrapper = _AngleConstraint(random_mixture(5, 4, seed=5))
    names = ("m.mu", "m.gamma", "m.log_var")
    inputs = tuple(wrapper.get_parameter(n).detach().clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(
        lambda *p: functional_call(wrapper, dict(zip(names, p)), ()), inputs
    )


def test_gradcheck_baselines():
    torch.manual_seed(0)
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 0, 2])
    for loss in (
        LGMLoss(4, 3, alpha=0.3, lam=0.1, dtype=torch.float64),
        MoMLoss(4, 3, alpha=0.3, lam=0.1, dtype=torch.float64),
        LSoftmaxLoss(4, 3, margin=3, base=2.0, dtype=torch.float64),
        SoftmaxLoss(4, 3, dtype=torch.float64),
    ):
        if hasattr(loss, "log_var"):
            with torch.no_grad():
                loss.log_var.uniform_(-0.5, 0.5)
        names = [n for n, _ in loss.named_parameters()]
        inputs = (x, *(p.detach().clone().requires_grad_(True) for _, p in loss.named_parameters()))
        loss.eval()  # keeps L-Softmax's lambda fixed across evaluations
        fn = lambda x, *p: functional_call(loss, dict(zip(names, p)), (x, y))  # noqa: E731
        assert torch.autograd.gradcheck(fn, inputs), type(loss).__name__


# ----------------------------------------------------------------------------------------------
# Training: freezing, parameter groups, fitting


@pytest.mark.parametrize("which", ["location", "covariance", "skewness"])
def test_frozen_parameters_stay_frozen(which):
    torch.manual_seed(0)
    loss = SLACLoss(4, 3, **{f"freeze_{which}": True})
    with torch.no_grad():
        loss.mixture.gamma.normal_(0, 0.3)  # nonzero so that L_ac moves it when not frozen
    names = {"location": "mu", "covariance": "log_var", "skewness": "gamma"}
    before = {n: p.detach().clone() for n, p in loss.mixture.named_parameters()}
    assert loss.mixture.frozen[which] and sum(loss.mixture.frozen.values()) == 1
    all_params = list(loss.parameters())
    opts = [
        torch.optim.SGD(all_params, lr=0.1, momentum=0.9, weight_decay=5e-4),
        torch.optim.AdamW(all_params, lr=0.01, weight_decay=0.1),
        torch.optim.SGD(loss.param_groups(0.1, weight_decay=5e-4), lr=0.1),
    ]
    x, y = torch.randn(32, 3), torch.randint(0, 4, (32,))
    for opt in opts:
        for _ in range(3):
            opt.zero_grad()
            loss(x, y).backward()
            opt.step()
    for n, p in loss.mixture.named_parameters():
        if n == names[which]:
            assert torch.equal(p, before[n]) and p.grad is None
        else:
            assert not torch.equal(p, before[n]), n
    loss.mixture.set_frozen(**{which: False})
    assert not any(loss.mixture.frozen.values())


class _Net(torch.nn.Module):
    """A network owning its head: forward returns features, the loss applies the head."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(5, 3)
        self.head = SkewLaplaceMixture(4, 3)

    def forward(self, x):
        return self.body(x)


def test_param_groups_and_shared_mixture():
    model = _Net()
    loss = SLACLoss(4, 3, mixture=model.head, cov_lr_scale=1000)
    assert loss.mixture is model.head
    assert {"head.mu", "head.gamma", "head.log_var"} <= set(model.state_dict())
    groups = loss.param_groups(0.1, model=model, model_weight_decay=5e-4)
    assert [g["name"] for g in groups] == ["model", "slac_location_skewness", "slac_covariance"]
    listed = [id(p) for g in groups for p in g["params"]]
    assert sorted(listed) == sorted(id(p) for p in model.parameters())  # each parameter once
    assert groups[0]["weight_decay"] == 5e-4 and "lr" not in groups[0]
    assert groups[1]["lr"] == 0.1 and groups[2]["lr"] == pytest.approx(1e-4)
    assert groups[1]["weight_decay"] == 0.0 and groups[2]["weight_decay"] == 0.0
    opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    for _ in range(3):
        opt.step()
        sched.step()
    assert opt.param_groups[2]["lr"] == pytest.approx(opt.param_groups[1]["lr"] / 1000)
    x = torch.randn(8, 5)
    loss(model(x), torch.randint(0, 4, (8,))).backward()
    assert all(p.grad is not None for p in model.head.parameters())
    with pytest.raises(ValueError):
        SLACLoss(5, 3, mixture=model.head)


def _separable_data(n_per_class=40, k=4, dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = 4.0 * torch.randn(k, dim, generator=g)
    y = torch.arange(k).repeat_interleave(n_per_class)
    return centres[y] + 0.5 * torch.randn(len(y), dim, generator=g), y


@pytest.mark.parametrize(
    "make",
    [
        lambda k, d: SLACLoss(k, d),
        lambda k, d: LGMLoss(k, d),
        lambda k, d: MoMLoss(k, d),
        lambda k, d: LSoftmaxLoss(k, d, margin=2),
        lambda k, d: SoftmaxLoss(k, d),
    ],
    ids=["slac", "lgm", "mom", "lsoftmax", "softmax"],
)
def test_every_loss_fits_separable_data(make):
    torch.manual_seed(0)
    x, y = _separable_data()
    embed = torch.nn.Linear(6, 3)
    loss = make(4, 3)
    if isinstance(loss, SLACLoss):
        opt = torch.optim.Adam(loss.param_groups(0.05, model=embed), lr=0.05)
    else:
        opt = torch.optim.Adam(list(embed.parameters()) + list(loss.parameters()), lr=0.05)
    first = None
    for _ in range(150):
        opt.zero_grad()
        value = loss(embed(x), y)
        first = value.item() if first is None else first
        value.backward()
        opt.step()
    with torch.no_grad():
        final = loss(embed(x), y).item()
        acc = (loss.predict(embed(x)) == y).float().mean().item()
    assert final < first - 0.5, (first, final)
    assert acc == 1.0


# Every head as loss(num_classes, feat_dim); SLAC differentiates its angle constraint fully.
LOSS_MAKERS = {
    "slac": lambda k, d: SLACLoss(k, d, detach_target=False),
    "lgm": lambda k, d: LGMLoss(k, d),
    "mom": lambda k, d: MoMLoss(k, d),
    "lsoftmax": lambda k, d: LSoftmaxLoss(k, d),
    "softmax": lambda k, d: SoftmaxLoss(k, d),
}
DISTRIBUTION_LOSSES = ["slac", "lgm", "mom", "lsoftmax"]  # the heads that could form B x K x d


# ----------------------------------------------------------------------------------------------
# Robustness and memory


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("make", list(LOSS_MAKERS.values()), ids=list(LOSS_MAKERS))
def test_extreme_features_stay_finite(make, device):
    torch.manual_seed(0)
    loss = make(10, 64).to(device)
    if isinstance(loss, SLACLoss):
        with torch.no_grad():
            loss.mixture.gamma.normal_(0, 2.0)
            loss.mixture.log_var.uniform_(-8, 8)
    x = (1e4 * torch.randn(16, 64, device=device).sign()).requires_grad_(True)
    x_near = torch.cat([x.detach()[:8], x.detach()[8:] * 1e-9])  # and some features at ~0
    for feats in (x, x_near.requires_grad_(True)):
        value = loss(feats, torch.arange(16, device=device) % 10)
        value.backward()
        assert torch.isfinite(value), value
        assert torch.isfinite(feats.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in loss.parameters() if p.grad is not None)
        loss.zero_grad()


def test_empty_batch():
    loss = SLACLoss(3, 2)
    value = loss(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
    assert torch.isfinite(value) and value.item() == pytest.approx(
        0.1 * loss.last_terms["ac"].item()
    )


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.numel, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.numel() > self.numel:
                self.numel, self.op = t.numel(), func
        return out


@pytest.mark.parametrize(
    "make", [LOSS_MAKERS[n] for n in DISTRIBUTION_LOSSES], ids=DISTRIBUTION_LOSSES
)
def test_no_batch_by_class_by_dim_tensor(make):
    """Forward + backward never form a tensor of B x K x d (385) or K x K x d (175) elements."""
    b, k, d = 11, 5, 7
    loss = make(k, d)
    x = torch.randn(b, d, requires_grad=True)
    with _LargestTensor() as probe:
        loss(x, torch.arange(b) % k).backward()
    assert probe.numel < k * k * d, (probe.numel, probe.op)


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc and ru_maxrss (Linux)"
)
def test_imagenet_head_memory():
    """B = 256, K = 1000, d = 2048 forward + backward in a fresh process: peak RSS over the set-up
    stays far below one B x K x d float32 tensor (2000 MiB)."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_slac_head",
            "--head",
            "slac",
            "--warmup",
            "0",
            "--repeats",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result = json.loads(out.stdout)
    assert result["peak_rss_minus_setup_MiB"] < 400, result


# ----------------------------------------------------------------------------------------------
# Baselines against direct formulas


def test_lgm_and_mom_match_naive():
    torch.manual_seed(0)
    b, k, d, alpha, lam = 7, 3, 4, 0.3, 0.2
    x, y = torch.randn(b, d, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2, 2])
    for loss in (
        LGMLoss(k, d, alpha, lam, dtype=torch.float64),
        MoMLoss(k, d, alpha, lam, dtype=torch.float64),
    ):
        c = loss.num_components
        with torch.no_grad():
            loss.log_var.uniform_(-0.5, 0.5)
            if c > 1:
                loss.mix_logits.normal_()
        mu, var = loss.means.view(k, c, d), loss.covariance().view(k, c, d)
        dist = 0.5 * ((x[:, None, None] - mu) ** 2 / var).sum(-1)  # [B, K, C]
        log_pi = loss.mix_logits.log_softmax(1) if c > 1 else torch.zeros(k, 1, dtype=torch.float64)
        const = log_pi - 0.5 * var.log().sum(-1)
        logits = (const - dist).logsumexp(-1)
        margin = (1 + alpha * F.one_hot(y, k)[..., None]) * dist
        margin_logits = (const - margin).logsumexp(-1)
        expected = F.cross_entropy(margin_logits, y) - lam * logits[torch.arange(b), y].mean()
        torch.testing.assert_close(loss(x, y), expected.detach())
        torch.testing.assert_close(loss.logits(x), logits.detach())
    one = MoMLoss(k, d, alpha, lam, num_components=1, dtype=torch.float64)
    lgm = LGMLoss(k, d, alpha, lam, dtype=torch.float64)
    lgm.load_state_dict({n: v for n, v in one.state_dict().items() if n != "mix_logits"})
    torch.testing.assert_close(one(x, y), lgm(x, y))


def test_lsoftmax():
    torch.manual_seed(0)
    x, y = torch.randn(9, 5, dtype=torch.float64), torch.arange(9) % 4
    plain = LSoftmaxLoss(4, 5, margin=1, dtype=torch.float64)
    torch.testing.assert_close(plain(x, y), F.cross_entropy(x @ plain.weight.t(), y))
    loss = LSoftmaxLoss(4, 5, margin=3, base=0.0, dtype=torch.float64)  # lambda = 0: full margin
    theta = torch.linspace(0, math.pi, 3001, dtype=torch.float64)
    psi = loss.psi(torch.cos(theta))
    k = torch.clamp(torch.floor(theta * 3 / math.pi), max=2)
    torch.testing.assert_close(psi, (-1) ** k * torch.cos(3 * theta) - 2 * k)
    assert (psi.diff() < 0).all()  # continuous and decreasing: a harder target than cos(theta)
    logits = x @ loss.weight.t()
    norms = loss.weight.norm(dim=1)[y] * x.norm(dim=1)
    cos = logits[torch.arange(9), y] / norms
    margin_logits = logits.clone()
    margin_logits[torch.arange(9), y] = (
        norms * (-1) ** torch.floor(torch.acos(cos) * 3 / math.pi) * torch.cos(3 * torch.acos(cos))
        - 2 * torch.floor(torch.acos(cos) * 3 / math.pi) * norms
    )
    torch.testing.assert_close(loss(x, y), F.cross_entropy(margin_logits, y).detach())


def test_lsoftmax_schedule_and_state():
    loss = LSoftmaxLoss(3, 2)
    assert loss.current_lambda() == 1000.0
    x, y = torch.randn(4, 2), torch.tensor([0, 1, 2, 0])
    for _ in range(5):
        loss(x, y).backward()
    with torch.no_grad():
        loss(x, y)  # not counted: no gradient
    loss.eval()
    loss(x, y)  # not counted: eval mode
    assert loss.iteration == 5
    assert loss.current_lambda() == pytest.approx(1000 * (1 + 2.5e-5 * 5) ** -35)
    other = LSoftmaxLoss(3, 2)
    other.load_state_dict(loss.state_dict())
    assert other.iteration == 5
    loss.iteration = 10**6
    assert loss.current_lambda() < 1e-40


def test_head_ignores_autocast():
    """Under bfloat16 autocast the head still computes in its own (float32) precision."""
    torch.manual_seed(0)
    loss = SLACLoss(5, 16, mixture=random_mixture(5, 16, dtype=torch.float32))
    x, y = torch.randn(8, 16), torch.arange(8) % 5
    ref = loss(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = loss.mixture(x)
        value = loss(x, y)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(value, ref)


LOSSES = [SLACLoss, LGMLoss, MoMLoss, LSoftmaxLoss, SoftmaxLoss]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cls", LOSSES, ids=lambda c: c.__name__)
def test_half_precision_head_is_finite_at_init(cls, dtype):
    """A float16/bfloat16 head computes in float32: finite loss and gradients at initialisation
    (gamma = 0), where float16 epsilons would underflow to 0 and give 0/0."""
    torch.manual_seed(0)
    loss = cls(10, 16, dtype=dtype)
    x = torch.randn(8, 16, dtype=dtype, requires_grad=True)
    value = loss(x, torch.arange(8) % 10)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value), value
    assert torch.isfinite(x.grad).all() and x.grad.dtype == dtype
    for p in loss.parameters():
        assert p.dtype == dtype
        assert p.grad is None or torch.isfinite(p.grad).all()
    if cls is SLACLoss:
        assert torch.isfinite(loss.mixture.skewness_cosines()).all()
        ref = SLACLoss(10, 16, mixture=random_mixture(10, 16, dtype=torch.float32))
        with torch.no_grad():
            for p, q in zip(ref.parameters(), loss.parameters()):
                p.copy_(q.float())
        torch.testing.assert_close(value, ref(x.detach().float(), torch.arange(8) % 10))


@pytest.mark.parametrize("cls", LOSSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bool, torch.complex64])
def test_targets_must_be_integer_class_indices(cls, dtype):
    """Float and bool targets are refused (they used to be truncated: 2.7 -> 2), as
    F.cross_entropy refuses them for class indices; every integer dtype is accepted."""
    loss = cls(3, 4)
    x = torch.randn(2, 4)
    with pytest.raises(TypeError, match="integer dtype"):
        loss(x, torch.tensor([2.7, 1.0]).to(dtype))
    for int_dtype in (torch.int64, torch.int32, torch.uint8):
        assert torch.isfinite(loss(x, torch.tensor([2, 1], dtype=int_dtype)))


@pytest.mark.parametrize("cls", LOSSES + [SkewLaplaceMixture], ids=lambda c: c.__name__)
@pytest.mark.parametrize(
    "k, d, error, match",
    [
        (2.5, 4, TypeError, "num_classes must be an int, got 2.5"),
        (True, 4, TypeError, "num_classes must be an int, got True"),
        ("3", 4, TypeError, "num_classes must be an int"),
        (0, 4, ValueError, "num_classes must be >= 1, got 0"),
        (3, -1, ValueError, "feat_dim must be >= 1, got -1"),
        (3, 4.0, TypeError, "feat_dim must be an int"),
    ],
)
def test_class_and_feature_counts_validated(cls, k, d, error, match):
    with pytest.raises(error, match=match):
        cls(k, d)
