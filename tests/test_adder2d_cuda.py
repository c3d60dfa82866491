"""Tests of the CUDA kernels of the adder2d ops (csrc/cuda/).

Every CUDA result is checked against the C++ CPU ops run in float64 on the same values (the CPU
ops are themselves checked against addernet_cuda.reference, and a few cases here compare with
the reference directly). Before each CUDA run the caching allocator is filled with NaN bit
patterns, so an output element a kernel forgets to write shows up as NaN.

Without a usable GPU (no device, or a CUDA build of torch without a driver) the CUDA tests skip
with the reason; test_build_has_cuda_kernels runs anywhere when ADDERNET_EXPECT_CUDA=1.
"""

import math
import os

import pytest
import torch
from adder2d_cases import (
    BAD_INPUT,
    CUDA_CASES,
    CUDA_LARGE,
    Case,
    call_raw,
    to_device,
    valid_args,
)
from cuda_weight_grad_bound import weight_grad_allowed_error

import addernet_cuda
from addernet_cuda import reference

OPS = ("adder2d", "adder2d_input_grad", "adder2d_weight_grad")
DEVICE = "cuda"
CUDA_OK = torch.cuda.is_available() and "cuda" in addernet_cuda.build_info()["backends"]
if not torch.cuda.is_available():
    _SKIP_REASON = (
        "no CUDA device: torch.cuda.is_available() is False (no GPU, or no driver); "
        "run benchmarks/gpu_check.sh on a GPU machine"
    )
else:
    _SKIP_REASON = "the extension was built without its CUDA kernels (see build_info()['backends'])"
requires_cuda = pytest.mark.skipif(not CUDA_OK, reason=_SKIP_REASON)


@pytest.mark.skipif(
    os.environ.get("ADDERNET_EXPECT_CUDA") != "1",
    reason="ADDERNET_EXPECT_CUDA is not 1: a build without CUDA kernels is allowed",
)
def test_build_has_cuda_kernels():
    info = addernet_cuda.build_info()
    assert "cuda" in info["backends"], info
    for op in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"addernet::{op}", "CUDA"), op


# --- helpers -----------------------------------------------------------------------------------


def poison_allocator():
    """Fills cached CUDA memory with 0xFF bytes (NaN in float16, bfloat16, float32 and float64)
    and frees it, so the next allocations reuse poisoned blocks (large and small pools)."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    big = torch.full((256 * 2**20,), 255, dtype=torch.uint8, device=DEVICE)
    small = [torch.full((2**19,), 255, dtype=torch.uint8, device=DEVICE) for _ in range(24)]
    torch.cuda.synchronize()
    del big, small


# Shapes chosen to reach every kernel path (the shared table in adder2d_cases.py).
CASES = CUDA_CASES
LARGE = CUDA_LARGE


def make_inputs(case, dtype, layout, seed=0):
    """x, w, bias, dy on DEVICE in `dtype` with the requested memory layout."""
    x, w, b = case.tensors(torch.float64, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    dy = torch.randn(case.n, case.co, case.oh, case.ow, generator=g, dtype=torch.float64)
    tensors = [t.to(DEVICE, dtype) for t in (x, w, b, dy)]
    if layout == "channels_last":
        tensors = [t.to(memory_format=torch.channels_last) if t.dim() == 4 else t for t in tensors]
    elif layout == "strided":
        out = []
        for t in tensors:
            # Every other element along the last dimension of a twice-as-wide buffer.
            wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=dtype, device=DEVICE)
            wide[..., ::2] = t
            out.append(wide[..., ::2])
        tensors = out
        assert not tensors[0].is_contiguous() or tensors[0].numel() == 0
    return tensors


def cpu_expected(case, x, w, b, dy):
    """Forward, both input gradients and the weight gradient by the CPU ops in float64."""
    x, w, b, dy = (t.detach().cpu().double() for t in (x, w, b, dy))
    ops = torch.ops.addernet
    return {
        "y": ops.adder2d(x, w, b, *case.args, "hardtanh"),
        "gx_hardtanh": ops.adder2d_input_grad(dy, x, w, *case.args, "hardtanh"),
        "gx_exact": ops.adder2d_input_grad(dy, x, w, *case.args, "exact"),
        "gw": ops.adder2d_weight_grad(dy, x, w, *case.args),
    }


def cuda_results(case, x, w, b, dy):
    ops = torch.ops.addernet
    out = {}
    poison_allocator()
    out["y"] = ops.adder2d(x, w, b, *case.args, "hardtanh")
    poison_allocator()
    out["gx_hardtanh"] = ops.adder2d_input_grad(dy, x, w, *case.args, "hardtanh")
    poison_allocator()
    out["gx_exact"] = ops.adder2d_input_grad(dy, x, w, *case.args, "exact")
    poison_allocator()
    out["gw"] = ops.adder2d_weight_grad(dy, x, w, *case.args)
    torch.cuda.synchronize()
    return out


def bounds(case, x, w, b, dy):
    """For each result, a bound on the sum of the absolute values of its terms: the scale that
    rounding errors are measured against; for the weight gradient, the allowed error per element
    itself (the decomposition's documented bound, cuda_weight_grad_bound.py)."""
    amax = lambda t: t.detach().abs().max().item() if t.numel() else 0.0  # noqa: E731
    xw = amax(x) + amax(w)
    cog = case.co // case.groups
    return {
        "y": case.taps * xw + amax(b) + 1.0,
        "gx_hardtanh": case.kh * case.kw * cog * amax(dy) + 1.0,
        "gx_exact": case.kh * case.kw * cog * amax(dy) + 1.0,
        "gw": weight_grad_allowed_error(case, dy, x, w),
    }


def assert_matches(actual, expected, bound, tol, what):
    """|actual - expected| <= tol * bound, or <= bound elementwise where bound is a tensor of
    allowed errors (the weight gradient)."""
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert actual.is_contiguous(), what
    if expected.numel() == 0:
        return
    a = actual.detach().cpu().double()
    assert not torch.isnan(a).any(), f"{what}: NaN in the result (an element was never written?)"
    if isinstance(bound, torch.Tensor):
        err = (a - expected).abs()
        excess = (err - bound).max().item()
        assert bool((err <= bound).all()), (
            f"{what}: error above the documented bound by {excess:.3g}"
        )
        return
    err = (a - expected).abs().max().item()
    assert err <= tol * bound, f"{what}: max error {err:.3g} > {tol:.1g} * {bound:.4g}"


TOL = {torch.float32: 2e-6, torch.float64: 1e-13}


# --- parity with the float64 CPU path ----------------------------------------------------------


@requires_cuda
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_parity_with_cpu(case, dtype, layout):
    x, w, b, dy = make_inputs(case, dtype, layout)
    got = cuda_results(case, x, w, b, dy)
    want = cpu_expected(case, x, w, b, dy)
    bnd = bounds(case, x, w, b, dy)
    for key in want:
        assert_matches(got[key], want[key], bnd[key], TOL[dtype], f"{case.name} {key}")


@requires_cuda
def test_parity_large_tile():
    x, w, b, dy = make_inputs(LARGE, torch.float32, "contiguous")
    got = cuda_results(LARGE, x, w, b, dy)
    want = cpu_expected(LARGE, x, w, b, dy)
    bnd = bounds(LARGE, x, w, b, dy)
    for key in want:
        assert_matches(got[key], want[key], bnd[key], TOL[torch.float32], f"large {key}")


@requires_cuda
@pytest.mark.parametrize("seed", range(12))
def test_parity_random_shapes(seed):
    g = torch.Generator().manual_seed(1000 + seed)
    r = lambda lo, hi: int(torch.randint(lo, hi + 1, (), generator=g))  # noqa: E731
    groups = r(1, 3)
    kh, kw, dh, dw = r(1, 4), r(1, 4), r(1, 2), r(1, 2)
    ph, pw, sh, sw = r(0, 2), r(0, 2), r(1, 3), r(1, 3)
    h = max(r(1, 14), dh * (kh - 1) + 1 - 2 * ph)
    w = max(r(1, 14), dw * (kw - 1) + 1 - 2 * pw)
    case = Case(
        f"random{seed}",
        r(1, 3),
        groups * r(1, 12),
        h,
        w,
        groups * r(1, 70),
        kh,
        kw,
        stride=(sh, sw),
        padding=(ph, pw),
        dilation=(dh, dw),
        groups=groups,
    )
    x, wt, b, dy = make_inputs(case, torch.float32, "contiguous", seed=seed)
    got = cuda_results(case, x, wt, b, dy)
    want = cpu_expected(case, x, wt, b, dy)
    bnd = bounds(case, x, wt, b, dy)
    for key in want:
        assert_matches(got[key], want[key], bnd[key], TOL[torch.float32], f"{case} {key}")


@requires_cuda
@pytest.mark.parametrize("case", [CASES[1], CASES[10]], ids=repr)
def test_matches_reference_autograd(case):
    """The functional adder2d on CUDA (autograd included) against the official unfold algorithm."""
    x, w, b, dy = make_inputs(case, torch.float64, "contiguous")
    for mode in ("hardtanh", "exact"):
        xs = [x.clone().requires_grad_(), x.cpu().clone().requires_grad_()]
        ws = [w.clone().requires_grad_(), w.cpu().clone().requires_grad_()]
        bs = [b.clone().requires_grad_(), b.cpu().clone().requires_grad_()]
        y0 = addernet_cuda.adder2d(
            xs[0],
            ws[0],
            bs[0],
            case.stride,
            case.padding,
            case.dilation,
            case.groups,
            input_grad=mode,
        )
        y1 = reference.adder2d(
            xs[1],
            ws[1],
            bs[1],
            case.stride,
            case.padding,
            case.dilation,
            case.groups,
            input_grad=mode,
        )
        y0.backward(dy)
        y1.backward(dy.cpu())
        for a, e in (
            (y0, y1),
            (xs[0].grad, xs[1].grad),
            (ws[0].grad, ws[1].grad),
            (bs[0].grad, bs[1].grad),
        ):
            torch.testing.assert_close(a.cpu(), e, rtol=1e-10, atol=1e-10)


# --- reduced precision --------------------------------------------------------------------------


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize(
    "case", [CASES[0], CASES[1], CASES[5], CASES[7], CASES[8], CASES[13]], ids=repr
)
def test_reduced_precision_against_float32(case, dtype):
    """float16/bfloat16 inputs are accumulated in float: the result is the float32 result on the
    same (rounded) values, rounded once to the dtype."""
    x, w, b, dy = make_inputs(case, dtype, "contiguous")
    got = cuda_results(case, x, w, b, dy)
    ref = cuda_results(case, *(t.float() for t in (x, w, b, dy)))
    bnd = bounds(case, x.float(), w.float(), b.float(), dy.float())
    unit = 2.0**-11 if dtype == torch.float16 else 2.0**-8  # unit roundoff of the dtype
    for key in ref:
        assert got[key].dtype == dtype, key
        # on the CPU, where bounds() puts the weight gradient's allowed error
        a, e = got[key].float().cpu(), ref[key].cpu()
        assert not torch.isnan(a).any(), key
        # one rounding of the float32 result, plus float32-level differences in the order of sums:
        # a scale times TOL, or for the weight gradient the allowed error itself, once for each
        # of the two results
        err = (a - e).abs()
        if isinstance(bnd[key], torch.Tensor):
            allowed = unit * e.abs() + 2 * (1 + unit) * bnd[key]
        else:
            allowed = unit * e.abs() + TOL[torch.float32] * bnd[key] + 1e-30
        assert bool((err <= allowed).all()), (
            f"{case} {key}: max excess {(err - allowed).max().item():.3g}"
        )


# --- gradients ----------------------------------------------------------------------------------

GRADCHECK_CASES = [
    Case("gc_basic", 2, 2, 5, 5, 3, 3, 3, padding=1),
    Case("gc_stride2_pad1", 1, 3, 6, 7, 2, 3, 3, stride=2, padding=1),
    Case("gc_groups_dilation", 1, 4, 7, 6, 4, 2, 3, padding=(1, 2), dilation=(2, 1), groups=2),
    Case("gc_depthwise_stride2", 2, 3, 6, 6, 3, 3, 3, stride=2, padding=1, groups=3),
]


@requires_cuda
@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=repr)
def test_gradcheck_exact_mode(case):
    """With input_grad="exact" the input gradient is the true derivative: float64 gradcheck with
    respect to the input and the bias. Inputs sit on a grid of 1/4 + 1/8 and weights on a grid
    of 1/4, so every |x - w| >= 1/8: far from the kinks."""
    g = torch.Generator().manual_seed(7)
    x = torch.randint(-8, 8, (case.n, case.c, case.h, case.w), generator=g) * 0.25 + 0.125
    w = torch.randint(-8, 8, (case.co, case.c // case.groups, case.kh, case.kw), generator=g) * 0.25
    b = torch.randn(case.co, generator=g)
    x = x.to(DEVICE, torch.float64).requires_grad_()
    w = w.to(DEVICE, torch.float64)
    b = b.to(DEVICE, torch.float64).requires_grad_()

    def fn(x, b):
        return addernet_cuda.adder2d(
            x, w, b, case.stride, case.padding, case.dilation, case.groups, input_grad="exact"
        )

    assert torch.autograd.gradcheck(fn, (x, b), eps=1e-6, atol=1e-8, rtol=1e-6)


# --- determinism --------------------------------------------------------------------------------


@requires_cuda
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.float16], ids=["float32", "float64", "float16"]
)
@pytest.mark.parametrize("case", [CASES[14], CASES[13], CASES[15], CASES[6]], ids=repr)
def test_deterministic(case, dtype):
    """The weight gradient (one split or many) and the other ops are bitwise equal across runs."""
    x, w, b, dy = make_inputs(case, dtype, "contiguous")
    runs = [cuda_results(case, x, w, b, dy) for _ in range(3)]
    for key in runs[0]:
        for other in runs[1:]:
            assert torch.equal(runs[0][key], other[key]), f"{case} {key} differs between runs"


# --- dispatcher, errors and edge cases -----------------------------------------------------------


@requires_cuda
@pytest.mark.parametrize("case", [CASES[1], CASES[6], CASES[12]], ids=repr)
def test_opcheck(case):
    x, w, b, dy = make_inputs(case, torch.float64, "contiguous")
    ops = torch.ops.addernet
    torch.library.opcheck(
        ops.adder2d.default, (x.requires_grad_(), w.requires_grad_(), b, *case.args, "exact")
    )
    torch.library.opcheck(
        ops.adder2d_input_grad.default, (dy, x.detach(), w.detach(), *case.args, "hardtanh")
    )
    torch.library.opcheck(ops.adder2d_weight_grad.default, (dy, x.detach(), w.detach(), *case.args))


@requires_cuda
@pytest.mark.parametrize("row", [r for r in BAD_INPUT if r[4]], ids=lambda r: r[0])
def test_errors_match_cpu(row):
    """Every raw-op row of the shared error table, on CUDA tensors: the C++ check refuses with
    the message the CPU op gives."""
    _, op, change, pattern, _ = row
    args = valid_args(op)
    args = to_device({**args, **change(args)}, DEVICE)
    with pytest.raises(RuntimeError, match=pattern):
        call_raw(op, args)


@requires_cuda
def test_errors_device_mismatch():
    args = to_device(valid_args("adder2d"), DEVICE)
    args["weight"] = args["weight"].cpu()
    with pytest.raises(RuntimeError, match="adder2d: weight is on cpu but input is on cuda"):
        call_raw("adder2d", args)


@requires_cuda
def test_zero_size():
    ops = torch.ops.addernet
    x = torch.randn(0, 4, 5, 5, device=DEVICE)
    w = torch.randn(6, 4, 3, 3, device=DEVICE)
    dy = torch.randn(0, 6, 3, 3, device=DEVICE)
    assert ops.adder2d(x, w, None, [1, 1], [0, 0], [1, 1], 1, "hardtanh").shape == (0, 6, 3, 3)
    assert ops.adder2d_input_grad(dy, x, w, [1, 1], [0, 0], [1, 1], 1, "exact").shape == (
        0,
        4,
        5,
        5,
    )
    poison_allocator()
    gw = ops.adder2d_weight_grad(dy, x, w, [1, 1], [0, 0], [1, 1], 1)
    assert torch.equal(gw, torch.zeros_like(gw))


@requires_cuda
def test_current_stream_captured_in_a_cuda_graph():
    """The three ops launch on the current stream: captured into a CUDA graph (which captures
    the side stream torch.cuda.graph makes current), then replayed on new input values into
    NaN-filled outputs. A kernel launched on any other stream is either refused during capture
    (the legacy default stream) or not part of the graph, and the replay then leaves NaN or the
    old values behind."""
    case = CASES[1]
    x, w, b, dy = make_inputs(case, torch.float32, "contiguous")
    ops = torch.ops.addernet

    def run_ops():
        return (
            ops.adder2d(x, w, b, *case.args, "hardtanh"),
            ops.adder2d_input_grad(dy, x, w, *case.args, "hardtanh"),
            ops.adder2d_weight_grad(dy, x, w, *case.args),
        )

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture
        run_ops()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = run_ops()
    x2, w2, b2, dy2 = make_inputs(case, torch.float32, "contiguous", seed=5)
    for t, new in ((x, x2), (w, w2), (b, b2), (dy, dy2)):
        t.copy_(new)
    for out in outputs:
        out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    want = cpu_expected(case, x2, w2, b2, dy2)
    bnd = bounds(case, x2, w2, b2, dy2)
    for key, got in zip(("y", "gx_hardtanh", "gw"), outputs):
        assert_matches(got, want[key], bnd[key], TOL[torch.float32], f"graph replay {key}")


@pytest.mark.skipif(not CUDA_OK or torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_device():
    """Tensors on cuda:1 run there (the device guard), with the same result."""
    case = CASES[1]
    x, w, b, dy = (t.to("cuda:1") for t in make_inputs(case, torch.float32, "contiguous"))
    y = torch.ops.addernet.adder2d(x, w, b, *case.args, "hardtanh")
    assert y.device == torch.device("cuda:1")
    want, bnd = cpu_expected(case, x, w, b, dy), bounds(case, x, w, b, dy)
    assert_matches(y, want["y"], bnd["y"], TOL[torch.float32], "cuda:1")


@requires_cuda
def test_padded_taps_count():
    """A single pixel with a 3x3 kernel and padding 1: eight taps read padding and add -|w|."""
    x = torch.full((1, 1, 1, 1), 2.0, device=DEVICE)
    w = torch.arange(9, dtype=torch.float32, device=DEVICE).view(1, 1, 3, 3) - 4.0
    y = torch.ops.addernet.adder2d(x, w, None, [1, 1], [1, 1], [1, 1], 1, "hardtanh")
    expected = -(w.abs().sum() - w[0, 0, 1, 1].abs() + (2.0 - w[0, 0, 1, 1]).abs())
    assert math.isclose(y.item(), expected.item(), rel_tol=1e-6)
