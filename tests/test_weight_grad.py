"""The CPU weight gradient: the decomposition (default) against the direct kernel and float64.

dW[co,k] = sum_p dY[co,p] * (Xp[k,p] - W[co,k])
         = sum_p dY[co,p] * (Xp[k,p] - c_k) - (W[co,k] - c_k) * sum_p dY[co,p],
c_k = mean over the group's output channels of W[co,k]. Documented bound (csrc/README.md), with
u the unit roundoff of the dtype and m = 64 pixels per chunk summed in it:
  |err| <= u |dW| + (m + 2) u sum_p |dY| (|Xp - W| + 2 |W - c|).
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import cpu_isas

import addernet_cuda
from addernet_cuda import _extension

CHUNK = 64  # WG_PIXELS in csrc/cpu/adder2d_cpu_kernels.h

# (N, C, H, W, Co, k, stride, padding, groups): chunk tails (100 pixels), a tap-block tail
# (72 taps), register-block tails (Co per group 12 and 5), stride 2, groups; output widths of
# whole vectors (16 and 8: the decomposition packs from zero-padded, phase-split planes).
BOUND_SHAPES = [
    pytest.param((4, 8, 10, 10, 12, 3, 1, 1, 1), id="3x3"),
    pytest.param((3, 6, 11, 9, 10, 3, 2, 1, 2), id="stride2-groups"),
    pytest.param((2, 5, 7, 7, 7, 1, 1, 0, 1), id="1x1"),
    pytest.param((2, 5, 14, 16, 7, 3, 1, 1, 1), id="3x3-whole-vectors"),
    pytest.param((2, 6, 15, 16, 10, 3, 2, 1, 2), id="stride2-groups-whole-vectors"),
]

# Input statistics: N(0,1) everywhere; "offset": trained-network-like, X and W share an offset
# of 4 (|W| about 8x |Xp - W|, zero-padded borders where |Xp - W| = |W|); "spread": each output
# channel's weights around its own offset in [2, 6].
STATS = ["normal", "offset", "spread"]


def make_case(shape, stats, dtype, seed=0):
    n, c, h, w, co, k, stride, padding, groups = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    wt = torch.randn(co, c // groups, k, k, generator=g, dtype=torch.float64)
    if stats == "offset":
        x, wt = 4 + 0.5 * x, 4 + 0.2 * wt
    elif stats == "spread":
        x = (4 + 0.5 * x).clamp(min=0)
        wt = 2 + 4 * torch.rand(co, 1, 1, 1, generator=g, dtype=torch.float64) + 0.2 * wt
    kw = dict(stride=stride, padding=padding, groups=groups)
    shape_out = F.conv2d(x, wt, None, stride, padding, 1, groups).shape
    dy = torch.randn(shape_out, generator=g, dtype=torch.float64)
    return dy.to(dtype), x.to(dtype), wt.to(dtype), kw


def error_bound(dy, x, w, kw, unit_roundoff):
    """u |dW| + (m + 2) u sum |dY| (|Xp - W| + 2 |W - c|) per weight, in float64."""
    dy, x, w = dy.double(), x.double(), w.double()
    co, cig, kh, kwd = w.shape
    groups = kw["groups"]
    cols = F.unfold(x, (kh, kwd), padding=kw["padding"], stride=kw["stride"])  # [N, C*k*k, L]
    n, _, L = cols.shape
    cols = cols.view(n, groups, cig * kh * kwd, L)
    ady = dy.abs().reshape(n, groups, co // groups, L)
    wg = w.reshape(groups, co // groups, cig * kh * kwd)
    centre = wg.mean(1, keepdim=True)
    # sum_{n,p} |dY[n,co,p]| |Xp[n,k,p] - W[co,k]|, per group
    diff = (cols.unsqueeze(2) - wg.unsqueeze(0).unsqueeze(-1)).abs()  # [N, G, Cog, K, L]
    s_diff = (ady.unsqueeze(3) * diff).sum((0, 4))
    s_dy = ady.sum((0, 3)).unsqueeze(-1)
    exact = (
        (cols.unsqueeze(2) - wg.unsqueeze(0).unsqueeze(-1)) * dy.reshape(ady.shape).unsqueeze(3)
    ).sum((0, 4))
    bound = unit_roundoff * exact.abs() + (CHUNK + 2) * unit_roundoff * (
        s_diff + 2 * (wg - centre).abs() * s_dy
    )
    return exact.reshape(w.shape), bound.reshape(w.shape)


@pytest.fixture
def weight_grad_kernel(request, monkeypatch):
    """Selects the CPU weight-gradient kernel through ADDERNET_CPU_WEIGHT_GRAD."""
    monkeypatch.setenv("ADDERNET_CPU_WEIGHT_GRAD", request.param)
    return request.param


@pytest.mark.parametrize("cpu_isa", cpu_isas, indirect=True)
@pytest.mark.parametrize("weight_grad_kernel", ["decomposition", "direct"], indirect=True)
@pytest.mark.parametrize("stats", STATS)
@pytest.mark.parametrize("shape", BOUND_SHAPES)
def test_weight_grad_float32_within_documented_bound(shape, stats, weight_grad_kernel, cpu_isa):
    dy, x, w, kw = make_case(shape, stats, torch.float32)
    got = addernet_cuda.ops.adder2d_weight_grad(dy, x, w, **kw).double()
    exact, bound = error_bound(dy, x, w, kw, 2.0**-24)
    err = (got - exact).abs()
    assert (err <= bound).all(), f"max err/bound {(err / bound).max().item():.3g}"


@pytest.mark.parametrize("shape", [BOUND_SHAPES[1], BOUND_SHAPES[4]])
@pytest.mark.parametrize("stats", STATS)
def test_weight_grad_decomposition_float64_matches_direct(stats, shape, monkeypatch):
    dy, x, w, kw = make_case(shape, stats, torch.float64)
    monkeypatch.setenv("ADDERNET_CPU_WEIGHT_GRAD", "direct")
    direct = addernet_cuda.ops.adder2d_weight_grad(dy, x, w, **kw)
    monkeypatch.setenv("ADDERNET_CPU_WEIGHT_GRAD", "decomposition")
    decomposed = addernet_cuda.ops.adder2d_weight_grad(dy, x, w, **kw)
    torch.testing.assert_close(decomposed, direct, rtol=1e-12, atol=1e-12)


def test_weight_grad_decomposition_offset_error_close_to_direct(monkeypatch):
    """With a shared offset (|W| ~ 8 |Xp - W|) the centred decomposition stays within 4x of the
    direct kernel's error; uncentred it would lose about a factor |W| / |Xp - W| more."""
    dy, x, w, kw = make_case((8, 16, 12, 12, 16, 3, 1, 1, 1), "offset", torch.float32)
    exact = addernet_cuda.ops.adder2d_weight_grad(dy.double(), x.double(), w.double(), **kw)
    errors = {}
    for kernel in ("direct", "decomposition"):
        monkeypatch.setenv("ADDERNET_CPU_WEIGHT_GRAD", kernel)
        got = addernet_cuda.ops.adder2d_weight_grad(dy, x, w, **kw).double()
        errors[kernel] = (got - exact).abs().max().item() / exact.abs().max().item()
    assert errors["decomposition"] <= 4 * errors["direct"], errors


def test_weight_grad_kernels_thread_count_independent(monkeypatch):
    dy, x, w, kw = make_case((4, 16, 12, 12, 14, 3, 1, 1, 1), "offset", torch.float32)
    threads = torch.get_num_threads()
    try:
        for kernel in ("decomposition", "direct"):
            monkeypatch.setenv("ADDERNET_CPU_WEIGHT_GRAD", kernel)
            results = []
            for n in (1, 2, 3):
                torch.set_num_threads(n)
                results.append(addernet_cuda.ops.adder2d_weight_grad(dy, x, w, **kw))
            assert all(torch.equal(results[0], r) for r in results[1:]), kernel
    finally:
        torch.set_num_threads(threads)


def test_weight_grad_kernel_flag_rejects_unknown(monkeypatch):
    dy, x, w, kw = make_case(BOUND_SHAPES[0].values[0], "normal", torch.float32)
    monkeypatch.setenv("ADDERNET_CPU_WEIGHT_GRAD", "fast")
    with pytest.raises(RuntimeError, match='ADDERNET_CPU_WEIGHT_GRAD must be "direct" or'):
        addernet_cuda.ops.adder2d_weight_grad(dy, x, w, **kw)


def test_cuda_bound_of_an_empty_batch_is_zero():
    """The CUDA tests' allowed weight-gradient error (cuda_weight_grad_bound.py) for a batch of 0
    images: no term, so an all-zero bound of the weight's shape (the reshapes must not infer a
    dimension from 0 elements)."""
    from adder2d_cases import Case
    from cuda_weight_grad_bound import weight_grad_allowed_error

    case = Case("batch0", 0, 4, 6, 6, 8, 3, 3, padding=1, groups=2)
    x, w = torch.randn(0, 4, 6, 6), torch.randn(8, 2, 3, 3)
    dy = torch.randn(0, 8, case.oh, case.ow)
    allowed = weight_grad_allowed_error(case, dy, x, w)
    assert allowed.shape == w.shape
    assert not allowed.any()


# (N, C, H, W, Co, k, stride, padding, groups) for the AVX-512 weight gradient against AVX2: 12
# output channels (one 12-row call), 13 (7 + 6), 30 (12 + 12 + 6), 64; 72, 144 and 576 taps (a
# short last block of 32, runs of blocks split between threads), 45 (a block's last 16 taps
# partly past the end); output widths of 8 and 16 (zero-padded planes; at 16 the AVX-512 copy
# packs 16 x 16 blocks), 10 (the transposed gather), stride 2 with groups.
ISA_SHAPES = [
    pytest.param((3, 8, 10, 10, 12, 3, 1, 1, 1), id="12-channels"),
    pytest.param((2, 16, 8, 8, 13, 3, 1, 1, 1), id="13-channels"),
    pytest.param((2, 16, 16, 16, 30, 3, 1, 1, 1), id="30-channels"),
    pytest.param((2, 64, 8, 8, 64, 3, 1, 1, 1), id="64-channels"),
    pytest.param((3, 12, 11, 16, 10, 3, 2, 1, 2), id="stride2-groups"),
    pytest.param((2, 8, 9, 32, 12, 3, 2, 1, 1), id="stride2-width16"),
    pytest.param((2, 5, 12, 16, 9, 3, 1, 1, 1), id="45-taps-width16"),
]


@pytest.mark.skipif(
    addernet_cuda.build_info()["cpu_isa"] != "avx512",
    reason="AVX-512 kernels not compiled in or the CPU lacks AVX-512 F/BW/VL/DQ/VNNI",
)
@pytest.mark.parametrize("weight_grad_kernel", ["decomposition", "direct"], indirect=True)
@pytest.mark.parametrize("shape", ISA_SHAPES)
def test_weight_grad_avx512_bitwise_equal_to_avx2(shape, weight_grad_kernel):
    """The AVX-512 weight gradient (FMAs on 64-byte vectors, blocks of 32 taps) sums each tap
    over the pixels in the AVX2 kernels' order (blocks of 16 taps): the same bits, on 1 to 3
    threads (work items of different runs of blocks)."""
    dy, x, w, kw = make_case(shape, "offset", torch.float32)
    previous, threads = _extension._C.cpu_isa(), torch.get_num_threads()
    try:
        out, register_bytes = [], {}
        for isa in ("avx2", "avx512"):
            _extension._C.set_cpu_isa(isa)
            register_bytes[isa] = _extension._C.adder2d_cpu_weight_grad_register_bytes(False)
            for n in (1, 2, 3):
                torch.set_num_threads(n)
                out.append(addernet_cuda.ops.adder2d_weight_grad(dy, x, w, **kw))
    finally:
        _extension._C.set_cpu_isa(previous)
        torch.set_num_threads(threads)
    assert register_bytes == {"avx2": 32, "avx512": 64}
    assert all(torch.equal(out[0].view(torch.int32), o.view(torch.int32)) for o in out[1:])
