"""The CUDA kernels of adder2d_int8 (csrc/cuda/adder2d_int8_kernels.cuh) run on the CPU under the
emulated CUDA execution model (tests/cuda_emulation/, docs/cuda_emulation.md).

tests/cuda_emulation/emulate_adder2d_int8.cpp includes the header nvcc compiles and is built with
g++ -fsanitize=address,undefined (the build and run helpers of test_cuda_emulation.py). It runs
INT8_EMULATION_CASES: every tile variant the launch configuration picks at 1, 108 and 132 SMs and
every variant forced onto unusual shapes, under three thread/block schedules, checking barriers,
races, write-once outputs and bounds, the code buffers word for word, and the output bitwise
against an exact reference of the quantized math with the CPU op's formulas (the int32 sums
themselves, through alpha = 1 and beta = 0, and the float epilogue with random alpha and beta).

The mutation tests rebuild the kernels from a copy of the header with a deliberate bug and assert
that the emulation reports it.
"""

import concurrent.futures
import re

import pytest
from adder2d_cases import Case
from test_cuda_emulation import (
    CSRC,
    _build,
    _compiler,
    _mutated_tree,
    _report,
    _run,
    assert_passed,
    assert_reported,
)

pytestmark = pytest.mark.cuda_emulation

SOURCE = "emulate_adder2d_int8.cpp"
HEADERS = ["adder2d_shape.h", "cuda/adder2d_cuda_common.cuh", "cuda/adder2d_int8_kernels.cuh"]
VARIANTS = {  # EMU_VARIANTS bits of emulate_adder2d_int8.cpp
    "int8_forward_tiled_128x128": 1,
    "int8_forward_tiled_64x64": 2,
    "int8_forward_tiled_32x128": 4,
    "int8_forward_tiled_16x256": 8,
}


class Int8EmulationCase:
    """A Case for the int8 emulation: relu applies to the affine run; force=True also runs every
    tile variant; cap > 0 lowers every grid cap to `cap` blocks (grid-stride loops)."""

    def __init__(self, case, relu=False, force=False, cap=0):
        self.case, self.relu, self.force, self.cap = case, relu, force, cap

    def line(self):
        c = self.case
        fields = [
            c.name, c.n, c.c, c.h, c.w, c.co, c.kh, c.kw, *c.stride, *c.padding, *c.dilation,
            c.groups, int(self.relu), int(self.force), self.cap,
        ]  # fmt: skip
        return " ".join(str(f) for f in fields)


E = Int8EmulationCase
# Channel counts per group of 1 to 64 (words of 4 codes with 1-3 padded channels), output channels
# per group on both sides of every tile's threshold, strides 1-3, dilation, padding larger than the
# kernel, 1x1, 2x2, 3x3, 5x5 and rectangular kernels, groups and depthwise, pixel tiles spanning
# images, batch 0, and grids past caps of 2 and 3 (the quantize, pack and forward grid-stride loops).
INT8_EMULATION_CASES = [
    E(Case("basic3x3", 2, 3, 8, 8, 4, 3, 3, padding=1), relu=True, force=True),
    E(Case("stride2_pad1", 1, 8, 9, 9, 16, 3, 3, stride=2, padding=1), force=True),
    E(Case("stride3_pad2", 1, 5, 13, 11, 6, 3, 3, stride=3, padding=2), relu=True),
    E(Case("dilation2", 1, 6, 11, 11, 40, 3, 3, padding=2, dilation=2)),
    E(Case("pad_gt_kernel", 1, 3, 4, 5, 7, 2, 2, padding=3), relu=True, force=True),
    E(Case("rect_1x5", 1, 7, 9, 10, 20, 1, 5, stride=(1, 2), padding=(0, 2))),
    E(Case("groups2_odd", 2, 10, 7, 7, 36, 3, 3, padding=1, groups=2), relu=True, force=True),
    E(Case("depthwise", 1, 12, 8, 8, 12, 3, 3, padding=1, groups=12), relu=True, cap=3),
    E(Case("depthwise_x2_5x5", 1, 6, 7, 7, 12, 5, 5, stride=2, padding=2, groups=6)),
    E(Case("co130", 1, 17, 5, 5, 130, 3, 3, padding=1), relu=True),
    E(Case("co128_265_blocks", 1, 4, 184, 184, 128, 1, 1)),
    E(
        Case(
            "groups3_cap2",
            3,
            9,
            5,
            6,
            99,
            2,
            3,
            stride=(1, 2),
            padding=(1, 0),
            dilation=(1, 2),
            groups=3,
        ),
        relu=True,
        cap=2,
    ),  # fmt: skip
    E(Case("batch0", 0, 4, 5, 5, 8, 3, 3, padding=1), force=True),
    E(Case("c13_cap3", 2, 13, 6, 6, 24, 3, 3, padding=1), relu=True, force=True, cap=3),
    E(Case("long_reduction", 1, 64, 4, 4, 20, 3, 3, padding=1)),
    E(Case("pointwise_stride2", 2, 16, 9, 9, 48, 1, 1, stride=2), relu=True),
]


def _emulator(name, csrc_root, defines=()):
    return _build(name, csrc_root, defines, source=SOURCE, headers=HEADERS)


# Each mutation: exact text of adder2d_int8_kernels.cuh (must occur once), replacement, variants to
# build (EMU_VARIANTS), cases, and what the report must contain.
MUTATIONS = {
    "double_buffer_barrier_removed": (
        "cuda/adder2d_int8_kernels.cuh",
        "      if (more) stash(buf ^ 1);\n      __syncthreads();\n",
        "      if (more) stash(buf ^ 1);\n",
        VARIANTS["int8_forward_tiled_64x64"],
        [E(Case("mut_barrier", 1, 20, 6, 6, 40, 3, 3, padding=1))],
        r"FAIL mut_barrier sums int8_forward_tiled_64x64 .*(not bitwise equal|differs from)",
    ),
    "padding_check_dropped": (
        "cuda/adder2d_int8_kernels.cuh",
        " && unsigned(ih) < unsigned(g.in_h)",
        "",
        VARIANTS["int8_forward_tiled_64x64"],
        [E(Case("mut_pad", 1, 20, 6, 6, 40, 3, 3, padding=1))],
        r"ERROR: AddressSanitizer: heap-buffer-overflow[\s\S]*adder2d_int8_forward_tiled",
    ),
    "quantize_multiplies_by_the_reciprocal": (
        "cuda/adder2d_int8_kernels.cuh",
        "__fdiv_rn(v, scale)",
        "__fmul_rn(v, 1.0f / scale)",
        VARIANTS["int8_forward_tiled_64x64"],
        [E(Case("mut_div", 1, 20, 6, 6, 40, 3, 3, padding=1))],
        r"FAIL mut_div affine .*input code word \d+ is [0-9a-f]{8}, reference [0-9a-f]{8}",
    ),
    "last_weight_slice_not_padded": (
        "cuda/adder2d_int8_kernels.cuh",
        "wr[j] = (m_ok && k < q.kwords) ? wg[int64_t(k) * cog] : kCodeZero4;",
        "wr[j] = m_ok ? wg[int64_t(k) * cog] : kCodeZero4;",
        VARIANTS["int8_forward_tiled_32x128"],
        [E(Case("mut_tail", 1, 5, 5, 5, 20, 3, 3, padding=1))],
        r"ERROR: AddressSanitizer: heap-buffer-overflow[\s\S]*adder2d_int8_forward_tiled",
    ),
}


@pytest.fixture(scope="session")
def int8_emulators(tmp_path_factory, pytestconfig):
    """The full emulation executable and one per mutation, built two at a time."""
    _compiler()
    tmp = tmp_path_factory.mktemp("int8_mutations")
    jobs = {"int8_full": (CSRC, ())}
    for name, (_, _, _, variants, *_) in MUTATIONS.items():
        root = _mutated_tree(name, tmp, mutations=MUTATIONS, headers=HEADERS)
        jobs["int8_" + name] = (root, (f"-DEMU_VARIANTS={variants}",))
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {k: pool.submit(_emulator, k, root, d) for k, (root, d) in jobs.items()}
        built = {k: f.result() for k, f in futures.items()}
    n = sum(t > 0 for _, t in built.values())
    _report(pytestconfig, f"\nint8 emulation builds: {n} of {len(jobs)} compiled (the rest cached)")
    return {k: exe for k, (exe, _) in built.items()}


def test_emulated_int8_kernels(int8_emulators, tmp_path, pytestconfig):
    """Every case of INT8_EMULATION_CASES: no failure, and every tile variant reached as the
    launcher's pick at each of 1, 108 and 132 SMs and forced."""
    r, (wall, cpu) = _run(int8_emulators["int8_full"], INT8_EMULATION_CASES, tmp_path)
    assert_passed(r)
    counts = {}
    for line in r.stdout.splitlines():
        if line.startswith("COUNT "):
            _, kernel, *n = line.split()
            counts[kernel] = [int(v) for v in n]
    table = [
        f"\nint8 emulated in {wall:.1f} s wall, {cpu:.1f} s CPU; cases per variant",
        f"{'kernel':28} {'cases':>5} {'@1SM':>5} {'@108':>5} {'@132':>5} {'forced':>6}",
    ]
    for kernel, n in sorted(counts.items()):
        table.append(f"{kernel:28} " + " ".join(f"{v:>5}" for v in n))
    _report(pytestconfig, "\n".join(table))
    for kernel in VARIANTS:
        cases, at1, at108, at132, forced = counts.get(kernel, [0] * 5)
        assert at1 > 0 and at108 > 0 and at132 > 0 and forced > 0, (kernel, counts.get(kernel))
    m = re.search(r"DONE cases=(\d+) failures=0 shared_arrays=(\d+)", r.stdout)
    assert m and int(m.group(1)) == len(INT8_EMULATION_CASES), r.stdout[-2000:]
    assert int(m.group(2)) == 2 * len(VARIANTS), "shared arrays found for poisoning (ws, xs)"


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_int8_mutation_is_reported(int8_emulators, tmp_path, mutation):
    """A deliberately broken copy of the kernels makes the emulation fail with the right report."""
    *_, cases, expected = MUTATIONS[mutation]
    r, _ = _run(int8_emulators["int8_" + mutation], cases, tmp_path, timeout=300)
    assert_reported(r, mutation, expected)


def test_int8_unmutated_copy_passes(int8_emulators, tmp_path):
    """The mutation cases pass on the real kernels: each failure above comes from its mutation."""
    cases = [c for *_, cs, _ in MUTATIONS.values() for c in cs]
    r, _ = _run(int8_emulators["int8_full"], cases, tmp_path)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
