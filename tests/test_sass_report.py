"""Tests of the static SASS performance model (benchmarks/sass_report.py) and, where the CUDA
kernels were compiled, its check of the built extension against the committed table."""

import json
import os
import re

import pytest

import addernet_cuda
from benchmarks import sass_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMITTED = os.path.join(ROOT, "benchmarks", "results", "sass_sm90.json")


def _sass(lines):
    """Instructions as parse() returns them, from SASS text lines."""
    out = []
    for line in lines:
        m = sass_report.INSTR.search(line)
        out.append((int(m.group(1), 16), m.group(2), m.group(3), m.group(4)))
    return out


LOOPS = _sass(
    [
        "/*0000*/ MOV R1, c[0x0][0x28] ;",
        "/*0010*/ LDS.128 R4, [R2] ;",  # outer loop start
        "/*0020*/ FADD R8, -R4, R5 ;",  # inner loop start
        "/*0030*/ FADD R9, |R8|, R9 ;",
        "/*0040*/ FFMA R10, R8, R4, R10 ;",
        "/*0050*/ @P0 BRA 0x20 ;",  # inner loop back edge
        "/*0060*/ IADD3 R2, R2, 0x10, RZ ;",
        "/*0070*/ FADD R11, R11, R4 ;",
        "/*0080*/ @!P1 BRA 0x10 ;",  # outer loop back edge
        "/*0090*/ STL [R1], R9 ;",
        "/*00a0*/ EXIT ;",
    ]
)


def test_main_loop_is_innermost_hot_loop():
    body = sass_report.main_loop(LOOPS)
    assert [addr for addr, *_ in body] == [0x20, 0x30, 0x40, 0x50]


def test_model_counts_mix_and_fraction():
    k = sass_report.Kernel("k", "sm_90", registers=64, shared=4096, threads=256)
    k.instructions = LOOPS
    row = sass_report.model(k)
    assert row["mix"]["FADD"] == 2 and row["mix"]["FFMA"] == 1
    assert row["loop_instructions"] == 4 and row["loop_spills"] == 0
    assert row["predicted_fraction"] == pytest.approx(3 / 4, abs=1e-3)
    # 64 registers x 256 threads: 4 blocks = 32 warps of 64
    assert row["occupancy"] == pytest.approx(0.5)


def test_shared_bandwidth_bounds_the_fraction():
    # 4 LDS.128 per 2 FADD: 4 x 16 B x 32 lanes x 4 sub-partitions / 128 B = 64 cycles
    k = sass_report.Kernel("k", "sm_90")
    k.instructions = _sass(
        ["/*0000*/ LDS.128 R4, [R2] ;"] * 4
        + ["/*0040*/ FADD R8, R4, R5 ;", "/*0050*/ FADD R9, R4, R5 ;", "/*0060*/ @P0 BRA 0x0 ;"]
    )
    k.instructions = [(i * 16, *rest) for i, (_, *rest) in enumerate(k.instructions)]
    assert sass_report.model(k)["predicted_fraction"] == pytest.approx(2 / 64, abs=1e-3)


def _row(kernel, fraction, spills=0, local=0):
    return dict(
        kernel=kernel, arch="sm_90", predicted_fraction=fraction, loop_spills=spills, local=local
    )


def test_check_flags_spills_and_drops_beyond_tolerance_only():
    committed = [_row("a", 0.80), _row("b", 0.50)]
    assert sass_report.check([_row("a", 0.73), _row("b", 0.50)], committed, 0.10) == []
    failures = sass_report.check([_row("a", 0.71), _row("b", 0.50, spills=2)], committed, 0.10)
    assert len(failures) == 2
    assert "a (sm_90): predicted fraction 0.710" in failures[0]
    assert "b (sm_90): spills" in failures[1]
    assert sass_report.check([_row("c", 0.1, local=16)], committed, 0.10)[0].startswith("c ")


def _cuda_binary():
    if "cuda" not in addernet_cuda.build_info()["backends"]:
        return None
    return sass_report.default_binary()


@pytest.mark.skipif(
    _cuda_binary() is None, reason="the CUDA kernels were not compiled into this build"
)
def test_built_kernels_match_committed_sass_model():
    with open(COMMITTED) as f:
        committed = json.load(f)
    rows = [sass_report.model(k) for k in sass_report.parse(_cuda_binary()).values()]
    assert {r["kernel"] for r in rows if r["arch"] == "sm_90"} >= {
        r["kernel"] for r in committed["kernels"]
    }
    assert sass_report.check(rows, committed["kernels"], 0.10) == []


def test_vabsdiff4_is_the_useful_instruction_of_a_byte_sad_loop():
    k = sass_report.Kernel("k", "sm_90")
    k.instructions = _sass(
        [
            "/*0000*/ LDS R4, [R2] ;",  # 4 B x 32 lanes x 4 sub-partitions / 128 B: 4 cycles
            "/*0010*/ VABSDIFF4.U8.ACC R8, R4, R5, R8 ;",
            "/*0020*/ VABSDIFF4.U8.ACC R9, R4, R6, R9 ;",
            "/*0030*/ @P0 BRA 0x0 ;",
            "/*0040*/ FMUL R10, R8, R3 ;",  # the epilogue, outside the loop
            "/*0050*/ EXIT ;",
        ]
    )
    row = sass_report.model(k)
    assert row["mix"]["VABSDIFF4"] == 2 and row["loop_instructions"] == 4
    assert row["fp_unit"] == "vabsdiff4"
    assert row["predicted_fraction"] == pytest.approx(2 / 4, abs=1e-3)


def _int8_tile(name):
    """(BK, TM, TN) of an adder2d_int8_forward_tiled<T, Int8Tile<BM, BN, BK, TM, TN, B>> name."""
    m = re.search(r"Int8Tile<(\d+), (\d+), (\d+), (\d+), (\d+), \d+>", name)
    return tuple(int(v) for v in m.groups()[2:]) if m else None


def _sass_tools_missing():
    if _cuda_binary() is None:
        return "the CUDA kernels were not compiled into this build"
    try:
        sass_report.find_tool("cuobjdump"), sass_report.find_tool("nvdisasm")
    except SystemExit as e:
        return str(e)
    return None


@pytest.mark.skipif(_sass_tools_missing() is not None, reason=str(_sass_tools_missing()))
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_int8_kernels_sum_with_vabsdiff4_in_the_main_loop(arch):
    """Every adder2d_int8 tile's main loop is BK x TM x TN VABSDIFF4.U8.ACC, one per byte SAD of
    its micro-tile, each accumulating into a sum (not into RZ followed by an IADD3, which is what
    nvcc made of acc + __vsadu4(x, w))."""
    kernels = [
        k
        for (a, name), k in sass_report.parse(_cuda_binary()).items()
        if a == arch and "adder2d_int8_forward_tiled" in name
    ]
    assert len(kernels) == 4, f"{arch}: {len(kernels)} int8 tiles in the build"
    for k in kernels:
        row = sass_report.model(k)
        bk, tm, tn = _int8_tile(row["kernel"])
        body = sass_report.main_loop(k.instructions)
        sads = [
            (mods, ops.split(",")[-1].strip()) for _, op, mods, ops in body if op == "VABSDIFF4"
        ]
        assert len(sads) == bk * tm * tn, (arch, row["kernel"], len(sads))
        assert all(mods == ".U8.ACC" and acc != "RZ" for mods, acc in sads), (arch, sads[:4])
        assert row["fp_unit"] == "vabsdiff4" and row["loop_spills"] == 0 and row["local"] == 0
