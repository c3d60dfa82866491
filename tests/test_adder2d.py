"""Tests of the adder2d ops (addernet_cuda/ops.py, csrc/) against the unfused reference.

Y = -sum |Xp - W| (+ b); dX = sum dY * HT(W - X) (or sign); dW = sum dY * (Xp - W); db = sum dY.
"""

import importlib

import pytest
import torch
import torch.nn.functional as F
from adder2d_cases import BAD_INPUT, CPU_CASES, Case, call_raw, valid_args
from conftest import cpu_isas, devices

import addernet_cuda
from addernet_cuda import _extension, reference

SHAPES = CPU_CASES


def make(case, dtype=torch.float64, device="cpu", bias=True, seed=0):
    """x, w, bias and adder2d's keyword arguments for one case of the shared table."""
    return (*case.tensors(dtype, device, bias, seed), case.kwargs)


def grads(fn, x, w, b, kwargs, dy):
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_()
    b = b.detach().requires_grad_() if b is not None else None
    y = fn(x, w, b, **kwargs)
    y.backward(dy)
    return y.detach(), x.grad, w.grad, (b.grad if b is not None else None)


@pytest.mark.parametrize("cpu_isa", cpu_isas, indirect=True)
@pytest.mark.parametrize("shape", SHAPES, ids=repr)
@pytest.mark.parametrize("mode", ["hardtanh", "exact"])
def test_three_ops_match_reference_float64(shape, mode, cpu_isa):
    x, w, b, kw = make(shape)
    y_ref = reference.adder2d(x, w, b, **kw)
    dy = torch.randn_like(y_ref)
    ours = grads(lambda *a, **k: addernet_cuda.adder2d(*a, **k, input_grad=mode), x, w, b, kw, dy)
    ref = grads(lambda *a, **k: reference.adder2d(*a, **k, input_grad=mode), x, w, b, kw, dy)
    for name, a, r in zip(("output", "grad_input", "grad_weight", "grad_bias"), ours, ref):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("cpu_isa", cpu_isas, indirect=True)
@pytest.mark.parametrize("shape", SHAPES[:12], ids=repr)
def test_float32_matches_float64(shape, cpu_isa):
    x, w, b, kw = make(shape)
    dy = torch.randn(reference.adder2d(x, w, b, **kw).shape, dtype=torch.float64)
    exact = grads(addernet_cuda.adder2d, x, w, b, kw, dy)
    single = grads(addernet_cuda.adder2d, x.float(), w.float(), b.float(), kw, dy.float())
    for name, a, r in zip(("output", "grad_input", "grad_weight", "grad_bias"), single, exact):
        scale = r.abs().max().item() if r.numel() else 1.0
        torch.testing.assert_close(
            a.double(), r, rtol=1e-5, atol=1e-5 * max(scale, 1.0), msg=lambda m: f"{name}: {m}"
        )


def forward_in_tap_order(x, w, b, kw, oh, ow):
    """b - sum_k |Xp[k] - W[k]| with the taps k = (ci, kh, kw) added one by one in order, in the
    inputs' dtype: the CPU forward's summation order, to compare with it bit for bit."""
    g = kw["groups"]
    cols = F.unfold(x, w.shape[2:], kw["dilation"], kw["padding"], kw["stride"])
    n, co = x.shape[0], w.shape[0]
    cols = cols.view(n, g, -1, oh * ow)  # [N, G, K, L], k = (ci, kh, kw)
    wg = w.reshape(g, co // g, -1)  # [G, Cog, K]
    acc = torch.zeros(n, g, co // g, oh * ow, dtype=x.dtype)
    for k in range(cols.shape[2]):
        acc += (cols[:, :, None, k, :] - wg[None, :, :, k, None]).abs()
    y = acc.view(n, co, oh, ow)
    return (b.view(1, co, 1, 1) - y) if b is not None else -y


# The direct path (prepared input, whole vectors of a row) and the packed path (rows too short
# for vectors) both; more output channels than one register block and more taps than one panel.
TAP_ORDER_SHAPES = [s for s in SHAPES if s.n > 0] + [
    Case("direct-16-channels", 2, 16, 16, 16, 16, 3, 3, padding=1),
    Case("direct-wide-taps", 1, 40, 8, 8, 6, 3, 3, padding=1),
    # 13 output channels: the AVX-512 micro-tile's blocks of 8, 4 and 1; a tile's two vectors
    # adjacent (rows of 16 pixels) and not (rows of 8, and the batch path's row ends).
    Case("direct-13-channels-rows-of-16", 2, 5, 9, 16, 13, 3, 3, padding=1),
    Case("direct-13-channels-rows-of-8", 2, 5, 9, 8, 13, 3, 3, padding=1),
    Case("batch-13-channels", 8, 3, 7, 7, 13, 3, 3, padding=1),
    # The direct path's prepared rows: 13 columns (whole vectors and an overlapping last one), 6
    # (shorter than a vector), and at stride 2 21 columns (10 pairs: an overlapping last split of
    # the even and odd columns, and one even column after the pairs).
    Case("direct-copy-13-columns", 2, 3, 5, 13, 6, 3, 3, padding=1),
    Case("direct-copy-6-columns", 2, 3, 5, 6, 6, 3, 3, padding=1),
    Case("direct-split-21-columns", 2, 3, 7, 21, 6, 3, 3, stride=2, padding=1),
    # Padding past the kernel (rows and columns of zeros only at both ends), at strides 1-3.
    Case("direct-copy-padding-3", 2, 3, 6, 12, 6, 3, 3, padding=3),
    Case("direct-split-padding-3", 2, 3, 7, 19, 6, 3, 3, stride=2, padding=3),
    Case("direct-stride-3-padding-2", 2, 3, 9, 40, 6, 3, 3, stride=3, padding=2),
    # The direct path's layout by kernel columns (rows of one vector, stride 1 down the rows, at
    # least 128 output channels, the AVX-512 float tile): 8 x 8 (17 blocks of 8 channels, 4 and
    # 2 past them), an odd row count (the last tile's second row outside), rows of 6, stride 2
    # along the rows only, dilation 2, and a 5 x 5 kernel without padding.
    Case("direct-columns-8x8", 2, 3, 8, 8, 142, 3, 3, padding=1),
    Case("direct-columns-7x6", 2, 2, 7, 6, 128, 3, 3, padding=1),
    Case("direct-columns-stride-1-by-2", 1, 2, 6, 16, 128, 3, 3, stride=(1, 2), padding=1),
    Case("direct-columns-dilation-2", 1, 2, 8, 8, 128, 3, 3, padding=2, dilation=2),
    Case("direct-columns-5x5", 1, 2, 12, 12, 128, 5, 5),
    # The batch path's copy split into column phases: stride 2 on 14 columns (a transposed block
    # and a tail per phase), stride 3 with dilation 2 and unequal padding, stride 2 on rows only,
    # strides beyond the kernel (1x1 at stride 2, 2x2 at stride 3), and one output column with a
    # stride larger than the columns read (fewer phases than the stride).
    Case("batch-stride-2", 8, 3, 14, 14, 13, 3, 3, stride=2, padding=1),
    Case("batch-stride-3-dilation-2", 8, 2, 19, 23, 6, 3, 3, stride=3, padding=(2, 1), dilation=2),
    Case("batch-stride-2-by-1", 8, 2, 15, 13, 5, 3, 3, stride=(2, 1), padding=1),
    Case("batch-1x1-stride-2", 8, 4, 13, 13, 6, 1, 1, stride=2),
    Case("batch-2x2-stride-3", 8, 3, 20, 20, 5, 2, 2, stride=3, padding=1),
    Case("batch-one-column-stride-5", 8, 2, 6, 3, 4, 3, 2, stride=(1, 5)),
]


@pytest.mark.parametrize("cpu_isa", cpu_isas, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", TAP_ORDER_SHAPES, ids=repr)
def test_forward_sums_taps_in_order_bitwise(shape, dtype, cpu_isa):
    x, w, b, kw = make(shape, dtype=dtype)
    kw = dict(kw, stride=shape.stride, padding=shape.padding, dilation=shape.dilation)
    assert torch.equal(
        addernet_cuda.adder2d(x, w, b, **kw), forward_in_tap_order(x, w, b, kw, shape.oh, shape.ow)
    )


def cpu_forward_geometry(case, dtype):
    """The arguments of _C.adder2d_cpu_forward_path and _C.adder2d_cpu_forward_interleaves_weights
    for a case."""
    return (
        (case.n, case.c, case.h, case.w),
        (case.co, case.c // case.groups, case.kh, case.kw),
        case.stride,
        case.padding,
        case.dilation,
        case.groups,
        dtype == torch.float64,
    )


def forward_path(case, dtype):
    return _extension._C.adder2d_cpu_forward_path(*cpu_forward_geometry(case, dtype))


@pytest.mark.parametrize("cpu_isa", cpu_isas, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tap_order_shapes_take_the_layout_by_kernel_columns(dtype, cpu_isa):
    # test_forward_sums_taps_in_order_bitwise holds the layout by kernel columns to the same bits
    # only if its "direct-columns" shapes take it: the float32 forward at avx512 (one copy per
    # kernel column), no other shape and no other level or dtype.
    copies = {
        case.name: _extension._C.adder2d_cpu_forward_column_copies(
            *cpu_forward_geometry(case, dtype)
        )
        for case in TAP_ORDER_SHAPES
    }
    takes = dtype == torch.float32 and cpu_isa == "avx512"
    for name, n in copies.items():
        if name.startswith("direct-columns") and takes:
            assert n == (5 if name.endswith("5x5") else 3), (name, n)
        else:
            assert n == 0, (name, n)


@pytest.mark.parametrize("cpu_isa", cpu_isas, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tap_order_shapes_take_every_forward_path(dtype, cpu_isa):
    # test_forward_sums_taps_in_order_bitwise holds the three paths to the same bits only if its
    # shapes go through all three; the batch cases take the batch path in both dtypes.
    paths = {case.name: forward_path(case, dtype) for case in TAP_ORDER_SHAPES}
    assert set(paths.values()) == {"batch", "direct", "packed"}
    assert all(p == "batch" for name, p in paths.items() if name.startswith("batch-")), paths
    assert paths["3x3"] == "direct" and paths["single-pixel"] == "packed"
    assert all(p == "direct" for name, p in paths.items() if name.startswith("direct-")), paths


@pytest.mark.parametrize("cpu_isa", cpu_isas, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_negative_zero_bias_kept_on_every_path(dtype, cpu_isa):
    # bias - sum |x - w| with every term 0 is -0.0 for a -0.0 bias, as in a scalar loop: bit for
    # bit on all three paths, whole vectors and tails (-0.0 == 0.0, so compare the bits).
    cases = [
        Case("direct", 1, 1, 8, 8, 13, 3, 3, padding=1),
        Case("batch", 8, 1, 7, 7, 13, 3, 3, padding=1),
        Case("packed", 1, 1, 1, 1, 2, 1, 1),
    ]
    assert [forward_path(c, dtype) for c in cases] == ["direct", "batch", "packed"]
    bits = torch.int32 if dtype == torch.float32 else torch.int64
    for c in cases:
        x = torch.zeros(c.n, c.c, c.h, c.w, dtype=dtype)
        w = torch.zeros(c.co, c.c, c.kh, c.kw, dtype=dtype)
        b = torch.full((c.co,), -0.0, dtype=dtype)
        y = addernet_cuda.adder2d(x, w, b, stride=c.stride, padding=c.padding)
        assert torch.equal(y.view(bits), torch.full_like(y, -0.0).view(bits)), c.name


@pytest.mark.parametrize("cpu_isa", cpu_isas, indirect=True)
def test_forward_micro_tile_of_each_instruction_set(cpu_isa):
    # (output channels, pixels, bytes per register): at avx512 the float32 forward runs on
    # 64-byte registers, 8 channels x 16 pixels (float64 keeps the AVX2 tile).
    tile = _extension._C.adder2d_cpu_forward_tile
    register_bytes = {"base": 16, "avx2": 32, "avx512": 32}[cpu_isa]
    if cpu_isa == "avx512":
        assert tile(False) == (8, 16, 64)
    else:
        assert tile(False) == (4, 16, register_bytes)
    assert tile(True) == (2, 16, register_bytes)


@pytest.mark.parametrize(
    "args",
    [
        ((1, 3, 2, 2), (4, 3, 3, 3), (1, 1), (0, 0), (1, 1), 1),  # no output pixel
        ((8, 0, 7, 7), (4, 0, 3, 3), (1, 1), (1, 1), (1, 1), 1),  # no input channel
        ((8, 4, 7, 7), (4, 2, 3, 3), (1, 1), (1, 1), (1, 1), 1),  # C != C/groups * groups
        ((8, 1, 7, 7), (4, 1, 3, 2**62), (1, 1), (1, 1), (1, 1), 1),  # KH * KW overflows
    ],
)
def test_forward_path_rejects_invalid_geometry(args):
    with pytest.raises(ValueError, match="adder2d_cpu_forward_path: not a valid"):
        _extension._C.adder2d_cpu_forward_path(*args, False)


def test_batch_path_not_taken_for_a_copy_much_larger_than_the_input():
    # 3 x 3 images with padding 500: the batch path would prepare 1001 x 1001 pixels per image
    # group for 9 input pixels; the packed path takes it (the same bits either way).
    case = Case("huge-padding", 8, 1, 3, 3, 1, 1, 1, stride=500, padding=500)
    assert forward_path(case, torch.float32) == "packed"
    x, w, b, kw = make(case, dtype=torch.float32)
    assert torch.equal(
        addernet_cuda.adder2d(x, w, b, **kw), forward_in_tap_order(x, w, b, kw, case.oh, case.ow)
    )


def on_thread_counts(counts, fn):
    """[fn() on n threads for n in counts]; the thread count is restored afterwards."""
    threads = torch.get_num_threads()
    try:
        results = []
        for n in counts:
            torch.set_num_threads(n)
            results.append(fn())
        return results
    finally:
        torch.set_num_threads(threads)


def check_forward_on_thread_counts(cases, dtype, path, thread_counts):
    """Each case takes `path` and, on every thread count, sums each output's taps in order."""
    for case in cases:
        assert forward_path(case, dtype) == path, case.name
        x, w, b, kw = make(case, dtype=dtype)
        kw = dict(kw, stride=case.stride, padding=case.padding, dilation=case.dilation)
        want = forward_in_tap_order(x, w, b, kw, case.oh, case.ow)
        got = on_thread_counts(thread_counts, lambda: addernet_cuda.adder2d(x, w, b, **kw))
        for n, y in zip(thread_counts, got):
            assert torch.equal(y, want), (case.name, n)


@pytest.mark.parametrize("cpu_isa", cpu_isas, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_direct_path_image_by_image_and_by_chunks(dtype, cpu_isa):
    # The direct path goes image by image (each thread copying its own images) with at least 4
    # images per thread (the threads claiming images from a shared counter, the last ones by a
    # few tiles of one group at a time), else by chunks of images copied first: 9 images on 1
    # and 2 threads take the first, on 8 threads the second; both must sum each output's taps in
    # order. The "tail-by-tiles" cases have tiles of 64 channels x 288 taps, which the last
    # images give out one at a time (8 tiles an image); "tail-by-2-tiles" (16 channels x 144
    # taps) two at a time, the last claim of an image one tile (9 tiles an image).
    cases = [
        Case("direct-9-images", 9, 3, 9, 16, 13, 3, 3, padding=1),
        Case("direct-9-images-stride-2", 9, 2, 17, 33, 6, 3, 3, stride=2, padding=1),
        Case("direct-9-images-2-groups", 9, 4, 9, 16, 6, 3, 3, padding=1, groups=2),
        Case("direct-9-images-tail-by-tiles", 9, 32, 8, 16, 64, 3, 3, padding=1),
        Case(
            "direct-9-images-tail-by-tiles-2-groups", 9, 64, 8, 16, 128, 3, 3, padding=1, groups=2
        ),
        Case("direct-9-images-tail-by-2-tiles", 9, 16, 9, 16, 16, 3, 3, padding=1),
    ]
    check_forward_on_thread_counts(cases, dtype, "direct", (1, 2, 8))


@pytest.mark.parametrize("cpu_isa", cpu_isas, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_batch_path_split_by_output_channels(dtype, cpu_isa):
    # With fewer than 16 tiles per thread (a 7x7 output has 25 two-pixel tiles per image group)
    # the batch path also splits each group's output channels among the threads, at multiples
    # of the micro-tile's rows, and on several threads the last claims (one per thread) go by 4
    # shares of their channels (some of them empty where a part has fewer than 4 micro-tiles'
    # channels); every split must sum each output's taps in order.
    cases = [
        Case("batch-7x7-44-channels", 8, 5, 7, 7, 44, 3, 3, padding=1),
        Case("batch-7x7-stride-2", 8, 4, 13, 13, 36, 3, 3, stride=2, padding=1),
        Case("batch-7x7-2-groups", 8, 6, 7, 7, 40, 3, 3, padding=1, groups=2),
    ]
    check_forward_on_thread_counts(cases, dtype, "batch", (1, 2, 3, 4))


@pytest.mark.parametrize("cpu_isa", cpu_isas, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_few_channels_per_group_sum_taps_in_order(dtype, cpu_isa):
    # The channels past the last whole micro-tile go one by one through a wide tile of as many
    # tiles as the micro-tile has channels (float32 4, or 8 at the avx512 level; float64 2), the
    # last tiles of a call one at a time; work items of the direct path hold up to 64 tiles where
    # a tile has few terms (depthwise: 9 taps x 1 channel). Depthwise layers on both paths (whole
    # and partial vectors, tile counts that are and are not multiples of the wide tile's, stride
    # 2), 3 channels per group over 270 taps (a whole block and a short one: the wide tile's sums
    # reloaded), and 6 channels per group (in float32 a whole micro-tile, then 2 wide): each
    # output's taps in order, on 1, 2 and 8 threads.
    direct = [
        Case("direct-depthwise-16x16", 4, 6, 16, 16, 6, 3, 3, padding=1, groups=6),
        Case("direct-depthwise-13x13", 3, 5, 13, 13, 5, 3, 3, padding=1, groups=5),
        Case("direct-depthwise-stride-2", 3, 4, 33, 33, 4, 3, 3, stride=2, padding=1, groups=4),
        Case("direct-3-per-group-270-taps", 4, 60, 9, 16, 6, 3, 3, padding=1, groups=2),
        Case("direct-6-per-group", 4, 8, 16, 16, 12, 3, 3, padding=1, groups=2),
    ]
    batch = [
        Case("batch-depthwise-7x7", 8, 6, 7, 7, 6, 3, 3, padding=1, groups=6),
        Case("batch-6-per-group-7x7", 8, 4, 7, 7, 12, 3, 3, padding=1, groups=2),
    ]
    check_forward_on_thread_counts(direct, dtype, "direct", (1, 2, 8))
    check_forward_on_thread_counts(batch, dtype, "batch", (1, 2, 8))


def interleaves_weights(case, dtype):
    return _extension._C.adder2d_cpu_forward_interleaves_weights(*cpu_forward_geometry(case, dtype))


@pytest.mark.parametrize("cpu_isa", cpu_isas, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_interleaved_weights_sum_taps_in_order(dtype, cpu_isa):
    # The direct and batch paths interleave the weights (a micro-tile's channels tap by tap, by
    # blocks of 256 taps) when each weight serves at least 1024 images x output pixels, at every
    # instruction-set level (the AVX-512 float tile: 8 channels, then a 4-channel tile reading
    # its rows of the block). Both layouts, with channels past the last whole micro-tile (13, 5
    # per group, 45: 8 + 4 + 1 at the AVX-512 level), groups, 288 taps (a whole block and a
    # short one, with float32's panel of pixels on both paths), and on 8 threads the batch path's
    # split by output channels (98 tiles), must sum each output's taps in order. At 576 taps the
    # weights are interleaved by items of 28 channels (45 per group: 28 + 17, the last with a
    # channel past the micro-tiles; 24 + 21 for the AVX-512 float tile), claimed by the threads
    # with the first planes' copies (batch path, direct path by chunks of images on 8 threads) or
    # before the images (direct path, image by image on 1 and 2 threads).
    interleaved = [
        Case("direct-16-images", 16, 5, 8, 16, 13, 3, 3, padding=1),
        Case("direct-2-groups", 8, 6, 16, 16, 10, 3, 3, padding=1, groups=2),
        Case("direct-288-taps-2-groups", 8, 64, 8, 16, 10, 3, 3, padding=1, groups=2),
        Case("batch-14x14", 8, 5, 14, 14, 45, 3, 3, padding=1),
        Case("batch-14x14-288-taps", 8, 32, 14, 14, 45, 3, 3, padding=1),
        Case("direct-8-images", 8, 5, 8, 16, 13, 3, 3, padding=1),  # 1024 uses, the least
        # float32's panel of pixels (12+ channels, 24+ at avx512) past one block of 256 taps
        Case("direct-288-taps-32-channels-8-images", 8, 32, 8, 16, 32, 3, 3, padding=1),
        Case("direct-576-taps-2-groups", 16, 128, 8, 16, 90, 3, 3, padding=1, groups=2),
        Case("batch-14x14-576-taps", 8, 64, 14, 14, 45, 3, 3, padding=1),
        # on 8 threads split by output channels (98 tiles), at avx512 float32 in parts of 24+
        # channels: the panel, 8-channel tiles, then the 4-channel tile and one more channel
        Case("batch-14x14-205-channels", 8, 5, 14, 14, 205, 3, 3, padding=1),
        # the layout by kernel columns (float32 at avx512)
        Case("direct-columns-8x8-16-images", 16, 3, 8, 8, 142, 3, 3, padding=1),
    ]
    as_they_are = [
        Case("direct-1-image", 1, 5, 8, 16, 13, 3, 3, padding=1),
        Case("batch-5x5", 8, 5, 5, 5, 45, 3, 3, padding=1),
        Case("direct-288-taps-16-channels", 1, 32, 8, 16, 16, 3, 3, padding=1),
        Case("batch-7x7", 8, 5, 7, 7, 45, 3, 3, padding=1),  # 392 uses, ResNet-18's last layers
        Case("direct-4-images", 4, 5, 8, 16, 13, 3, 3, padding=1),  # 512 uses
    ]
    for case in interleaved:
        assert interleaves_weights(case, dtype), case.name
    takes_columns = dtype == torch.float32 and cpu_isa == "avx512"
    columns = _extension._C.adder2d_cpu_forward_column_copies(
        *cpu_forward_geometry(interleaved[-1], dtype)
    )
    assert columns == (3 if takes_columns else 0)
    assert not any(interleaves_weights(case, dtype) for case in as_they_are)
    for path in ("direct", "batch"):
        cases = [c for c in interleaved + as_they_are if c.name.startswith(path)]
        check_forward_on_thread_counts(cases, dtype, path, (1, 2, 8))


def test_forward_batch_path_by_chunks_of_image_groups():
    # Groups of 4 float64 images, 9 MB of prepared input each: the batch path prepares three
    # groups per chunk (at most 32 MiB), so the 5 groups (the last one of 4 images too) go in
    # two chunks; a 1x1 kernel makes every output a single term, exact.
    x = torch.randn(20, 1, 40000, 7, dtype=torch.float64)
    w = torch.randn(2, 1, 1, 1, dtype=torch.float64)
    assert forward_path(Case("chunks", 20, 1, 40000, 7, 2, 1, 1), torch.float64) == "batch"
    y = addernet_cuda.adder2d(x, w)
    assert torch.equal(y, -(x - w.view(1, 2, 1, 1)).abs())


def test_forward_by_chunks_of_images():
    # 18 MB of float64 input per image: the CPU forward prepares more than one chunk of images
    # (at most 32 MiB each); a 1x1 kernel makes every output a single term, exact
    x = torch.randn(3, 1, 1500, 1500, dtype=torch.float64)
    w = torch.randn(2, 1, 1, 1, dtype=torch.float64)
    y = addernet_cuda.adder2d(x, w)
    assert torch.equal(y, -(x - w.view(1, 2, 1, 1)).abs())


def test_padded_taps_count():
    # A 1x1 input with padding 1 and a 3x3 kernel: 8 of the 9 taps read padding (value 0).
    x = torch.tensor([[[[2.0]]]], dtype=torch.float64)
    w = torch.arange(9, dtype=torch.float64).view(1, 1, 3, 3) - 4
    y = addernet_cuda.adder2d(x, w, padding=1)
    expected = -(w.abs().sum() - w[0, 0, 1, 1].abs() + (2.0 - w[0, 0, 1, 1]).abs())
    assert y.item() == pytest.approx(expected.item())


@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[5], SHAPES[7], SHAPES[11]], ids=repr)
def test_gradcheck_exact_mode_input_and_bias(shape):
    x, w, b, kw = make(shape, seed=3)
    x.requires_grad_()
    b.requires_grad_()
    # Random normal data keeps every |x - w| far from the kink at 0 relative to eps = 1e-6.
    fn = lambda x, b: addernet_cuda.adder2d(x, w, b, input_grad="exact", **kw)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, b), eps=1e-6, atol=1e-7)


def test_hardtanh_rule_differs_from_exact_and_matches_formula():
    # One input pixel, one tap: dX = dY * clamp(W - X, -1, 1), dW = dY * (X - W).
    x = torch.tensor([[[[0.25]]]], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([[[[3.0]]]], dtype=torch.float64, requires_grad=True)
    addernet_cuda.adder2d(x, w).backward(torch.full((1, 1, 1, 1), 2.0, dtype=torch.float64))
    assert x.grad.item() == pytest.approx(2.0 * 1.0)
    assert w.grad.item() == pytest.approx(2.0 * (0.25 - 3.0))
    x.grad = None
    w2 = torch.tensor([[[[0.75]]]], dtype=torch.float64)
    addernet_cuda.adder2d(x, w2, input_grad="hardtanh").backward(
        torch.ones(1, 1, 1, 1, dtype=torch.float64)
    )
    assert x.grad.item() == pytest.approx(0.5)
    x.grad = None
    addernet_cuda.adder2d(x, w2, input_grad="exact").backward(
        torch.ones(1, 1, 1, 1, dtype=torch.float64)
    )
    assert x.grad.item() == pytest.approx(1.0)


def test_weight_grad_is_deterministic_and_thread_count_independent():
    x, w, b, kw = make(SHAPES[1], dtype=torch.float32)
    dy = torch.randn(reference.adder2d(x, w, b, **kw).shape)
    results = on_thread_counts(
        (1, 2, 1), lambda: addernet_cuda.ops.adder2d_weight_grad(dy, x, w, **kw)
    )
    assert all(torch.equal(results[0], r) for r in results[1:])


@pytest.mark.parametrize("stride", [1, 2])
def test_input_grad_same_bits_on_any_thread_count(stride):
    # The input gradient's threads claim work from a shared counter: whole images and groups
    # with at least 4 per thread (9 images x 2 groups on 1-4 threads), else single items (2
    # images on 1-4 threads), each reusing its scratch's copy of dY only for the same image and
    # group. Every thread count gives the same bits, and they match the float64 reference.
    g = torch.Generator().manual_seed(6)
    for n_images in (9, 2):
        x = torch.randn(n_images, 14, 9, 9, generator=g, dtype=torch.float64)
        w = torch.randn(10, 7, 3, 3, generator=g, dtype=torch.float64) * 0.7
        kw = dict(stride=stride, padding=1, groups=2)
        dy = torch.randn(reference.adder2d(x, w, **kw).shape, generator=g, dtype=torch.float64)
        results = on_thread_counts(
            (1, 2, 3, 4), lambda: addernet_cuda.ops.adder2d_input_grad(dy, x, w, **kw)
        )
        assert all(torch.equal(results[0], r) for r in results[1:]), n_images
        xr = x.clone().requires_grad_()
        reference.adder2d(xr, w, **kw).backward(dy)
        torch.testing.assert_close(results[0], xr.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("groups", [1, 2, 3])
def test_input_grad_weights_rearranged_by_blocks_of_channels(groups):
    # The CPU input gradient copies W into [group][tap][ci][co] by blocks of 16 output channels of
    # a group: 21 channels per group (a block and 5 past it), 2 or 3 groups (the blocks of one
    # group must not spill into the next's), and 1 group of 63. Against the float64 reference.
    g = torch.Generator().manual_seed(8)
    cog = 63 if groups == 1 else 21
    x = torch.randn(2, 3 * groups, 6, 7, generator=g)
    w = torch.randn(cog * groups, 3, 3, 3, generator=g) * 0.7
    kw = dict(padding=1, groups=groups)
    dy = torch.randn(reference.adder2d(x, w, **kw).shape, generator=g)
    got = addernet_cuda.ops.adder2d_input_grad(dy, x, w, **kw)
    xr = x.double().requires_grad_()
    reference.adder2d(xr, w.double(), **kw).backward(dy.double())
    torch.testing.assert_close(got.double(), xr.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cpu_isa", cpu_isas, indirect=True)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("mode", ["hardtanh", "exact"])
def test_input_grad_planes_are_independent(stride, mode, cpu_isa):
    # The CPU kernel computes several input planes per call (sharing each dY load); each plane's
    # sum must still be its own, in its own order: bitwise equal to the plane computed alone,
    # for any thread count. 7 channels: blocks of 4, 2 and 1 planes; 11-wide rows: widened.
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 7, 11, 11, generator=g)
    w = torch.randn(12, 7, 3, 3, generator=g) * 0.7
    kw = dict(stride=stride, padding=1)
    dy = torch.randn(reference.adder2d(x, w, **kw).shape, generator=g)
    whole = on_thread_counts(
        (1, 2), lambda: addernet_cuda.ops.adder2d_input_grad(dy, x, w, **kw, mode=mode)
    )
    assert torch.equal(whole[0], whole[1])
    for c in range(7):
        alone = addernet_cuda.ops.adder2d_input_grad(
            dy, x[:, c : c + 1], w[:, c : c + 1], **kw, mode=mode
        )
        assert torch.equal(whole[0][:, c : c + 1], alone), f"plane {c}"


@pytest.mark.parametrize("cpu_isa", cpu_isas, indirect=True)
@pytest.mark.parametrize("mode", ["hardtanh", "exact"])
def test_input_grad_strided_by_phases_and_by_channels(mode, cpu_isa):
    # At stride > 1 the CPU runs the stride-1 kernels on each phase of the input (the pixels
    # h % sh == qh, w % sw == qw) with up to 256 output channels per group, else a kernel
    # vectorised over the output channels. Phases whose pixels no tap reads (stride 4 with a 3x3
    # kernel, stride 3 with a 1x1 one) get 0; uneven phases (odd sizes), a stride on one axis,
    # dilation 2 with stride 3 (one tap per phase), groups; and past the phases' bounds the kernel
    # over output channels: 260 channels over 7 planes (blocks of 4, 2 and 1), and stride 5 with 1
    # channel per group (a scalar sum per pixel and tap). Each matches the float64 reference on 1
    # and 3 threads, bit for bit between them.
    cases = [
        Case("stride-2-odd", 2, 5, 13, 11, 12, 3, 3, stride=2, padding=1),
        Case("stride-4-3x3", 1, 3, 17, 18, 9, 3, 3, stride=4, padding=1),
        Case("stride-3-1x1", 2, 4, 10, 11, 16, 1, 1, stride=3),
        Case("stride-2-by-1", 2, 3, 9, 20, 10, 3, 3, stride=(2, 1), padding=1),
        Case("stride-3-dilation-2", 1, 4, 16, 16, 8, 3, 3, stride=3, padding=2, dilation=2),
        Case("stride-2-groups", 2, 8, 12, 12, 12, 3, 3, stride=2, padding=1, groups=2),
        Case("stride-2-260-channels", 1, 7, 7, 7, 260, 3, 3, stride=2, padding=1),
        Case("stride-5-depthwise", 2, 4, 16, 16, 4, 3, 3, stride=5, padding=1, groups=4),
    ]
    g = torch.Generator().manual_seed(11)
    for case in cases:
        x = torch.randn(case.n, case.c, case.h, case.w, generator=g)
        w = torch.randn(case.co, case.c // case.groups, case.kh, case.kw, generator=g) * 0.7
        kw = dict(
            stride=case.stride, padding=case.padding, dilation=case.dilation, groups=case.groups
        )
        dy = torch.randn(case.n, case.co, case.oh, case.ow, generator=g)
        got = on_thread_counts(
            (1, 3), lambda: addernet_cuda.ops.adder2d_input_grad(dy, x, w, **kw, mode=mode)
        )
        assert torch.equal(got[0], got[1]), case.name
        xr = x.double().requires_grad_()
        reference.adder2d(xr, w.double(), **kw, input_grad=mode).backward(dy.double())
        torch.testing.assert_close(got[0].double(), xr.grad, rtol=1e-4, atol=1e-4, msg=case.name)


@pytest.mark.parametrize("cpu_isa", cpu_isas, indirect=True)
@pytest.mark.parametrize("mode", ["hardtanh", "exact"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_input_grad_few_channels_per_group(dtype, mode, cpu_isa):
    # At stride 1 with at most 4 output channels per group the kernel sums every tap of a few
    # vectors in registers (input_grad_row_all_taps) instead of adding tap by tap into the
    # gradient: depthwise on whole and widened rows, rows of 5 vectors (4 at once, then 1), a
    # 5 x 5 kernel without padding (taps whose output row is outside are skipped), dilation 2,
    # 3 input planes per group; and at stride > 1 with few channels (by phases, as at stride 1).
    # Each plane's sums are its own,
    # on any thread count, match the float64 reference, and at stride 1 are bitwise the
    # tap-by-tap loop's.
    cases = [
        Case("depthwise-16x16", 3, 6, 16, 16, 6, 3, 3, padding=1, groups=6),
        Case("depthwise-11x11", 2, 4, 11, 11, 4, 3, 3, padding=1, groups=4),
        Case("2-per-group-rows-of-40", 2, 4, 6, 40, 8, 3, 3, padding=1, groups=4),
        Case("4-per-group-5x5", 2, 6, 12, 16, 8, 5, 5, groups=2),
        Case("1-per-group-dilated", 2, 3, 13, 16, 3, 3, 3, padding=2, dilation=2, groups=3),
        Case("3-planes-2-per-group", 2, 6, 9, 24, 4, 3, 3, padding=1, groups=2),
        # Stride > 1 with few channels: each phase as at stride 1.
        Case("depthwise-stride-2", 2, 4, 15, 16, 4, 3, 3, stride=2, padding=1, groups=4),
        Case("3-per-group-stride-2-by-1", 2, 4, 9, 13, 6, 3, 3, stride=(2, 1), padding=1, groups=2),
    ]
    g = torch.Generator().manual_seed(7)
    for case in cases:
        x = torch.randn(case.n, case.c, case.h, case.w, generator=g, dtype=dtype)
        w = torch.randn(case.co, case.c // case.groups, case.kh, case.kw, generator=g, dtype=dtype)
        kw = dict(
            stride=case.stride, padding=case.padding, dilation=case.dilation, groups=case.groups
        )
        dy = torch.randn(case.n, case.co, case.oh, case.ow, generator=g, dtype=dtype)
        got = on_thread_counts(
            (1, 2), lambda: addernet_cuda.ops.adder2d_input_grad(dy, x, w, **kw, mode=mode)
        )
        assert torch.equal(got[0], got[1]), case.name
        xr = x.double().requires_grad_()
        reference.adder2d(xr, w.double(), **kw, input_grad=mode).backward(dy.double())
        tol = 1e-10 if dtype == torch.float64 else 1e-4
        torch.testing.assert_close(got[0].double(), xr.grad, rtol=tol, atol=tol, msg=case.name)
        cig, cog = case.c // case.groups, case.co // case.groups
        # The same layer with output channels added to each group up to 5, their dY zero, takes
        # the tap-by-tap loop: the added terms, last of each tap, are 0 * HT(...) = +-0 and leave
        # every sum as it is (the sums start at +0), so the bits must be equal.
        extra = 5 - cog if case.stride == (1, 1) else 0
        wg = w.view(case.groups, cog, *w.shape[1:])
        dyg = dy.view(case.n, case.groups, cog, case.oh, case.ow)
        w5 = torch.cat([wg, wg[:, :1].expand(-1, extra, -1, -1, -1)], 1).flatten(0, 1)
        dy5 = torch.cat([dyg, torch.zeros_like(dyg[:, :, :1]).expand(-1, -1, extra, -1, -1)], 2)
        if extra:
            tap_by_tap = addernet_cuda.ops.adder2d_input_grad(
                dy5.flatten(1, 2), x, w5.contiguous(), **kw, mode=mode
            )
            assert torch.equal(got[0], tap_by_tap), case.name
        if cig > 1:  # each plane alone: the same bits
            for c in range(case.c):
                gi, ci = divmod(c, cig)
                alone = addernet_cuda.ops.adder2d_input_grad(
                    dy[:, gi * cog : (gi + 1) * cog],
                    x[:, c : c + 1],
                    w[gi * cog : (gi + 1) * cog, ci : ci + 1],
                    stride=case.stride,
                    padding=case.padding,
                    dilation=case.dilation,
                    mode=mode,
                )
                assert torch.equal(got[0][:, c : c + 1], alone), (case.name, c)


# Stride 1: rows of 8 pixels (a 64-byte vector's halves from two rows), 16 and 32 (one row), 56
# (7 vectors a row: pairs across rows and a last odd slot), 11 (widened to 16); 7 input channels:
# blocks of 4, 2 and 1 planes; 5 to 70 output channels.
INPUT_GRAD_ISA_CASES = [
    Case("rows-of-8", 2, 7, 8, 8, 70, 3, 3, padding=1),
    Case("rows-of-16", 2, 7, 16, 16, 9, 3, 3, padding=1),
    Case("rows-of-32", 1, 7, 6, 32, 5, 3, 3, padding=1),
    Case("rows-of-56", 1, 3, 9, 56, 6, 3, 3, padding=1),
    Case("rows-of-11", 2, 7, 11, 11, 12, 3, 3, padding=1),
    Case("rows-of-8-dilated", 1, 5, 8, 8, 8, 3, 3, padding=2, dilation=2),
    # Strided: by phases (the stride-1 kernels of each set on each phase of the input), and with
    # 260 output channels over 7 planes the kernel over output channels (chunks of 8 and a tail,
    # blocks of 4, 2 and 1 planes).
    Case("stride2-70-channels", 2, 7, 16, 16, 70, 3, 3, stride=2, padding=1),
    Case("stride2-9-channels", 1, 3, 15, 15, 9, 3, 3, stride=2, padding=1),
    Case("stride3-16-channels", 1, 5, 25, 25, 16, 3, 3, stride=3, padding=1),
    Case("stride2-260-channels", 1, 7, 9, 9, 260, 3, 3, stride=2, padding=1),
]


@pytest.mark.skipif(
    addernet_cuda.build_info()["cpu_isa"] != "avx512",
    reason="AVX-512 kernels not compiled in or the CPU lacks AVX-512 F/BW/VL/DQ/VNNI",
)
@pytest.mark.parametrize("case", INPUT_GRAD_ISA_CASES, ids=repr)
@pytest.mark.parametrize("mode", ["hardtanh", "exact"])
def test_input_grad_avx512_bitwise_equal_to_avx2(case, mode):
    # The AVX-512 input gradient computes each lane as the AVX2 kernels do, in the same order:
    # the same bits, a NaN input included (one input pixel is NaN, dY finite; clamp ties at
    # exactly +-1 and 0, W - X = -0, and W - X = -inf and +inf through infinite inputs: the
    # AVX-512 clamp is one vrangeps, the AVX2 one a max and a min). It runs the 64-byte loop at
    # avx512 (the register bytes say so).
    x, w, _ = case.tensors(torch.float32, seed=3)
    x[0, 0, 1, 2] = float("nan")
    x[0, 0, 2, 3] = float("inf")
    x.view(-1)[10] = -float("inf")
    x.view(-1)[9] = 0.0
    w.view(-1)[:4] = x.view(-1)[5:9] + torch.tensor([1.0, -1.0, 0.0, 0.5])
    w.view(-1)[4] = -0.0  # W - X = -0 - 0 = -0 where tap 4 meets x.view(-1)[9]
    dy = torch.randn(case.n, case.co, case.oh, case.ow, generator=torch.Generator().manual_seed(4))
    # Then an infinite weight (inf - inf is NaN where it meets the infinite input) and a NaN one,
    # in input channel 0 and in the last one (another plane of the kernel's blocks of planes).
    w_inf, w_nan = w.clone(), w.clone()
    w_inf.view(-1)[5] = float("inf")
    w_inf[0, -1, 1, 1] = float("inf")
    w_nan.view(-1)[6] = float("nan")
    w_nan[-1, -1, 0, 0] = float("nan")
    previous = _extension._C.cpu_isa()
    try:
        out, register_bytes = {}, {}
        for isa in ("avx2", "avx512"):
            _extension._C.set_cpu_isa(isa)
            register_bytes[isa] = _extension._C.adder2d_cpu_input_grad_register_bytes(False)
            out[isa] = [
                addernet_cuda.ops.adder2d_input_grad(dy, x, weight, **case.kwargs, mode=mode)
                for weight in (w, w_inf, w_nan)
            ]
    finally:
        _extension._C.set_cpu_isa(previous)
    assert register_bytes == {"avx2": 32, "avx512": 64}
    for a, b in zip(out["avx2"], out["avx512"]):
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))
    if mode == "hardtanh":  # clamp(NaN) is NaN (sign(NaN) is 0); no NaN input in that channel
        assert not x[:, -1].isnan().any() and out["avx512"][2][:, -1].isnan().any()


@pytest.mark.skipif(
    addernet_cuda.build_info()["cpu_isa"] != "avx512",
    reason="AVX-512 kernels not compiled in or the CPU lacks AVX-512 F/BW/VL/DQ/VNNI",
)
@pytest.mark.parametrize("mode", ["hardtanh", "exact"])
def test_input_grad_avx512_special_values_bitwise_equal_to_avx2(mode):
    # A 1x1 kernel, so that every input pixel meets every weight: W - X at +-0, +-1, denormals,
    # +-inf and beyond +-1, through the AVX-512 loop's one-instruction clamp (vrangeps) and sign
    # (vfixupimmps), each against the AVX2 kernel's max and min or comparisons. Without NaN (the
    # clamp by vrangeps), then with a NaN input and a NaN weight (the max and min).
    tiny = 1e-40  # a denormal float32
    specials = [0.0, -0.0, tiny, -tiny, 1.0, -1.0, 0.5, -2.0, 3.0, float("inf"), -float("inf")]
    x = torch.tensor(specials + [0.25, -0.75, 1.5, -1.0, 2.0] * 1, dtype=torch.float32)
    x = torch.stack([x, x.flip(0)]).view(1, 1, 2, 16)
    w = torch.tensor([0.0, -0.0, tiny, 1.0, -1.0, 2.0, -0.5, 1e30], dtype=torch.float32)
    w = w.view(8, 1, 1, 1)
    dy = torch.randn(1, 8, 2, 16, generator=torch.Generator().manual_seed(12))
    x_nan, w_nan = x.clone(), w.clone()
    x_nan[0, 0, 1, 3] = float("nan")
    w_nan[5] = float("nan")
    previous = _extension._C.cpu_isa()
    try:
        out = {}
        for isa in ("avx2", "avx512"):
            _extension._C.set_cpu_isa(isa)
            out[isa] = [
                addernet_cuda.ops.adder2d_input_grad(dy, xi, wi, mode=mode)
                for xi, wi in ((x, w), (x_nan, w), (x, w_nan))
            ]
    finally:
        _extension._C.set_cpu_isa(previous)
    for a, b in zip(out["avx2"], out["avx512"]):
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))
    expected = {"hardtanh": (w.double().view(1, 8, 1, 1) - x.double()).clamp(-1, 1), "exact": None}[
        mode
    ]
    if expected is not None:  # the finite inputs against a float64 sum
        got = out["avx512"][0]
        want = (dy.double() * expected).sum(1, keepdim=True)
        finite = x.isfinite()
        torch.testing.assert_close(got.double()[finite], want[finite], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced"])
def test_noncontiguous_inputs(layout):
    x, w, b, kw = make(SHAPES[1])
    if layout == "channels_last":
        xs, ws = x.to(memory_format=torch.channels_last), w.to(memory_format=torch.channels_last)
    elif layout == "transposed":
        xs, ws = x.transpose(2, 3).contiguous().transpose(2, 3), w
    else:
        big = torch.zeros(x.shape[0], x.shape[1] * 2, x.shape[2], x.shape[3], dtype=x.dtype)
        big[:, ::2] = x
        xs, ws = big[:, ::2], w
    assert not xs.is_contiguous() or layout == "channels_last"
    dy = torch.randn(reference.adder2d(x, w, b, **kw).shape, dtype=x.dtype)
    got = grads(addernet_cuda.adder2d, xs, ws, b, kw, dy)
    want = grads(addernet_cuda.adder2d, x, w, b, kw, dy)
    for a, r in zip(got, want):
        torch.testing.assert_close(a, r, rtol=0, atol=0)
    noncontig_dy = dy.transpose(2, 3).contiguous().transpose(2, 3)
    torch.testing.assert_close(grads(addernet_cuda.adder2d, x, w, b, kw, noncontig_dy)[1], want[1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_cpu(dtype):
    x, w, b, kw = make(SHAPES[0], dtype=torch.float32)
    xs, ws, bs = x.to(dtype), w.to(dtype), b.to(dtype)
    y = addernet_cuda.adder2d(xs, ws, bs, **kw)
    assert y.dtype == dtype
    want = addernet_cuda.adder2d(xs.float(), ws.float(), bs.float(), **kw)
    torch.testing.assert_close(y.float(), want, rtol=1e-2, atol=0.25)


def test_batch0_backward():
    x, w, b, kw = make(SHAPES[-1])
    _, gx, gw, gb = grads(
        addernet_cuda.adder2d, x, w, b, kw, torch.zeros(0, 4, 5, 5, dtype=torch.float64)
    )
    assert (
        gx.shape == x.shape
        and torch.equal(gw, torch.zeros_like(w))
        and torch.equal(gb, torch.zeros_like(b))
    )


@pytest.mark.parametrize("mode", ["hardtanh", "exact"])
def test_eager_autograd_matches_the_registered_op_bitwise(mode):
    # adder2d runs its autograd as an autograd.Function in eager mode; the raw op keeps the one
    # registered with torch.library. The two share setup_context and backward: the same bits.
    x, w, b, kw = make(SHAPES[1], dtype=torch.float32)
    dy = torch.randn(reference.adder2d(x, w, b, **kw).shape)
    args = (*SHAPES[1].args, mode)
    raw = lambda x, w, b, **_: torch.ops.addernet.adder2d(x, w, b, *args)  # noqa: E731
    eager = grads(lambda *a, **k: addernet_cuda.adder2d(*a, **k, input_grad=mode), x, w, b, kw, dy)
    for name, a, r in zip(
        ("output", "grad_input", "grad_weight", "grad_bias"), eager, grads(raw, x, w, b, kw, dy)
    ):
        assert torch.equal(a, r), name


def test_eager_call_does_not_fill_schema_defaults(monkeypatch):
    # torch's generated autograd for a registered op calls fill_defaults before setup_context on
    # every call with gradients (about 20 us); the eager path must not.
    from torch._library import utils

    calls = []
    fill_defaults = utils.fill_defaults
    monkeypatch.setattr(utils, "fill_defaults", lambda *a: calls.append(1) or fill_defaults(*a))
    x, w, b, kw = make(SHAPES[1], dtype=torch.float32)
    x.requires_grad_()
    y = addernet_cuda.adder2d(x, w, b, **kw)
    y.sum().backward()
    assert calls == [] and type(y.grad_fn).__name__ == "_Adder2dFunctionBackward"
    torch.ops.addernet.adder2d(x, w, b, *SHAPES[1].args, "hardtanh").sum().backward()
    assert calls, "the probe does not see the registered op's autograd"


def test_calls_that_record_no_graph_skip_autograd(monkeypatch):
    # No tensor requiring grad, or grad mode off: the op runs past autograd (no autograd.Function,
    # no grad_fn), the same bits; a tensor requiring grad under grad mode goes through it.
    from addernet_cuda import ops

    applied = []
    apply = ops._Adder2dFunction.apply
    monkeypatch.setattr(ops._Adder2dFunction, "apply", lambda *a: applied.append(1) or apply(*a))
    x, w, b, kw = make(SHAPES[1], dtype=torch.float32)
    expected = torch.ops.addernet.adder2d(x, w, b, *SHAPES[1].args, "hardtanh")
    y = addernet_cuda.adder2d(x, w, b, **kw)
    assert torch.equal(y, expected) and y.grad_fn is None and applied == []
    with torch.no_grad():
        y = addernet_cuda.adder2d(x.requires_grad_(), w, b, **kw)
    assert torch.equal(y, expected) and y.grad_fn is None and applied == []
    y = addernet_cuda.adder2d(x, w, b, **kw)
    assert type(y.grad_fn).__name__ == "_Adder2dFunctionBackward" and applied == [1]


# torch.autograd.forward_ad's import runs the deprecated torch.jit.script (a FutureWarning in
# torch 2.14, DeprecationWarnings for script and script_method in 2.13)
@pytest.mark.filterwarnings("ignore:`torch.jit.script")
def test_forward_mode_ad_raises():
    # No forward-mode derivative is defined: an error naming it, not a silent zero tangent.
    import torch.autograd.forward_ad as fwad

    x, w, b, kw = make(SHAPES[1], dtype=torch.float32)
    with fwad.dual_level():
        with pytest.raises(RuntimeError, match="adder2d: forward-mode AD"):
            addernet_cuda.adder2d(fwad.make_dual(x, torch.ones_like(x)), w, b, **kw)


def test_python_checks_run_only_when_the_op_raises(monkeypatch):
    # The C++ op checks every argument too: a call that succeeds skips the Python checks (a third
    # of a small call's host time), and a bad one still gets their documented error.
    from addernet_cuda import ops

    x, w, b, kw = make(SHAPES[1], dtype=torch.float32)
    expected = addernet_cuda.adder2d(x, w, b, **kw)
    calls = []
    real = ops.check_args
    monkeypatch.setattr(ops, "check_args", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert torch.equal(addernet_cuda.adder2d(x, w, b, **kw), expected)
    assert torch.equal(addernet_cuda.adder2d(x.requires_grad_(), w, b, **kw), expected)
    assert calls == []
    with pytest.raises(ValueError, match="weight.size") as error:
        addernet_cuda.adder2d(x, w[:, :1], b, **kw)
    assert error.value.__suppress_context__ and len(calls) == 1


@pytest.mark.filterwarnings("ignore:`torch.jit.script")
def test_func_jvp_raises():
    # torch.func.jvp through the op's generated autograd returned a zero tangent, silently.
    x, w, b, kw = make(SHAPES[1], dtype=torch.float64)
    layer = addernet_cuda.AdderConv2d(x.shape[1], w.shape[0], 3, **kw).double()
    for f in (lambda t: addernet_cuda.adder2d(t, w, b, **kw), layer):
        with pytest.raises(RuntimeError, match="adder2d: forward-mode AD"):
            torch.func.jvp(f, (x,), (torch.ones_like(x),))
    # Under autocast the call takes the op, whose generated autograd drops tangents as well.
    x32, w32, b32 = x.float(), w.float(), b.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(RuntimeError, match="adder2d: forward-mode AD"):
            torch.func.jvp(
                lambda t: addernet_cuda.adder2d(t, w32, b32, **kw), (x32,), (torch.ones_like(x32),)
            )


def test_func_grad_under_autocast_equals_backward():
    # Under autocast torch.func.grad met the op's generated autograd and raised torch's error.
    x, w, b, kw = make(SHAPES[1], dtype=torch.bfloat16)
    b = b.float()

    def loss(x, w, b):
        return addernet_cuda.adder2d(x, w, b, **kw).float().pow(2).sum()

    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = torch.func.grad(loss, argnums=(0, 1, 2))(x, w, b)
        xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
        loss(xs, ws, bs).backward()
    for g, t in zip(got, (xs, ws, bs)):
        assert g.dtype == t.dtype and torch.equal(g, t.grad)


def test_func_functionalize_equals_eager():
    # functionalize is a torch.func transform without autograd: it takes the op, as before.
    from torch.fx.experimental.proxy_tensor import make_fx

    x, w, b, kw = make(SHAPES[1], dtype=torch.float64)

    def f(x):
        return addernet_cuda.adder2d(x, w, b, **kw)

    assert torch.equal(torch.func.functionalize(f)(x), f(x))
    assert torch.equal(make_fx(torch.func.functionalize(f))(x)(x), f(x))


@pytest.mark.filterwarnings("error::UserWarning")  # torch's per-sample fallback warns
def test_func_grad_equals_backward():
    # torch.func.grad (which refused the op's generated autograd, no setup_context) gives the
    # gradients of .backward(), bit for bit, and vmap over it per-sample weight gradients.
    x, w, b, kw = make(SHAPES[1], dtype=torch.float64)

    def loss(x, w, b):
        return addernet_cuda.adder2d(x, w, b, **kw).pow(2).sum()

    got = torch.func.grad(loss, argnums=(0, 1, 2))(x, w, b)
    xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
    loss(xs, ws, bs).backward()
    for g, t in zip(got, (xs, ws, bs)):
        assert torch.equal(g, t.grad)
    per_sample = torch.func.vmap(
        torch.func.grad(lambda w, xi: loss(xi.unsqueeze(0), w, b)), in_dims=(None, 0)
    )(w, x)
    loop = [torch.func.grad(lambda w: loss(x[i : i + 1], w, b))(w) for i in range(len(x))]
    assert torch.equal(per_sample, torch.stack(loop))
    with pytest.raises(RuntimeError, match="double backward"):
        torch.func.grad(lambda x: torch.func.grad(loss)(x, w, b).sum())(x)


@pytest.mark.filterwarnings("error::UserWarning")  # torch's per-sample fallback warns
@pytest.mark.parametrize("dims", [(1, None, None), (None, 0, None), (1, 0, 0), (None, None, 0)])
def test_vmap_rules_equal_a_loop(dims):
    # The vmapped dimension folds into the batch (shared weights) or the groups (weights per
    # sample): the same bits as one call per sample, in float32 too, for all three ops.
    case = Case("vmap", 2, 4, 7, 6, 6, 3, 3, stride=(2, 1), padding=1, dilation=(1, 2), groups=2)
    x, w, b, kw = make(case, dtype=torch.float32)
    size = 3
    g = torch.Generator().manual_seed(1)
    batched = [torch.randn(size, *t.shape, generator=g) for t in (x, w, b)]
    batched[0] = batched[0].movedim(0, 1)  # x's samples along dim 1
    args = [batched[i] if d is not None else t for i, (t, d) in enumerate(zip((x, w, b), dims))]

    def sample(i):
        return [a.select(d, i) if d is not None else a for a, d in zip(args, dims)]

    y = torch.func.vmap(lambda x, w, b: addernet_cuda.adder2d(x, w, b, **kw), in_dims=dims)(*args)
    assert torch.equal(
        y, torch.stack([addernet_cuda.adder2d(*sample(i), **kw) for i in range(size)])
    )
    dy = torch.randn(size, *y.shape[1:], generator=g)
    for op in (addernet_cuda.ops.adder2d_input_grad, addernet_cuda.ops.adder2d_weight_grad):
        got = torch.func.vmap(lambda dy, x, w: op(dy, x, w, **kw), in_dims=(0, *dims[:2]))(
            dy, *args[:2]
        )
        want = torch.stack([op(dy[i], *sample(i)[:2], **kw) for i in range(size)])
        assert torch.equal(got, want), op


def test_vmap_over_a_dimension_of_size_0_raises():
    x, w, b, kw = make(SHAPES[1], dtype=torch.float32)
    with pytest.raises(ValueError, match="adder2d: torch.vmap over a dimension of size 0"):
        torch.func.vmap(lambda w: addernet_cuda.adder2d(x, w, b, **kw))(w.expand(0, *w.shape))


def test_vmap_over_adder2d_matches_a_loop():
    # torch.vmap reaches the op (torch's per-sample fallback) through the autograd.Function
    x, w, b, kw = make(SHAPES[1], dtype=torch.float32)
    xs = torch.stack([x, x.flip(0), 2 * x])
    got = torch.vmap(lambda t: addernet_cuda.adder2d(t, w, b, **kw))(xs)
    assert torch.equal(got, torch.stack([addernet_cuda.adder2d(t, w, b, **kw) for t in xs]))


def test_double_backward_raises():
    x, w, b, kw = make(SHAPES[0])
    x.requires_grad_()
    y = addernet_cuda.adder2d(x, w.requires_grad_(), b, **kw)
    (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gx.sum().backward()


@pytest.mark.parametrize("device", devices)
def test_autocast_runs_in_float32(device):
    x, w, b, kw = make(SHAPES[0], dtype=torch.float32, device=device)
    dtype = torch.bfloat16
    with torch.autocast(device, dtype=dtype):
        y = addernet_cuda.adder2d(x.to(dtype), w, b, **kw)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, addernet_cuda.adder2d(x.to(dtype).float(), w, b, **kw))


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "dtype, expected",
    [
        (torch.float64, torch.float64),
        (torch.float32, torch.float32),
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
    ],
)
def test_autocast_casts_up_never_down(dtype, expected, autocast_dtype, device):
    """One autocast policy for the wrapper, the raw op and AdderConv2d: half inputs run in
    float32, float64 stays float64 (as F.conv2d keeps it), and the gradients keep each
    tensor's own dtype."""
    x, w, b, kw = make(SHAPES[1], dtype=dtype, device=device)
    x, w = x.requires_grad_(), w.requires_grad_()
    layer = addernet_cuda.AdderConv2d(4, 6, 3, stride=2, padding=1, dtype=dtype, device=device)
    args = (*SHAPES[1].args, "hardtanh")
    with torch.autocast(device, dtype=autocast_dtype):
        y = addernet_cuda.adder2d(x, w, b, **kw)
        raw = torch.ops.addernet.adder2d(x, w, b, *args)
        out = layer(x)
    assert (y.dtype, raw.dtype, out.dtype) == (expected,) * 3
    torch.testing.assert_close(
        y, addernet_cuda.adder2d(x.to(expected), w.to(expected), b.to(expected), **kw)
    )
    torch.testing.assert_close(raw, y)
    (y.sum() + out.sum()).backward()
    assert x.grad.dtype == dtype and w.grad.dtype == dtype and layer.weight.grad.dtype == dtype


def test_meta_tensors_give_shapes():
    x, w = torch.empty(2, 4, 9, 7, device="meta"), torch.empty(6, 2, 3, 3, device="meta")
    y = addernet_cuda.adder2d(x, w, stride=2, padding=1, groups=2)
    assert y.device.type == "meta" and y.shape == (2, 6, 5, 4)


def opcheck_samples():
    samples = []
    for i, shape in enumerate([SHAPES[0], SHAPES[1], SHAPES[5], SHAPES[6], SHAPES[-1]]):
        for dtype in (torch.float32, torch.float64):
            x, w, b, kw = make(shape, dtype=dtype, bias=(i % 2 == 0), seed=i)
            if i == 1:
                x = x.to(memory_format=torch.channels_last)
            samples.append((x.requires_grad_(), w.requires_grad_(), b, kw))
    return samples


@pytest.mark.parametrize("index", range(len(opcheck_samples())))
def test_opcheck(index):
    x, w, b, kw = opcheck_samples()[index]
    args = [list(kw["stride"]), list(kw["padding"]), list(kw["dilation"]), kw["groups"]]
    torch.library.opcheck(torch.ops.addernet.adder2d.default, (x, w, b, *args, "hardtanh"))
    y = torch.ops.addernet.adder2d(x, w, b, *args)
    dy = torch.randn_like(y)
    torch.library.opcheck(
        torch.ops.addernet.adder2d_input_grad.default, (dy, x.detach(), w.detach(), *args, "exact")
    )
    torch.library.opcheck(
        torch.ops.addernet.adder2d_weight_grad.default, (dy, x.detach(), w.detach(), *args)
    )


class SmallAdderNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.adder = addernet_cuda.AdderConv2d(8, 8, 3, stride=2, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.adder(self.conv(x))))
        return self.fc(x.mean((2, 3)))


def test_torch_compile_fullgraph_forward_and_backward():
    torch.manual_seed(0)
    model = SmallAdderNet()
    x = torch.randn(4, 3, 16, 16)
    compiled = torch.compile(model, fullgraph=True)
    y_eager = model(x)
    y_compiled = compiled(x)
    torch.testing.assert_close(y_compiled, y_eager, rtol=1e-4, atol=1e-4)
    y_compiled.sum().backward()
    g_compiled = model.adder.weight.grad.clone()
    model.zero_grad()
    model(x).sum().backward()
    torch.testing.assert_close(g_compiled, model.adder.weight.grad, rtol=1e-4, atol=1e-3)


def test_compiled_autograd_traces_the_backward_in_one_graph():
    # Compiled autograd traces the Python backward of an eagerly recorded adder2d: with
    # fullgraph=True it must trace it whole (the backward's ops run past autograd through a
    # dispatch guard that dynamo cannot trace, so while compiling they are called plainly), and
    # give the eager gradients.
    enable = getattr(importlib.import_module("torch._dynamo.compiled_autograd"), "_enable", None)
    if enable is None:
        pytest.skip("this torch has no torch._dynamo.compiled_autograd._enable")
    x, w, b, kw = make(SHAPES[1], dtype=torch.float32)
    dy = torch.randn(reference.adder2d(x, w, b, **kw).shape)
    want = grads(addernet_cuda.adder2d, x, w, b, kw, dy)
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = addernet_cuda.adder2d(xg, wg, b, **kw)
    with enable(torch.compile(backend="eager", fullgraph=True)):
        y.backward(dy)
    assert torch.equal(xg.grad, want[1]) and torch.equal(wg.grad, want[2])


def test_torch_export():
    torch.manual_seed(0)
    model = SmallAdderNet().eval()
    x = torch.randn(2, 3, 16, 16)
    exported = torch.export.export(model, (x,))
    assert any("addernet.adder2d" in str(node.target) for node in exported.graph.nodes)
    torch.testing.assert_close(exported.module()(x), model(x))


# Bad input: one table of error cases (adder2d_cases.BAD_INPUT) for both checks. The Python check (ops.check_args and the
# argument parsing of addernet_cuda.adder2d and the gradient wrappers) is the public surface and
# raises ValueError/TypeError naming the argument; the C++ check (check_adder2d_args in
# csrc/adder2d.cpp) is the backstop for raw torch.ops.addernet calls and raises RuntimeError. Each
# row's message pattern must match both: dtypes print as torch.float64 in Python and as Double in
# C++, and shapes as (5,) and [5], so the patterns stop before those. A row with raw=False is a
# Python-only case (argument parsing the schema does differently, or a tensor on the meta device,
# which the raw op sends to the fake kernel, i.e. the Python check itself).
_BAD_PARAMS = [pytest.param(row, "python", id=f"{row[0]}-python") for row in BAD_INPUT] + [
    pytest.param(row, "torch.ops", id=f"{row[0]}-torch.ops") for row in BAD_INPUT if row[4]
]


@pytest.mark.parametrize("row,path", _BAD_PARAMS)
def test_bad_input(row, path):
    _, op, change, pattern, _ = row
    args = valid_args(op)
    args.update(change(args))
    if path == "python":
        with pytest.raises((ValueError, TypeError), match=pattern):
            getattr(addernet_cuda.ops, op)(**args)
    else:
        with pytest.raises(RuntimeError, match=pattern):
            call_raw(op, args)


@pytest.mark.parametrize("row", [r for r in BAD_INPUT if r[1] == "adder2d"], ids=lambda r: r[0])
def test_bad_input_under_autocast(row):
    """Under autocast adder2d raises the same ValueError/TypeError as outside it (the check
    compares dtypes as the autocast policy casts them), not the C++ check's RuntimeError."""
    _, op, change, pattern, _ = row
    args = valid_args(op)
    args.update(change(args))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises((ValueError, TypeError), match=pattern):
            addernet_cuda.adder2d(**args)


def test_autocast_accepts_mixed_half_and_float32():
    """bfloat16 input with a float32 weight is valid under autocast (both run in float32)."""
    x, w, b, kw = make(SHAPES[0], dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = addernet_cuda.adder2d(x.bfloat16(), w, b, **kw)
    torch.testing.assert_close(y, addernet_cuda.adder2d(x.bfloat16().float(), w, b, **kw))


# ----------------------------------------------------------------------------------------------
# Extreme arguments: overflow-checked shape arithmetic (a wrapped int64 once gave a wrong output
# shape and a segmentation fault). The cases run in subprocesses (tests/adder2d_extreme_worker.py),
# about 50 per interpreter; the worker prints one line per finished case, so a crash pins down its
# case, which is recorded, and the rest of the batch goes on in a fresh interpreter.

EXTREME_VALUES = [0, 1, 2, 3, 7, 2**31 - 1, 2**31, 2**32 + 1, 2**62, 2**63 - 500000, 2**63 - 1]
EXTREME_VALUES += [6148914691236517206, -1, -(2**63), 2**63, 2**64 + 1]
ARGUMENT_WORDS = ("stride", "padding", "dilation", "groups", "kernel", "weight", "input")
ARGUMENT_WORDS += ("grad_output", "output", "allocate", "memory")
# Before torch 2.13 the stable ABI's dispatcher call drops the text of an error raised inside
# torch (here: an allocation that fails), leaving only "torch_call_dispatcher(...) API call
# failed at ...". Seen with torch 2.11; 2.13 and 2.14 pass the text on.
if tuple(int(v) for v in torch.__version__.split(".")[:2]) < (2, 13):
    ARGUMENT_WORDS += ("API call failed",)
ISSUE_CASES = [  # the two reported segmentation faults
    dict(
        x=[1, 1, 2, 1000001],
        w=[1, 1, 1, 1],
        stride=[1, 1],
        padding=[0, 2**63 - 500000],
        dilation=[1, 1],
        groups=1,
    ),
    dict(
        x=[1, 1, 1, 4],
        w=[1, 1, 1, 4],
        stride=[1, 1],
        padding=[0, 0],
        dilation=[1, 6148914691236517206],
        groups=1,
    ),
]


def extreme_cases(count, seed=0):
    """Small tensors; per case one or two of the six geometry values extreme (from
    EXTREME_VALUES or random 63-bit), or a valid geometry with huge padding, stride and dilation
    (a huge padding with a stride that brings the output back to a few pixels)."""
    import random

    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        groups = rng.choice([1, 1, 2])
        c, co = groups * rng.choice([1, 2]), groups * rng.choice([1, 2])
        x = [rng.choice([0, 1, 2]), c, rng.choice([1, 2, 5]), rng.choice([1, 3, 6])]
        w = [co, c // groups, rng.choice([1, 2, 3]), rng.choice([1, 3])]
        geometry = [[rng.choice([1, 2]), 1], [rng.choice([0, 1]), 1], [1, rng.choice([1, 2])]]
        if (
            rng.random() < 0.35
        ):  # valid, huge: padding P, dilation up to the padded size, stride >= P
            for dim in range(2):
                pad = rng.randrange(2**20, 2**61)
                span = x[2 + dim] + 2 * pad
                dilation = rng.randrange(1, span // max(w[2 + dim] - 1, 1) + 1)
                geometry[0][dim] = rng.randrange(pad, 2**63)
                geometry[1][dim], geometry[2][dim] = pad, dilation
        else:
            for _ in range(rng.choice([1, 2])):
                value = rng.choice(EXTREME_VALUES + [rng.randrange(2**63)])
                if rng.random() < 0.15:
                    groups = value
                else:
                    geometry[rng.randrange(3)][rng.randrange(2)] = value
        stride, padding, dilation = geometry
        cases.append(
            dict(x=x, w=w, stride=stride, padding=padding, dilation=dilation, groups=groups)
        )
    return cases


def run_extreme_batch(cases):
    """Outcomes of ``cases`` (a dict per case, or "crash: ..." for a case that killed its
    interpreter); each batch of cases shares one interpreter until one crashes."""
    import json
    import os
    import subprocess
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    worker = os.path.join(here, "adder2d_extreme_worker.py")
    # The folder of the addernet_cuda this process imported (the source tree, or site-packages
    # for an installed wheel): the worker must test the same build.
    root = os.path.dirname(os.path.dirname(os.path.abspath(addernet_cuda.__file__)))
    results = []
    while len(results) < len(cases):
        todo = cases[len(results) :]
        proc = subprocess.run(
            [sys.executable, worker],
            input=json.dumps(todo),
            capture_output=True,
            text=True,
            timeout=600,
            env=dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS="1"),
        )
        lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        results += lines
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-1:] or [""]
            results.append(f"crash: exit status {proc.returncode} {tail[0]}")
            if sum(isinstance(r, str) for r in results) >= 3:  # broken: do not grind on
                results += ["not run: earlier crashes"] * (len(cases) - len(results))
    return results


def check_extreme_outcome(case, result):
    """Each call either succeeds with the exactly computed shape or raises an error that names
    an argument (or fails to allocate an enormous but valid output)."""
    problems = []
    if isinstance(result, str):
        return [result]
    x_shape, w_shape = case["x"], case["w"]
    wanted = {
        "public": result["expected"],
        "fake": result["expected"],
        "input_grad": x_shape,
        "weight_grad": w_shape,
    }
    for call, want in wanted.items():
        got = result[call]
        if "error" in got:
            if not any(word in got["message"] for word in ARGUMENT_WORDS):
                problems.append(f"{call}: message names no argument: {got}")
        elif got["shape"] != want:
            problems.append(f"{call}: shape {got['shape']}, expected {want}")
    return problems


def test_extreme_arguments_never_crash():
    """Hundreds of random extreme stride/padding/dilation/groups combinations (and the two
    reported crashes) through the wrapper, the raw gradient ops and the fake kernel: the process
    never dies, shapes are exact, and errors name the argument."""
    from concurrent.futures import ThreadPoolExecutor

    cases = ISSUE_CASES + extreme_cases(300)
    batches = [cases[i : i + 50] for i in range(0, len(cases), 50)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = [r for batch in pool.map(run_extreme_batch, batches) for r in batch]
    assert len(results) == len(cases)
    problems = [
        (case, problem)
        for case, result in zip(cases, results)
        for problem in check_extreme_outcome(case, result)
    ]
    assert not problems, f"{len(problems)} problems, first ones: {problems[:5]}"
    public_errors = sum("error" in r["public"] for r in results)
    assert 0 < public_errors < len(cases)  # both outcomes are exercised


# ----------------------------------------------------------------------------------------------
# Drop-in: PyTorch's own test inputs for F.conv2d (its OpInfo), shapes against conv2d, values
# against the reference (on the explicitly padded, batched input).


def conv2d_opinfo_samples():
    """PyTorch's OpInfo sample inputs of nn.functional.conv2d (float64, CPU)."""
    common = pytest.importorskip(
        "torch.testing._internal.common_methods_invocations",
        reason="torch.testing._internal needs expecttest (requirements.txt)",
    )
    (info,) = [op for op in common.op_db if op.name == "nn.functional.conv2d"]
    return list(info.sample_inputs("cpu", torch.float64, requires_grad=False))


def reference_drop_in(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """The reference on an explicitly zero-padded, batched input (F.conv2d's padding rules)."""
    unbatched = x.dim() == 3
    x = x.unsqueeze(0) if unbatched else x
    st = (stride, stride) if isinstance(stride, int) else tuple(stride)
    dl = (dilation, dilation) if isinstance(dilation, int) else tuple(dilation)
    if padding == "valid":
        padding = 0
    if padding == "same":
        totals = [dl[i] * (w.shape[2 + i] - 1) for i in range(2)]
        x = F.pad(
            x,
            [
                totals[1] // 2,
                totals[1] - totals[1] // 2,
                totals[0] // 2,
                totals[0] - totals[0] // 2,
            ],
        )
        padding = 0
    y = reference.adder2d(x, w, b, st, padding, dl, groups)
    return y.squeeze(0) if unbatched else y


def test_pytorch_conv2d_opinfo_samples_run_as_adder2d():
    samples = conv2d_opinfo_samples()
    kinds = {"unbatched": 0, "same": 0, "valid": 0}
    for sample in samples:
        x, (w, *rest), kwargs = sample.input, sample.args, dict(sample.kwargs)
        b = rest[0] if rest else None
        want_shape = F.conv2d(x, w, b, **kwargs).shape
        got = addernet_cuda.adder2d(x, w, b, **kwargs)
        assert got.shape == want_shape, (tuple(x.shape), kwargs)
        torch.testing.assert_close(got, reference_drop_in(x, w, b, **kwargs))
        kinds["unbatched"] += x.dim() == 3
        kinds["same"] += kwargs.get("padding") == "same"
        kinds["valid"] += kwargs.get("padding") == "valid"
        xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
        addernet_cuda.adder2d(xg, wg, b, **kwargs).sum().backward()
        assert xg.grad.shape == x.shape and wg.grad.shape == w.shape
    assert len(samples) >= 30 and min(kinds.values()) > 0, kinds


def test_string_padding_and_unbatched_errors():
    x, w = torch.randn(3, 5, 5), torch.randn(2, 3, 3, 3)
    with pytest.raises(ValueError, match="padding must be 'same', 'valid'"):
        addernet_cuda.adder2d(x, w, padding="full")
    with pytest.raises(ValueError, match="not supported for strided"):
        addernet_cuda.adder2d(x, w, padding="same", stride=2)
    with pytest.raises(ValueError, match="input must be 4-D"):
        addernet_cuda.adder2d(x[0], w)
    assert addernet_cuda.adder2d(x, w, padding="same").shape == (2, 5, 5)
