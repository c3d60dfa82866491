"""Tests of the 8-bit adder: the adder2d_int8 op (csrc/cpu/adder2d_int8_kernels.h) against the
reference of the quantized math, and quantize() / QuantizedAdderConv2d (addernet_cuda/nn/quantized.py).

S = sum |q(Xp) - Wq| exact; Y = alpha * S + beta (relu optional); q(v) = clamp(round(v/s), -127, 127).
"""

import copy
import functools
import io
import mmap
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from adder2d_cases import CPU_CASES, Case
from conftest import int8_cpu_isas

import addernet_cuda
from addernet_cuda import ops, reference
from addernet_cuda.models import lenet5, resnet20, vgg_small
from addernet_cuda.nn.quantized import (
    QuantizedAdderConv2d,
    _add_into,
    _add_relu_into,
    quantize,
    recalibrate_batchnorm,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Shapes that stress the int8 packing: channel padding to 8, reductions that are not a multiple
# of 32 bytes or span several panels' worth, pixel tiles spanning images, output-channel tails,
# and the input transposition's 16 x 16 and 16 x 8 blocks with their tails.
INT8_SHAPES = CPU_CASES + [
    Case("long-reduction-odd-co", 3, 64, 6, 6, 7, 5, 5, padding=2),
    Case("one-pixel-per-image", 70, 16, 5, 5, 5, 5, 5),
    Case("nine-channels", 3, 9, 11, 5, 3, 3, 3, padding=1),
    Case("rect-groups-dilation", 2, 24, 6, 9, 6, 2, 3, (1, 2), (0, 1), (2, 1), groups=2),
    Case("transposed-16x16-blocks-and-tails", 2, 40, 4, 37, 6, 3, 3, padding=1),
    Case("16-channel-blocks-per-group", 1, 96, 3, 20, 6, 3, 1, padding=(1, 0), groups=3),
    Case("transposed-8-pixel-block", 2, 32, 3, 12, 4, 1, 3),
    Case("channels-quantized-in-several-passes", 1, 1030, 3, 7, 3, 1, 1),
    Case("weight-channels-longer-than-a-packing-pass", 1, 4100, 1, 2, 3, 1, 1),
    # Channels-last input: 12 channels padded to 16, an image row quantized in two passes.
    Case("row-quantized-in-two-passes", 1, 12, 2, 1500, 4, 1, 3, padding=(0, 1)),
    # Reductions of 512 bytes or more, where "avx512" runs the vpminub + vpdpbusd kernels: octet
    # pairs and a lone last octet, channel tails, padded channels, groups, stride, dilation,
    # rectangular kernels and padding, tiles spanning images, depthwise, batch 0.
    Case(
        "min-dot-groups-stride-dilation", 2, 128, 9, 8, 40, 3, 3, (2, 1), (2, 1), (2, 1), groups=2
    ),
    Case("min-dot-channel-padding-tiles-span-images", 5, 60, 4, 5, 24, 3, 3, padding=1),
    Case("min-dot-rect-just-over-512-bytes", 2, 104, 5, 11, 16, 1, 5, (1, 2), (0, 2)),
    Case("min-dot-depthwise-8x8", 2, 4, 9, 9, 8, 8, 8, padding=3, groups=4),
    Case("min-dot-many-octets", 1, 64, 6, 6, 136, 3, 3, padding=1),
    Case("min-dot-batch0", 0, 64, 5, 5, 8, 3, 3, padding=1),
    Case("min-dot-pixel-longer-than-a-sum-pass", 1, 32776, 1, 3, 9, 1, 2, padding=(0, 1)),
    Case("min-dot-dilation-w", 2, 64, 7, 9, 20, 3, 3, padding=1, dilation=(1, 2)),
    # Under 512 bytes: the AVX-512 byte SAD on a full octet pair and a lone octet.
    Case("sad-two-full-octets", 2, 16, 6, 6, 24, 3, 3, padding=1),
]


def make_codes(case, seed=0, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    # Spread over more than the code range, so clamping happens too.
    x = torch.randn(case.n, case.c, case.h, case.w, generator=g) * (60 * scale)
    wq = torch.randint(
        -127, 128, (case.co, case.c // case.groups, case.kh, case.kw), generator=g, dtype=torch.int8
    )
    return x, wq, torch.tensor([scale]), case.kwargs


@pytest.mark.parametrize("cpu_isa", int8_cpu_isas, indirect=True)
@pytest.mark.parametrize("shape", INT8_SHAPES, ids=repr)
def test_sums_equal_reference_bitwise(shape, cpu_isa):
    x, wq, s, kw = make_codes(shape)
    co = wq.shape[0]
    y = ops.adder2d_int8(x, wq, s, torch.ones(co), torch.zeros(co), **kw)
    sums = reference.adder2d_int8_sums(reference.quantize_codes(x, s), wq, **kw)
    assert sums.abs().max().item() < 2**24 if sums.numel() else True  # float32 holds them exactly
    assert y.dtype == torch.float32 and y.is_contiguous()
    assert torch.equal(y, sums.float())


# Every third shape, and every one made for the AVX-512 kernels (their epilogues).
EPILOGUE_SHAPES = INT8_SHAPES[::3] + [
    c for c in INT8_SHAPES[1::3] + INT8_SHAPES[2::3] if c.name.startswith(("min-dot", "sad-"))
]


@pytest.mark.parametrize("cpu_isa", int8_cpu_isas, indirect=True)
@pytest.mark.parametrize("shape", EPILOGUE_SHAPES, ids=repr)
@pytest.mark.parametrize("relu", [False, True])
def test_epilogue_equals_reference_bitwise(shape, relu, cpu_isa):
    x, wq, s, kw = make_codes(shape, seed=1)
    co = wq.shape[0]
    alpha, beta = torch.randn(co) * 0.01, torch.randn(co) * 5
    y = ops.adder2d_int8(x, wq, s, alpha, beta, **kw, relu=relu)
    ref = reference.adder2d_int8(x, wq, s, alpha, beta, **kw, relu=relu)
    assert torch.equal(y, ref)


@pytest.mark.parametrize("cpu_isa", int8_cpu_isas, indirect=True)
@pytest.mark.parametrize("shape", [c for c in INT8_SHAPES if c.n > 0], ids=repr)
def test_channels_last_input_gives_channels_last_output_bitwise_equal(shape, cpu_isa):
    # Read in place (no transposition), written channels-last: the same numbers as on NCHW.
    x, wq, s, kw = make_codes(shape, seed=4)
    co = wq.shape[0]
    alpha, beta = torch.randn(co) * 0.01, torch.randn(co)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    for relu in (False, True):
        want = ops.adder2d_int8(x, wq, s, alpha, beta, **kw, relu=relu)
        got = ops.adder2d_int8(x_cl, wq, s, alpha, beta, **kw, relu=relu)
        assert want.is_contiguous()
        if not x_cl.is_contiguous():  # with C == 1 or H == W == 1 the two layouts coincide
            assert got.is_contiguous(memory_format=torch.channels_last), got.stride()
        assert torch.equal(got, want)


def test_other_strided_inputs_give_contiguous_output():
    x, wq, s, kw = make_codes(INT8_SHAPES[5], seed=5)
    co = wq.shape[0]
    args = (wq, s, torch.ones(co), torch.zeros(co))
    want = ops.adder2d_int8(x, *args, **kw)
    wide = torch.zeros(x.shape[0], x.shape[1], x.shape[2], 2 * x.shape[3])
    wide[..., ::2] = x
    # A channels-last tensor sliced along the batch is channels-last in no dense sense.
    twice = torch.stack([x, x], 1).flatten(0, 1)  # images 0, 0, 1, 1, ...
    x_cl = twice.contiguous(memory_format=torch.channels_last)[::2]
    for strided in (wide[..., ::2], x_cl, x.transpose(2, 3).contiguous().transpose(2, 3)):
        got = ops.adder2d_int8(strided, *args, **kw)
        assert got.is_contiguous() and torch.equal(got, want)


def test_codes_round_half_to_even_and_clamp():
    s = torch.tensor([0.5])
    x = torch.tensor([0.25, 0.75, 1.25, -0.25, -0.75, 63.4, 63.5, 64.0, -70.0, 0.0]).view(
        1, 1, 1, -1
    )
    wq = torch.zeros(1, 1, 1, 1, dtype=torch.int8)
    y = ops.adder2d_int8(x, wq, s, torch.ones(1), torch.zeros(1))
    # |q(x) - 0|: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> 0, -1.5 -> -2, 126.8 -> 127, 127, 128 and
    # -140 clamp to +-127.
    assert y.flatten().tolist() == [0, 2, 2, 0, 2, 127, 127, 127, 127, 0]
    assert torch.equal(reference.quantize_codes(x, s).abs().float().flatten(), y.flatten())


@pytest.mark.parametrize("cpu_isa", int8_cpu_isas, indirect=True)
def test_vectorized_codes_round_half_to_even_and_clamp(cpu_isa):
    # 8 x 37 values (the 32- and 16-wide quantization and its scalar tail): ties, values near
    # the clamp, zeros and negative zeros.
    s = torch.tensor([0.25])
    base = torch.arange(-148, 148, dtype=torch.float32) / 4
    x = torch.cat([base, -base.flip(0)])[: 8 * 37].view(1, 8, 1, 37)
    x[0, 3, 0, ::5] = -0.0
    wq = torch.zeros(1, 8, 1, 1, dtype=torch.int8)
    y = ops.adder2d_int8(x, wq, s, torch.ones(1), torch.zeros(1))
    ref = reference.quantize_codes(x, s).abs().float().sum(1, keepdim=True)
    assert torch.equal(y, ref)


@pytest.mark.parametrize("cpu_isa", int8_cpu_isas, indirect=True)
@pytest.mark.parametrize("scale", [0.1, 0.0173, 3.0e-3])
def test_codes_next_to_ties_equal_division(scale, cpu_isa):
    # Values at and a few ulps around (k + 1/2) * scale, where x * (1 / scale) and x / scale can
    # round to different integers: the codes must be those of the division (the reference).
    s = torch.tensor([scale])
    ties = ((torch.arange(-130, 130, dtype=torch.float64) + 0.5) * scale).float()
    near = [ties]
    for ulps in (1, 2, 3):
        up, down = ties.clone(), ties.clone()
        for _ in range(ulps):
            up = torch.nextafter(up, torch.tensor(float("inf")))
            down = torch.nextafter(down, torch.tensor(float("-inf")))
        near += [up, down]
    x = torch.cat(near + [torch.randn(1000) * 60 * scale]).view(1, 1, 1, -1)
    wq = torch.full((1, 1, 1, 1), -127, dtype=torch.int8)
    y = ops.adder2d_int8(x, wq, s, torch.ones(1), torch.zeros(1))  # q(x) + 127, exactly
    ref = reference.quantize_codes(x, s).float() + 127
    assert torch.equal(y, ref)


@pytest.mark.parametrize("cpu_isa", int8_cpu_isas, indirect=True)
def test_image_of_padding_only(cpu_isa):
    # An empty image with padding: every tap is padded (code 0), S[co] = sum |w|.
    wq = torch.randint(
        -127, 128, (20, 72, 3, 3), dtype=torch.int8, generator=torch.Generator().manual_seed(0)
    )
    for c in (8, 72):  # a reduction under and over 512 bytes
        w = wq[:, :c].contiguous()
        y = ops.adder2d_int8(
            torch.zeros(2, c, 0, 0),
            w,
            torch.tensor([0.1]),
            torch.ones(20),
            torch.zeros(20),
            padding=2,
        )
        assert y.shape == (2, 20, 2, 2)
        expected = w.int().abs().sum((1, 2, 3)).float().view(1, 20, 1, 1).expand(2, 20, 2, 2)
        assert torch.equal(y, expected)


def test_padded_taps_count_as_code_zero():
    x = torch.zeros(1, 1, 1, 1)
    wq = torch.tensor([[[[3, -5, 7]]]], dtype=torch.int8)
    y = ops.adder2d_int8(x, wq, torch.tensor([1.0]), torch.ones(1), torch.zeros(1), padding=(0, 1))
    assert y.item() == 3 + 5 + 7


def test_base_and_vector_kernels_bitwise_equal_across_processes():
    # The baseline copy (ADDERNET_CPU_ISA=base in a subprocess) against this machine's best level
    # (AVX2 or AVX-512); each is also checked against the reference above.
    if addernet_cuda.build_info()["cpu_isa"] not in ("avx2", "avx512"):
        pytest.skip("no vector kernels in use on this machine (not compiled or no AVX2)")
    code = (
        "import sys, torch; sys.path.insert(0, 'tests');"
        "from test_adder2d_int8 import INT8_SHAPES, make_codes; from addernet_cuda import ops;"
        "import addernet_cuda; assert addernet_cuda.build_info()['cpu_isa'] == 'base';"
        "out = [];\n"
        "for i, sh in enumerate(INT8_SHAPES):\n"
        "    x, wq, s, kw = make_codes(sh, seed=i); co = wq.shape[0]\n"
        "    g = torch.Generator().manual_seed(i)\n"
        "    a, b = torch.randn(co, generator=g), torch.randn(co, generator=g)\n"
        "    out.append(ops.adder2d_int8(x, wq, s, a, b, **kw, relu=i % 2 == 1))\n"
        "torch.save(out, sys.argv[1])"
    )
    path = os.path.join(ROOT, "build", "int8_base_outputs.pt")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    env = dict(os.environ, ADDERNET_CPU_ISA="base", PYTHONPATH=ROOT)
    out = subprocess.run(
        [sys.executable, "-c", code, path],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    base = torch.load(path, weights_only=True)
    for i, sh in enumerate(INT8_SHAPES):
        x, wq, s, kw = make_codes(sh, seed=i)
        g = torch.Generator().manual_seed(i)
        a, b = torch.randn(wq.shape[0], generator=g), torch.randn(wq.shape[0], generator=g)
        assert torch.equal(ops.adder2d_int8(x, wq, s, a, b, **kw, relu=i % 2 == 1), base[i]), i


@pytest.mark.parametrize("cpu_isa", int8_cpu_isas, indirect=True)
@pytest.mark.parametrize(
    "name", ["transposed-8-pixel-block", "min-dot-channel-padding-tiles-span-images"]
)
def test_thread_count_does_not_change_the_result(name, cpu_isa):
    x, wq, s, kw = make_codes(next(c for c in INT8_SHAPES if c.name == name))
    a, b = torch.randn(wq.shape[0]), torch.randn(wq.shape[0])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.adder2d_int8(x, wq, s, a, b, **kw)
        torch.set_num_threads(max(threads, 2))
        assert torch.equal(ops.adder2d_int8(x, wq, s, a, b, **kw), one)
    finally:
        torch.set_num_threads(threads)


def _bad_int8_calls():
    x, wq = torch.randn(2, 4, 8, 8), torch.zeros(6, 4, 3, 3, dtype=torch.int8)
    s, a, b = torch.tensor([0.1]), torch.ones(6), torch.zeros(6)
    op = torch.ops.addernet.adder2d_int8
    args = ([1, 1], [1, 1], [1, 1], 1)
    return [
        ("input must be a 4-D float32", lambda: ops.adder2d_int8(x.double(), wq, s, a, b)),
        ("weight must be 4-D int8 codes", lambda: ops.adder2d_int8(x, wq.float(), s, a, b)),
        ("alpha must be float32 of shape \\[6\\]", lambda: ops.adder2d_int8(x, wq, s, a[:5], b)),
        (
            "scale must be a float32 tensor with one element",
            lambda: ops.adder2d_int8(x, wq, a, a, b),
        ),
        ("input must be float32, got Double", lambda: op(x.double(), wq, s, a, b, *args)),
        ("weight must be int8 codes, got Float", lambda: op(x, wq.float(), s, a, b, *args)),
        ("beta must have shape \\[6\\]", lambda: op(x, wq, s, a, b[:2], *args)),
        ("scale must be finite and > 0, got 0", lambda: op(x, wq, s * 0, a, b, *args)),
        ("groups \\(3\\) must divide the input channels", lambda: op(x, wq, s, a, b, *args[:3], 3)),
        (
            "input must have at least one channel",
            lambda: op(x[:, :0], wq[:, :0], s, a, b, *args),
        ),
        (
            "padded input size overflows int64",
            lambda: op(x, wq, s, a, b, [1, 1], [0, 2**62], [1, 1], 1),
        ),
        (
            "has too many elements for int64",
            lambda: op(x, wq, s, a, b, [1, 1], [2**30] * 2, [1, 1], 1),
        ),
        (  # 1100 * 1000 taps x 8 bytes (one channel padded to 8) > (2^31 - 1) / 255
            "the reduction \\(8800000 bytes per output after padding\\) is too long for exact "
            "int32 sums \\(at most 8421504\\)",
            lambda: op(
                torch.zeros(1, 1, 1100, 1000),
                torch.zeros(1, 1, 1100, 1000, dtype=torch.int8),
                s,
                a[:1],
                b[:1],
                *args,
            ),
        ),
    ]


@pytest.mark.parametrize("index", range(len(_bad_int8_calls())))
def test_bad_arguments_raise_clear_errors(index):
    match, call = _bad_int8_calls()[index]
    with pytest.raises((RuntimeError, ValueError), match=match):
        call()


def test_no_gradient():
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    y = ops.adder2d_int8(
        x,
        torch.zeros(3, 2, 1, 1, dtype=torch.int8),
        torch.tensor([0.1]),
        torch.ones(3),
        torch.zeros(3),
    )
    with pytest.raises(RuntimeError, match="inference only and has no gradient"):
        y.sum().backward()


@pytest.mark.parametrize("index", [0, 5, 6, len(INT8_SHAPES) - 2])
def test_opcheck(index):
    x, wq, s, kw = make_codes(INT8_SHAPES[index], seed=index)
    co = wq.shape[0]
    args = (x, wq, s, torch.randn(co), torch.randn(co), list(kw["stride"]), list(kw["padding"]))
    args += (list(kw["dilation"]), kw["groups"], True)
    torch.library.opcheck(torch.ops.addernet.adder2d_int8.default, args)
    # The fake kernel's strides must be the op's: channels-last output for channels-last input.
    args = (x.contiguous(memory_format=torch.channels_last),) + args[1:]
    torch.library.opcheck(torch.ops.addernet.adder2d_int8.default, args)


def test_fake_strides_equal_the_op_s_on_empty_channels_last_outputs():
    # No output channel: the strides of an empty channels-last tensor are torch.empty's.
    x = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    wq = torch.zeros(0, 3, 1, 1, dtype=torch.int8)
    args = (x, wq, torch.tensor([0.1]), torch.zeros(0), torch.zeros(0), [1, 1], [0, 0], [1, 1], 1)
    y = torch.ops.addernet.adder2d_int8(*args)
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake = torch.ops.addernet.adder2d_int8(
            *(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args)
        )
    assert y.shape == fake.shape == (2, 0, 4, 5) and y.stride() == fake.stride()


def test_benchmark_reports_page_faults_per_call():
    from benchmarks.bench_adder2d_int8 import interleaved

    def touch_fresh_pages(pages=256):
        memory = mmap.mmap(-1, pages * mmap.PAGESIZE)  # a new anonymous mapping every call
        memory[:: mmap.PAGESIZE] = b"\x01" * pages
        memory.close()

    timed = interleaved({"touch": touch_fresh_pages, "nothing": lambda: None}, 3)
    assert timed["touch"]["page_faults_per_call"] >= 200
    assert timed["nothing"]["page_faults_per_call"] < 50


# ---------------------------------------------------------------------------------------------
# quantize() and QuantizedAdderConv2d


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.adder = addernet_cuda.AdderConv2d(8, 16, 3, stride=2, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.adder2 = addernet_cuda.AdderConv2d(16, 16, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.relu(self.bn(self.adder(self.conv(x))))
        x = self.relu(x + self.bn2(self.adder2(x)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def block_and_data():
    torch.manual_seed(0)
    batches = [torch.randn(16, 3, 12, 12) for _ in range(4)]
    return recalibrate_batchnorm(Block(), batches), batches


def test_quantize_folds_batchnorm_and_relu(block_and_data):
    model, batches = block_and_data
    q = quantize(model, batches)
    assert isinstance(q.adder, QuantizedAdderConv2d) and isinstance(q.bn, nn.Identity)
    assert q.adder.relu and not q.adder2.relu and isinstance(q.bn2, nn.Identity)
    assert isinstance(model.adder, addernet_cuda.AdderConv2d)  # the original is untouched
    x = torch.randn(8, 3, 12, 12)
    with torch.no_grad():
        ref, out = model(x), q(x)
    assert (out - ref).norm() / ref.norm() < 0.05
    assert set(q.quantization_errors) == {"adder", "adder2"}


def test_quantized_layer_equals_the_op_with_folded_affine(block_and_data):
    model, batches = block_and_data
    q = quantize(model, batches, fold=False)
    assert isinstance(q.bn, nn.BatchNorm2d)  # not folded
    layer, x = q.adder, torch.randn(2, 8, 6, 6)
    s = layer.scale
    ref = reference.adder2d_int8(
        x, layer.weight, s, -s.expand(16), model.adder.bias.detach(), (2, 2), (1, 1), (1, 1), 1
    )
    assert torch.equal(layer(x), ref)
    assert torch.equal(layer.weight, reference.quantize_codes(model.adder.weight, s))


@pytest.mark.parametrize("scale_groups", [1, 4])
def test_quantized_layer_keeps_a_channels_last_input_channels_last(block_and_data, scale_groups):
    model, batches = block_and_data
    q = quantize(model, batches, scale_groups=scale_groups)
    x = torch.randn(4, 8, 12, 12).relu()
    with torch.no_grad():
        want, got = q.adder(x), q.adder(x.contiguous(memory_format=torch.channels_last))
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
    assert torch.equal(got, want)


def test_state_dict_and_torch_save_round_trip(block_and_data):
    model, batches = block_and_data
    q = quantize(model, batches, scale_groups=4)
    buffer = io.BytesIO()
    torch.save(q.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state["adder.weight"].dtype == torch.int8 and state["adder.scale"].shape == (4,)
    other = quantize(model, batches[:1], scale_groups=4, candidates=3)
    other.load_state_dict(state)
    x = torch.randn(4, 3, 12, 12)
    assert torch.equal(other(x), q(x))


def test_grouped_scales_are_no_worse(block_and_data):
    model, batches = block_and_data
    one = quantize(model, batches)
    four = quantize(model, batches, scale_groups=4)
    for name, errors in one.quantization_errors.items():
        assert max(four.quantization_errors[name]) <= errors[0] * 1.5 + 1e-3


def test_training_mode_and_bad_calibration_raise(block_and_data):
    model, batches = block_and_data
    q = quantize(model, batches)
    q.train()
    with pytest.raises(RuntimeError, match="inference only: call model.eval"):
        q(batches[0])
    with pytest.raises(ValueError, match="calibration set is empty"):
        quantize(model, [])
    with pytest.raises(ValueError, match="no AdderConv2d layer"):
        quantize(nn.Sequential(nn.Conv2d(3, 3, 1)), batches)
    with pytest.raises(ValueError, match="already quantized"):
        quantize(nn.Sequential(q.adder.eval(), addernet_cuda.AdderConv2d(16, 4, 1)), batches)


def test_torch_compile_and_export(block_and_data):
    model, batches = block_and_data
    q = quantize(model, batches)
    x = torch.randn(4, 3, 12, 12)
    eager = q(x)
    compiled = torch.compile(q, fullgraph=True)
    # Inductor computes the float layers around the op in another order: a code may flip.
    torch.testing.assert_close(compiled(x), eager, rtol=1e-3, atol=1e-3)
    exported = torch.export.export(q, (x,))
    assert any("addernet.adder2d_int8" in str(n.target) for n in exported.graph.nodes)
    assert torch.equal(exported.module()(x), eager)


class Net(nn.Module):
    """A residual block as a submodule (the model itself is never rewritten)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.block = Block().requires_grad_(False)
        self.block.conv = nn.Identity()
        self.block.adder = addernet_cuda.AdderConv2d(8, 16, 3, stride=2, padding=1, bias=True)

    def forward(self, x):
        return self.block(self.conv(x))


SIMPLIFIED_MODELS = {
    "resnet20": (lambda: resnet20(), (3, 32, 32)),
    "vgg_small": (lambda: vgg_small(), (3, 32, 32)),
    "lenet5": (lambda: lenet5(head="linear"), (1, 28, 28)),
    "residual-submodule": (Net, (3, 12, 12)),
}


class QuantizedLeafTracer(torch.fx.Tracer):
    def is_leaf_module(self, m, qualname):
        return isinstance(m, QuantizedAdderConv2d) or super().is_leaf_module(m, qualname)


@functools.lru_cache(maxsize=None)
def _quantized_pair(name):
    """The quantized model (simplified) and the same without simplification (cached: the
    tests only read them)."""
    torch.manual_seed(0)
    make, shape = SIMPLIFIED_MODELS[name]
    batches = [torch.randn(8, *shape) for _ in range(2)]
    model = recalibrate_batchnorm(make(), batches)
    return (
        quantize(model, batches, max_images=8, candidates=6, simplify=True),
        quantize(model, batches, max_images=8, candidates=6),
    )


@pytest.mark.parametrize("name", list(SIMPLIFIED_MODELS))
def test_simplified_model_equals_the_unsimplified_bitwise(name):
    q, plain = _quantized_pair(name)
    x = torch.randn(4, *SIMPLIFIED_MODELS[name][1]) * 2
    with torch.no_grad():
        assert torch.equal(q(x), plain(x))
    assert q.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(q.state_dict())


def test_resnet20_blocks_lose_the_redundant_float_work():
    q, _ = _quantized_pair("resnet20")
    for stage in (q.layer1, q.layer2, q.layer3):
        for block in stage:
            assert isinstance(block, torch.fx.GraphModule) and type(block).__name__ == "BasicBlock"
            targets = [n.target for n in block.graph.nodes if n.op != "placeholder"]
            assert targets.count(_add_relu_into) == 1
            assert not any(n.op == "call_module" and "relu" in n.target for n in block.graph.nodes)
            assert not any(n.op == "call_module" and "bn" in n.target for n in block.graph.nodes)
    assert type(q).__name__ == "CifarResNet" and isinstance(q.layer1, nn.Sequential)


def test_add_into_writes_in_place_only_when_exact():
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    ref = a + b
    out = _add_into(a.clone(), b)
    assert torch.equal(out, ref)
    fresh = a.clone()
    assert _add_into(fresh, b) is fresh
    # Broadcasting to a larger shape or promoting the dtype: a new tensor, as a + b.
    wide = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    assert torch.equal(_add_into(a[:1].clone(), b), a[:1] + b)
    assert _add_into(a.clone(), wide).dtype == torch.float64
    assert torch.equal(_add_relu_into(a.clone(), b), torch.relu(ref))
    special = torch.tensor([-0.0, float("nan"), -1.0])
    out = _add_relu_into(special.clone(), torch.tensor([-0.0, 1.0, 0.5]))
    assert (
        out.numpy().tobytes()
        == torch.relu(special + torch.tensor([-0.0, 1.0, 0.5])).numpy().tobytes()
    )


class _Block(nn.Module):
    """A residual block with the shapes of Net's, for the cases simplification must leave alone
    or handle: a forward argument with a default, a Python number added, a keyword call."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.c1 = addernet_cuda.AdderConv2d(3, 3, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(3)
        self.relu = nn.ReLU()
        self.id = nn.Identity()

    def forward(self, x, add_skip=True):
        z = self.relu(self.bn(self.c1(x)))
        if self.kind == "number":
            return self.id(input=z) + x.size(1)
        return z + x if add_skip else z


class _Holder(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.b = _Block(kind)

    def forward(self, x):
        return self.b(x)


@pytest.mark.parametrize("kind", ["default-argument", "number"])
def test_simplify_leaves_what_it_cannot_rewrite_exactly(kind):
    """A forward argument with a default is not fixed at it (the block is left alone); a Python
    number added to a layer's output and an nn.Identity called by keyword are handled."""
    torch.manual_seed(0)
    batches = [torch.randn(4, 3, 8, 8) for _ in range(2)]
    model = recalibrate_batchnorm(_Holder(kind), batches)
    q = quantize(model, batches, max_images=4, candidates=4, simplify=True)
    plain = quantize(model, batches, max_images=4, candidates=4)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(q(x), plain(x))
        if kind == "default-argument":
            assert type(q.b) is _Block
            assert torch.equal(q.b(x, False), plain.b(x, False))


def test_quantize_keeps_blocks_and_hooks_unless_asked_to_simplify():
    """By default the blocks stay instances of their class and a hook on a quantized layer sees
    that layer's own output; with simplify, a block whose children have hooks is left alone."""
    torch.manual_seed(0)
    batches = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    model = recalibrate_batchnorm(resnet20(), batches)
    q = quantize(model, batches, max_images=8, candidates=6)
    block = q.layer1[0]
    assert type(block).__name__ == "BasicBlock" and not isinstance(block, torch.fx.GraphModule)
    seen = []
    block.conv2.register_forward_hook(lambda m, i, o: seen.append((o, o.clone())))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        q(x)
    assert torch.equal(seen[0][0], seen[0][1])
    hooked = copy.deepcopy(model)
    calls = []
    hooked.layer1[0].relu.register_forward_hook(lambda m, i, o: calls.append(1))
    qs = quantize(hooked, batches, max_images=8, candidates=6, simplify=True)
    assert not isinstance(qs.layer1[0], torch.fx.GraphModule)
    assert isinstance(qs.layer1[1], torch.fx.GraphModule)
    with torch.no_grad():
        qs(x)
    assert calls


def test_simplified_submodule_compiles_and_exports():
    q, plain = _quantized_pair("residual-submodule")
    assert isinstance(q.block, torch.fx.GraphModule)
    x = torch.randn(4, 3, 12, 12)
    with torch.no_grad():
        eager = q(x)
        assert torch.equal(eager, plain(x))
        compiled = torch.compile(q, fullgraph=True)
        # Inductor computes the float layers around the op in another order: a code may flip.
        torch.testing.assert_close(compiled(x), eager, rtol=1e-3, atol=1e-3)
    # FX tracing with the quantized layers as leaves still works through the rewritten block.
    traced = torch.fx.GraphModule(q, QuantizedLeafTracer().trace(q))
    assert torch.equal(traced(x), eager)
    exported = torch.export.export(q, (x,))
    assert sum("addernet.adder2d_int8" in str(n.target) for n in exported.graph.nodes) == 2
    assert torch.equal(exported.module()(x), eager)


def test_lenet5_quantizes_every_adder_layer():
    torch.manual_seed(0)
    batches = [torch.randn(32, 1, 28, 28) for _ in range(2)]
    model = recalibrate_batchnorm(lenet5(head="linear"), batches)
    q = quantize(model, batches)
    kinds = {n: type(m).__name__ for n, m in q.named_modules()}
    assert kinds["c3"] == kinds["c5"] == kinds["f6"] == "QuantizedAdderConv2d"
    assert kinds["c1"] == "Conv2d"  # the multiplicative first layer stays float32
    assert kinds["bn3"] == kinds["bn5"] == kinds["bn6"] == "Identity"
    assert q.c3.relu and q.c5.relu and not q.f6.relu


def test_resnet20_per_layer_error_at_most_two_percent():
    """Relative L2 error of every quantized layer's output after the folded BatchNorm, BatchNorm
    statistics from the calibration data, per-layer scales."""
    torch.manual_seed(0)
    batches = [torch.randn(32, 3, 32, 32) for _ in range(2)]
    model = recalibrate_batchnorm(resnet20(), batches)
    q = quantize(model, batches, max_images=32)
    errors = {name: e[0] for name, e in q.quantization_errors.items()}
    assert len(errors) == 20  # 18 3x3 layers and the two 1x1 stride-2 shortcuts
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 0.02, f"{worst}: {errors[worst]:.4f}"


# ---------------------------------------------------------------------------------------------
# The CUDA kernel (csrc/cuda/adder2d_int8_kernels.cuh): bitwise equal to the CPU op, whose
# formulas it repeats (float32 division, round half to even, exact sums, multiply then add).

INT8_CUDA_OK = torch.cuda.is_available() and "cuda" in addernet_cuda.build_info()["backends"]
requires_int8_cuda = pytest.mark.skipif(
    not INT8_CUDA_OK,
    reason=(
        "no CUDA device: torch.cuda.is_available() is False (run benchmarks/gpu_check.sh on a "
        "GPU machine)"
        if not torch.cuda.is_available()
        else "the extension was built without its CUDA kernels"
    ),
)
# Besides INT8_SHAPES: output channels per group on both sides of every tile's threshold (16, 32,
# 128), depthwise, and a grid of more than 2 x 132 blocks of the 128 x 128 tile.
INT8_CUDA_SHAPES = INT8_SHAPES + [
    Case("co16-narrow-tile", 2, 5, 9, 9, 16, 3, 3, padding=1),
    Case("co17-small-tile", 2, 6, 9, 9, 17, 3, 3, stride=2, padding=1),
    Case("co1-pointwise", 2, 12, 5, 7, 1, 1, 1),
    Case("co33-medium-tile", 1, 13, 8, 8, 33, 3, 3, padding=1),
    Case("co130", 1, 19, 7, 7, 130, 3, 3, padding=1),
    Case("depthwise-5x5", 2, 24, 10, 10, 24, 5, 5, padding=2, groups=24),
    Case("co128-large-grid", 4, 32, 96, 96, 128, 1, 1),
]


def _int8_inputs(shape, seed):
    x, wq, s, kw = make_codes(shape, seed=seed, scale=0.0371)
    g = torch.Generator().manual_seed(seed)
    alpha, beta = (
        torch.randn(wq.shape[0], generator=g) * 0.01,
        torch.randn(wq.shape[0], generator=g),
    )
    if x.numel():  # NaN, infinities and ties of v / s among the inputs
        flat = x.view(-1)
        flat[::7] = (torch.randint(-130, 130, flat[::7].shape, generator=g) + 0.5) * s
        flat[1::11] = float("nan")
        flat[2::13] = float("inf")
        flat[3::17] = -float("inf")
    return x, wq, s, alpha, beta, kw


@requires_int8_cuda
@pytest.mark.parametrize("shape", INT8_CUDA_SHAPES, ids=repr)
@pytest.mark.parametrize("relu", [False, True])
def test_cuda_equals_cpu_bitwise(shape, relu):
    x, wq, s, alpha, beta, kw = _int8_inputs(shape, seed=3)
    want = ops.adder2d_int8(x, wq, s, alpha, beta, **kw, relu=relu)
    dev = [t.cuda() for t in (x, wq, alpha, beta)]
    for scale in (s, s.cuda()):  # the scale may lie on the CPU or on the input's device
        got = ops.adder2d_int8(dev[0], dev[1], scale, dev[2], dev[3], **kw, relu=relu)
        assert got.is_cuda and got.is_contiguous() and got.shape == want.shape
        assert torch.equal(got.cpu().view(torch.int32), want.view(torch.int32)), shape


@requires_int8_cuda
def test_cuda_channels_last_input_gives_channels_last_output():
    # The CPU op's strides (torch.empty's, also for size-1 dimensions) on one and 17 channels.
    for name in ("co17-small-tile", "co1-pointwise"):
        shape = next(c for c in INT8_CUDA_SHAPES if c.name == name)
        x, wq, s, alpha, beta, kw = _int8_inputs(shape, seed=4)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        want = ops.adder2d_int8(x_cl, wq, s, alpha, beta, **kw)
        got = ops.adder2d_int8(x_cl.cuda(), wq.cuda(), s, alpha.cuda(), beta.cuda(), **kw)
        assert (
            got.is_contiguous(memory_format=torch.channels_last) and got.stride() == want.stride()
        )
        assert torch.equal(got.cpu().view(torch.int32), want.view(torch.int32))


@requires_int8_cuda
def test_cuda_image_of_padding_only():
    # An empty image (no code to quantize: no quantization launch), every tap padded.
    wq = torch.randint(-127, 128, (20, 8, 3, 3), dtype=torch.int8)
    args = (torch.tensor([0.1]), torch.ones(20), torch.zeros(20))
    want = ops.adder2d_int8(torch.zeros(2, 8, 0, 0), wq, *args, padding=2)
    dev = [t.cuda() for t in (torch.zeros(2, 8, 0, 0), wq, args[1], args[2])]
    got = ops.adder2d_int8(dev[0], dev[1], args[0], dev[2], dev[3], padding=2)
    assert torch.equal(got.cpu(), want)


@requires_int8_cuda
def test_cuda_sums_equal_reference_bitwise():
    for i, shape in enumerate(INT8_CUDA_SHAPES):
        x, wq, s, kw = make_codes(shape, seed=i)
        co = wq.shape[0]
        y = ops.adder2d_int8(
            x.cuda(), wq.cuda(), s, torch.ones(co).cuda(), torch.zeros(co).cuda(), **kw
        )
        sums = reference.adder2d_int8_sums(reference.quantize_codes(x, s), wq, **kw)
        assert torch.equal(y.cpu(), sums.float()), shape


@requires_int8_cuda
@pytest.mark.parametrize("scale_groups", [1, 4])
def test_cuda_quantized_layer_equals_cpu(block_and_data, scale_groups):
    """A quantized layer (BatchNorm and ReLU folded) moved to the GPU with .cuda(): its buffers,
    the scale included, on the device. Only the adder layer is compared: the float layers around
    it (cuDNN, cuBLAS) round differently from the CPU's."""
    model, batches = block_and_data
    q = quantize(model, batches, scale_groups=scale_groups)
    layer, x = q.adder, q.conv(batches[0])
    want = layer(x)
    got = copy.deepcopy(layer).cuda()(x.cuda())
    assert torch.equal(got.cpu(), want)


@requires_int8_cuda
def test_cuda_checks_the_scale():
    x, wq = torch.randn(1, 2, 4, 4).cuda(), torch.zeros(3, 2, 1, 1, dtype=torch.int8).cuda()
    a, b = torch.ones(3).cuda(), torch.zeros(3).cuda()
    op = torch.ops.addernet.adder2d_int8
    args = ([1, 1], [0, 0], [1, 1], 1)
    for bad in (torch.tensor([0.0]), torch.tensor([float("nan")]).cuda()):
        with pytest.raises(RuntimeError, match="scale must be finite and > 0"):
            op(x, wq, bad, a, b, *args)


@requires_int8_cuda
def test_cuda_rejects_an_image_past_2_to_the_31_code_words():
    """The gather's offsets are 32-bit: H * W * ceil(C / 4) >= 2^31 raises (before any copy of
    the expanded input)."""
    x = torch.zeros(1, 1, 1, 1, device="cuda").expand(1, 5, 2**15, 2**15)
    wq, a, b = (
        torch.zeros(1, 5, 1, 1, dtype=torch.int8).cuda(),
        torch.ones(1).cuda(),
        torch.ones(1).cuda(),
    )
    with pytest.raises(RuntimeError, match="H \\* W \\* ceil\\(C/groups / 4\\) below 2\\^31"):
        torch.ops.addernet.adder2d_int8(x, wq, torch.tensor([1.0]), a, b, [1, 1], [0, 0], [1, 1], 1)
