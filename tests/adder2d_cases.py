"""The one table of adder2d shapes for the CPU tests (test_adder2d.py), the CUDA tests
(test_adder2d_cuda.py), the compute-sanitizer program (cuda_sanitizer_case.py) and the CPU
emulation of the CUDA kernels (test_cuda_emulation.py).

A case is input X[N, C, H, W], weight W[Co, C/groups, KH, KW], stride, padding, dilation and
groups; OH = floor((H + 2ph - dh(KH-1) - 1) / sh) + 1, likewise OW.
"""

from __future__ import annotations

import torch


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


class Case:
    """One adder2d shape, named for test ids."""

    def __init__(
        self, name, n, c, h, w, co, kh, kw, stride=1, padding=0, dilation=1, groups=1, bias=True
    ):
        self.name = name
        self.n, self.c, self.h, self.w, self.co, self.kh, self.kw = n, c, h, w, co, kh, kw
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.groups = groups
        self.bias = bias
        self.oh = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        self.ow = (w + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        assert c % groups == 0 and co % groups == 0 and self.oh > 0 and self.ow > 0, name

    @property
    def args(self):
        """stride, padding, dilation, groups as the raw torch.ops.addernet ops take them."""
        return (list(self.stride), list(self.padding), list(self.dilation), self.groups)

    @property
    def kwargs(self):
        """stride, padding, dilation, groups as keyword arguments of addernet_cuda.adder2d."""
        return dict(
            stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups
        )

    @property
    def taps(self):
        return self.c // self.groups * self.kh * self.kw

    def tensors(self, dtype=torch.float64, device="cpu", bias=True, seed=0):
        """x, w, bias (or None) drawn from N(0, 1) with a fixed seed, in `dtype` on `device`."""
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(self.n, self.c, self.h, self.w, generator=g, dtype=torch.float64)
        w = torch.randn(
            self.co, self.c // self.groups, self.kh, self.kw, generator=g, dtype=torch.float64
        )
        b = torch.randn(self.co, generator=g, dtype=torch.float64) if bias else None
        to = lambda t: t.to(device, dtype) if t is not None else None  # noqa: E731
        return to(x), to(w), to(b)

    def __repr__(self):
        return self.name


# CPU kernels: every geometry the packed-panel, direct (prepared-input) and row-tile code
# distinguishes.
CPU_CASES = [
    Case("3x3", 2, 3, 8, 8, 4, 3, 3, padding=1),
    Case("stride2-pad1", 2, 4, 9, 7, 6, 3, 3, stride=2, padding=1),
    Case("stride2-pad0", 2, 4, 9, 9, 6, 3, 3, stride=2),
    Case("stride3-pad2", 2, 3, 10, 10, 5, 3, 3, stride=3, padding=2),
    Case("dilation2", 1, 4, 10, 11, 4, 3, 3, padding=2, dilation=2),
    Case("groups-rect-pairs", 2, 6, 7, 7, 9, 3, 2, (2, 1), (1, 0), (1, 2), groups=3),
    Case("depthwise", 2, 5, 8, 8, 5, 3, 3, padding=1, groups=5),
    Case("depthwise-x2-stride2", 2, 4, 8, 8, 8, 3, 3, stride=2, padding=1, groups=4),
    Case("1x1", 2, 8, 5, 5, 10, 1, 1),
    Case("1x1-stride2-groups", 2, 8, 6, 6, 4, 1, 1, stride=2, groups=2),
    Case("kernel-equals-padded-image", 1, 2, 3, 3, 3, 5, 5, padding=1),
    Case("odd-sizes", 1, 3, 13, 17, 7, 5, 3, stride=3, padding=2),
    Case("taps-over-one-panel", 1, 64, 6, 6, 5, 3, 3, padding=1),
    Case("rows-longer-than-tile", 1, 3, 6, 40, 6, 3, 3, padding=1),
    Case("tile-groups-partial-vectors", 2, 5, 21, 19, 9, 3, 3, stride=2, padding=1),
    # Stride 2 with wider padding: odd pad_w and dilation (the forward's prepared planes split
    # two vectors at a time), and whole output vectors (the weight gradient's padded planes);
    # 8 output channels (two weight-gradient calls of 4 rows).
    Case("stride2-pad3-dilation2", 2, 4, 9, 37, 8, 3, 3, stride=2, padding=3, dilation=2),
    Case("stride2-pad2-5x5-whole-vectors", 1, 3, 6, 32, 8, 5, 5, stride=2, padding=2),
    # The forward's batch path (a vector holds one pixel of several images): rows narrower than
    # whole vectors with a vector's worth of images or more, in float32 and float64; a last image
    # group that is not full, stride 2, dilation, groups and a single output pixel.
    Case("batch-7x7", 8, 4, 7, 7, 6, 3, 3, padding=1),
    Case("batch-15-images-stride2", 15, 3, 13, 11, 5, 3, 3, stride=2, padding=1),
    Case("batch-groups-dilation", 8, 6, 9, 10, 6, 3, 2, (1, 2), (2, 1), (2, 1), groups=3),
    Case("batch-single-output-pixel", 8, 3, 3, 3, 4, 3, 3),
    Case("single-pixel", 1, 1, 1, 1, 2, 1, 1),
    Case("batch0", 0, 3, 5, 5, 4, 3, 3, padding=1),
]

# CUDA kernels: direct forward (<= 4 output channels per group), narrow (5..16, enough blocks),
# small (17..32, and 5..16 on small grids), medium (33..127) and large (>= 128, enough blocks)
# forward tiles, and the weight gradient with one split and with many.
CUDA_CASES = [
    Case("basic3x3", 2, 3, 8, 8, 4, 3, 3, padding=1),
    Case("stride2_pad1", 2, 8, 9, 9, 16, 3, 3, stride=2, padding=1),
    Case("stride2_nopad", 2, 8, 10, 10, 16, 3, 3, stride=2),
    Case("stride3_pad2", 2, 5, 13, 11, 6, 3, 3, stride=3, padding=2),
    Case("dilation2", 1, 4, 11, 11, 40, 3, 3, padding=2, dilation=2),
    Case("groups4", 2, 8, 7, 7, 12, 3, 3, padding=1, groups=4),
    Case("depthwise", 2, 16, 8, 8, 16, 3, 3, padding=1, groups=16),
    Case("depthwise_x2_stride2", 2, 16, 9, 9, 32, 3, 3, stride=2, padding=1, groups=16),
    Case("pointwise", 2, 32, 6, 6, 64, 1, 1),
    Case("pointwise_stride2", 2, 16, 7, 7, 48, 1, 1, stride=2),
    Case("rectangular", 2, 5, 9, 12, 7, 2, 5, stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
    Case("batch1_5x5", 1, 3, 5, 5, 2, 5, 5, padding=2),
    Case("batch0", 0, 4, 6, 6, 8, 3, 3, padding=1),
    Case("wide_k", 1, 70, 5, 5, 130, 3, 3, padding=1),
    Case("many_pixels", 4, 8, 32, 32, 16, 3, 3, padding=1),
    Case("one_pixel_out", 1, 6, 3, 3, 9, 3, 3),
    Case("small_tile_24", 2, 8, 9, 9, 24, 3, 3, padding=1),
    # 320 groups of 16 output channels, one block each: the 16x256 tile up to 160 SMs.
    Case("narrow_tile_groups", 1, 320, 5, 5, 5120, 1, 1, groups=320),
    # The tiled input gradient at strides 2-4: phases of two pixel tiles, two channel tiles; a
    # dilated kernel at strides (4, 3).
    Case("stride2_tiles", 2, 24, 34, 30, 40, 3, 3, stride=2, padding=1),
    Case("stride4x3_dilated", 2, 8, 17, 14, 12, 3, 3, stride=(4, 3), padding=1, dilation=(2, 1)),
]
CUDA_LARGE = Case("large_tile", 4, 32, 64, 64, 300, 3, 3, padding=1)


def sanitizer_cases(sm_count):
    """The shapes run under compute-sanitizer: every CUDA kernel path once, kept small, and a
    1x1 layer with enough 128-pixel tiles to fill `sm_count` multiprocessors twice."""
    side = int((2 * sm_count * 128) ** 0.5) + 2
    return [
        Case("stride2_pad1", 2, 3, 9, 9, 4, 3, 3, stride=2, padding=1),
        Case("stride2_nopad", 2, 8, 10, 10, 16, 3, 3, stride=2),
        Case("groups_dilation", 1, 6, 7, 9, 40, 2, 3, (1, 2), (1, 0), (2, 1), groups=2),
        Case("depthwise", 2, 16, 8, 8, 16, 3, 3, padding=1, groups=16),
        Case("many_pixels", 4, 8, 32, 32, 16, 3, 3, padding=1),
        Case("medium_tile", 2, 8, 9, 9, 40, 3, 3, padding=1),
        # one 16x256 block per group of 16 output channels, two per SM
        Case("narrow_tile_groups", 1, 2 * sm_count, 4, 4, 32 * sm_count, 1, 1, groups=2 * sm_count),
        Case("large_tile_1x1", 1, 8, side, side, 128, 1, 1),
    ]


ALL_DTYPES = ("f32", "f64", "f16", "bf16")


class EmulationCase:
    """A Case for the CUDA emulation: the dtypes to run; force=True also runs every forward
    variant compiled for the dtype (not only the launcher's picks for 1, 108 and 132 SMs);
    cap > 0 lowers every grid cap to `cap` blocks (grid-stride and split loops); ops: which of
    the forward, input gradient (both modes) and weight gradient to run; offset != 0: X and W
    share that offset (X in offset +- 0.5, W in offset +- 0.2) instead of being uniform in
    [-2, 2]."""

    def __init__(
        self, case, dtypes=ALL_DTYPES, force=True, cap=0, ops=("fwd", "igrad", "wgrad"), offset=0
    ):
        self.case, self.dtypes, self.force, self.cap = case, tuple(dtypes), force, cap
        self.ops = tuple(ops)
        self.offset = offset

    def line(self):
        c = self.case
        fields = [
            c.name, c.n, c.c, c.h, c.w, c.co, c.kh, c.kw, *c.stride, *c.padding, *c.dilation,
            c.groups, int(c.bias), ",".join(self.dtypes), int(self.force), self.cap, ",".join(self.ops),
        ] + ([self.offset] if self.offset else [])  # fmt: skip
        return " ".join(str(f) for f in fields)


E = EmulationCase
# The emulated CUDA cases. Shapes are small (an emulated block costs 256 fiber switches per
# barrier) but reach: each forward and input-gradient variant as picked by the launcher at 1, 108
# and 132 SMs and forced onto unusual shapes; strides 1-3, dilation, padding larger than the kernel, 1x1, 3x3,
# 5x5, 7x7 and rectangular kernels, groups and depthwise, channel and pixel counts that are no
# multiple of any tile, batch 0, 1 and 3, with and without bias, four dtypes, both input-gradient
# modes (always run), weight-gradient splits > 1 with a shorter last chunk, grids past caps of
# 2 and 3.
EMULATION_CASES = [
    E(Case("basic3x3", 2, 3, 8, 8, 4, 3, 3, padding=1)),
    E(Case("stride2_pad1", 1, 8, 9, 9, 16, 3, 3, stride=2, padding=1)),
    E(Case("stride3_pad2_nobias", 1, 5, 13, 11, 6, 3, 3, stride=3, padding=2, bias=False)),
    E(Case("dilation2", 1, 4, 11, 11, 40, 3, 3, padding=2, dilation=2)),
    E(Case("pad_gt_kernel", 1, 3, 4, 5, 7, 2, 2, padding=3)),
    E(Case("k1x1", 3, 9, 5, 3, 33, 1, 1)),
    E(Case("k5x5", 1, 3, 7, 6, 5, 5, 5, padding=2)),
    E(Case("k7x7_stride2", 1, 2, 11, 9, 6, 7, 7, stride=2, padding=3)),
    E(
        Case(
            "rect_2x5",
            1,
            5,
            9,
            12,
            7,
            2,
            5,
            stride=(2, 1),
            padding=(1, 2),
            dilation=(1, 2),
            bias=False,
        )
    ),
    E(Case("rect_1x3_groups3", 1, 6, 5, 7, 9, 1, 3, padding=(0, 1), groups=3)),
    E(Case("groups4", 1, 8, 7, 7, 12, 3, 3, padding=1, groups=4)),
    E(Case("depthwise", 1, 8, 6, 6, 8, 3, 3, padding=1, groups=8)),
    E(Case("depthwise_x2_stride2", 1, 4, 7, 7, 8, 3, 3, stride=2, padding=1, groups=4)),
    E(Case("odd_channels_pixels", 1, 19, 5, 7, 37, 3, 1, padding=(1, 0))),
    E(Case("cog_129", 1, 3, 3, 3, 129, 2, 2), dtypes=("f32", "f16")),
    E(Case("single_pixel_out", 1, 6, 3, 3, 9, 3, 3, bias=False)),
    E(Case("batch0", 0, 4, 6, 6, 8, 3, 3, padding=1)),
    # Weight gradient: 300 pixels = 19 steps of 16, 3 splits of 7 steps, the last of 5.
    E(Case("wgrad_splits", 3, 2, 10, 10, 3, 1, 1), force=False),
    # Weight gradient with X and W sharing an offset of 4 (|W| about 8x |Xp - W|, zero-padded
    # borders where |Xp - W| = |W|): the centring c_k carries the accuracy. 2 channel tiles
    # (64 + 6 channels: each its own centre), 2 tap tiles (64 + 8), 162 pixels in 2 splits.
    E(Case("wgrad_offset4", 2, 8, 9, 9, 70, 3, 3, padding=1), ops=("wgrad",), offset=4),
    # Tiled input gradient as picked (>= 8 input channels per group): a 3x3 layer;
    # groups with a rectangular dilated kernel, rectangular padding, 12 channels (a partial tile
    # of 16) and 5 output channels per group (a partial step of 8).
    E(Case("igrad_tiled_3x3", 2, 16, 9, 9, 24, 3, 3, padding=1)),
    E(
        Case(
            "igrad_tiled_groups_dil",
            1,
            24,
            7,
            10,
            10,
            3,
            2,
            padding=(2, 1),
            dilation=(2, 1),
            groups=2,
        )
    ),
    # Tiled input gradient as picked at strides 2-4, one phase per tile: 4 phases of 270 pixels (2
    # tiles each) past caps of 2; a 1x1 kernel at stride 2 and a 3x3 one at stride 2 with dilation
    # 2 (phases with no tap: dX = 0 there); strides (4, 3) with a 5x3 kernel; stride 4 with
    # dilation 2.
    E(
        Case("igrad_tiled_stride2_caps2", 3, 16, 20, 18, 12, 3, 3, stride=2, padding=1),
        ("f32", "f64"),
        cap=2,
        ops=("igrad",),
    ),
    E(Case("igrad_tiled_1x1_stride2", 2, 8, 7, 6, 9, 1, 1, stride=2), ops=("igrad",)),
    E(
        Case("igrad_tiled_stride2_dil2", 1, 8, 9, 8, 8, 3, 3, stride=2, padding=2, dilation=2),
        ops=("igrad",),
    ),
    E(
        Case("igrad_tiled_stride4x3", 1, 8, 11, 10, 8, 5, 3, stride=(4, 3), padding=(2, 1)),
        ops=("igrad",),
    ),
    # Stride 4 with dilation 2 (taps 2 apart per phase) on 2 rows: phases 2 and 3 have no pixel.
    E(
        Case("igrad_tiled_stride4_dil2", 2, 8, 2, 9, 8, 3, 3, stride=4, padding=2, dilation=2),
        ops=("igrad",),
    ),
    # Tiled input gradient past caps of 2: 600 pixels in 3 tiles of 256, 40 channels in 3 tiles.
    E(
        Case("igrad_tiled_caps2", 6, 40, 10, 10, 8, 3, 3, padding=1),
        ("f32", "f64"),
        cap=2,
        ops=("igrad",),
    ),
    # Grids past lowered caps: tiled forward's grid.y loop (4 groups x 1 tile > 2), the direct
    # forward's and the input gradient's grid-stride loops, weight-gradient splits capped at 2
    # (10 steps each: chunks of 160 and 140 pixels), the split sum's grid-stride loop.
    E(Case("caps2_groups4", 3, 8, 10, 10, 24, 1, 1, groups=4), cap=2),
    E(Case("caps3_direct", 3, 2, 9, 9, 3, 3, 3, padding=1), cap=3),
    E(Case("caps2_medium", 1, 4, 5, 5, 70, 3, 3, padding=1), dtypes=("f32", "f64"), cap=2),
    # The launcher picks the 128x128 tile at 1 SM (2 blocks) and the 64x64 one at 108 and 132.
    E(Case("large_at_1sm", 1, 4, 12, 12, 128, 1, 1), dtypes=("f32", "f16", "bf16")),
    # The 16x256 tile at 1 SM (2 blocks of 256 pixels), the 32x128 one at 108 and 132.
    E(Case("narrow_at_1sm", 1, 3, 17, 16, 16, 3, 3, padding=1), dtypes=("f32", "f16", "bf16")),
    # 264 groups of 16 output channels x 1 pixel tile = 264 blocks of 16x256: picked at 1, 108
    # and 132 SMs.
    E(
        Case("narrow_at_132sms", 1, 264, 4, 4, 4224, 1, 1, groups=264),
        dtypes=("f32",),
        force=False,
        ops=("fwd",),
    ),
    # 66 groups x 4 pixel tiles = 264 blocks of 128x128: picked at 1, 108 and 132 SMs.
    E(
        Case("large_at_132sms", 2, 66, 16, 16, 8448, 1, 1, groups=66),
        dtypes=("f32",),
        force=False,
        ops=("fwd",),
    ),
]


# Bad input: one row per argument check (test_adder2d.py, test_adder2d_cuda.py). A row is (id, op,
# a function of the valid arguments returning the ones to change, the message pattern both the
# Python and the C++ check must match, whether the raw op can be called with it).
def valid_args(op):
    """Valid keyword arguments of addernet_cuda.ops.<op> (x [2, 4, 8, 8], w [6, 4, 3, 3])."""
    args = dict(input=torch.randn(2, 4, 8, 8), weight=torch.randn(6, 4, 3, 3))
    args.update(stride=1, padding=0, dilation=1, groups=1)
    if op == "adder2d":
        args.update(bias=None, input_grad="hardtanh")
    else:
        args["grad_output"] = torch.randn(2, 6, 6, 6)
    if op == "adder2d_input_grad":
        args["mode"] = "hardtanh"
    return args


BAD_INPUT = [  # id, op, the changed arguments (from the valid ones), message pattern, raw
    ("input-2d", "adder2d", lambda a: dict(input=a["input"][0, 0]),
     r"adder2d: input must be 4-D \[N, C, H, W\], got 2-D with shape", True),
    ("weight-3d", "adder2d", lambda a: dict(weight=a["weight"][0]),
     r"adder2d: weight must be 4-D \[out_channels, in_channels/groups, kH, kW\], got 3-D", True),
    ("input-not-float", "adder2d", lambda a: dict(input=a["input"].long(), weight=a["weight"].long()),
     r"adder2d: input must be a floating-point tensor \(float32, float64, float16 or bfloat16\), got", True),
    ("weight-dtype", "adder2d", lambda a: dict(weight=a["weight"].double()),
     "adder2d: weight dtype .* does not match input dtype", True),
    ("bias-dtype", "adder2d", lambda a: dict(bias=torch.randn(6, dtype=torch.float64)),
     "adder2d: bias dtype .* does not match input dtype", True),
    ("weight-device", "adder2d", lambda a: dict(weight=a["weight"].to("meta")),
     "adder2d: weight is on meta but input is on cpu", False),
    ("stride-0", "adder2d", lambda a: dict(stride=0),
     r"adder2d: stride must be >= 1, got \[0, 0\]", True),
    ("padding-negative", "adder2d", lambda a: dict(padding=-1),
     r"adder2d: padding must be >= 0, got \[-1, -1\]", True),
    ("dilation-0", "adder2d", lambda a: dict(dilation=(1, 0)),
     r"adder2d: dilation must be >= 1, got \[1, 0\]", True),
    ("stride-triple", "adder2d", lambda a: dict(stride=(1, 2, 3)),
     "adder2d: stride must be an int or a pair of ints", False),
    ("groups-0", "adder2d", lambda a: dict(groups=0), "adder2d: groups must be >= 1, got 0", True),
    ("groups-bool", "adder2d", lambda a: dict(groups=True),
     "adder2d: groups must be an int, got True", False),
    ("no-input-channel", "adder2d",
     lambda a: dict(input=torch.randn(2, 0, 8, 8), weight=torch.randn(6, 0, 3, 3)),
     "adder2d: input must have at least one channel, got shape", True),
    ("groups-input-channels", "adder2d", lambda a: dict(weight=torch.randn(6, 1, 3, 3), groups=3),
     r"adder2d: groups \(3\) must divide the input channels \(4\)", True),
    ("groups-output-channels", "adder2d", lambda a: dict(weight=torch.randn(6, 1, 3, 3), groups=4),
     r"adder2d: groups \(4\) must divide the output channels, weight.size\(0\) = 6", True),
    ("weight-channels", "adder2d", lambda a: dict(weight=torch.randn(6, 3, 3, 3)),
     r"adder2d: weight.size\(1\) must be in_channels / groups = 4 / 1 = 4, got weight of shape", True),
    ("kernel-empty", "adder2d", lambda a: dict(weight=torch.randn(6, 4, 0, 3)),
     "adder2d: weight kernel size must be >= 1, got", True),
    ("kernel-too-large", "adder2d", lambda a: dict(weight=torch.randn(6, 4, 11, 3), padding=1),
     r"adder2d: kernel \(11x3, dilated to 11x3\) is larger than the padded input \(10x10\)", True),
    ("padding-overflow", "adder2d", lambda a: dict(padding=(0, 2**62)),
     r"adder2d: padding \[0, 4611686018427387904\] is too large: the padded input size "
     "overflows int64", True),
    ("dilation-overflow", "adder2d", lambda a: dict(dilation=(1, 2**62)),
     r"adder2d: dilation \[1, 4611686018427387904\] is too large: the dilated kernel size "
     "overflows int64", True),
    ("output-overflow", "adder2d", lambda a: dict(padding=2**30),
     r"adder2d: the output \[2, 6, 2147483654, 2147483654\] has too many elements for int64 "
     r"\(padding \[1073741824, 1073741824\], stride \[1, 1\]\)", True),
    ("padding-beyond-int64", "adder2d", lambda a: dict(padding=2**63),
     r"adder2d: padding must be <= 2\*\*63 - 1, got \[9223372036854775808, 9223372036854775808\]",
     False),
    ("bias-shape", "adder2d", lambda a: dict(bias=torch.randn(5)),
     r"adder2d: bias must have shape \[6\], got", True),
    ("input-grad-mode", "adder2d", lambda a: dict(input_grad="sign"),
     'adder2d: input_grad must be "hardtanh" or "exact", got "sign"', True),
    ("mode", "adder2d_input_grad", lambda a: dict(mode="sign"),
     'adder2d_input_grad: mode must be "hardtanh" or "exact", got "sign"', True),
    ("grad-output-dtype", "adder2d_input_grad", lambda a: dict(grad_output=a["grad_output"].double()),
     "adder2d_input_grad: grad_output dtype .* does not match input dtype", True),
    ("grad-output-shape", "adder2d_weight_grad", lambda a: dict(grad_output=torch.randn(2, 6, 5, 5)),
     r"adder2d_weight_grad: grad_output must have the output's shape \[2, 6, 6, 6\], got", True),
    ("weight-channels-grad", "adder2d_weight_grad", lambda a: dict(weight=torch.randn(6, 2, 3, 3)),
     r"adder2d_weight_grad: weight.size\(1\) must be in_channels / groups", True),
]  # fmt: skip
RAW_ORDER = {
    "adder2d": ("input", "weight", "bias", "stride", "padding", "dilation", "groups", "input_grad"),
    "adder2d_input_grad": ("grad_output", "input", "weight", "stride", "padding", "dilation",
                           "groups", "mode"),
    "adder2d_weight_grad": ("grad_output", "input", "weight", "stride", "padding", "dilation",
                            "groups"),
}  # fmt: skip


def call_raw(op, args):
    """torch.ops.addernet.<op> with the keyword arguments of addernet_cuda.ops.<op>."""
    args = dict(args)
    for name in ("stride", "padding", "dilation"):
        args[name] = [args[name]] * 2 if isinstance(args[name], int) else list(args[name])
    return getattr(torch.ops.addernet, op)(*(args[name] for name in RAW_ORDER[op]))


def to_device(args, device):
    """The arguments with every tensor on `device`."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
