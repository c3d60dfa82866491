"""Tests of the benchmark harness and its regression guard (benchmarks/)."""

import json
import os
import subprocess
import sys
import time

import pytest
import torch

import addernet_cuda
from benchmarks import bench_adder2d, check_regression, gpu_check_summary


def _result(ratios):
    rows = [
        {"shape": name, "forward.vs_conv2d": f, "forward_backward.vs_conv2d": fb}
        for name, (f, fb) in ratios.items()
    ]
    return {"device": "cpu", "rows": rows}


def test_guard_flags_a_slowdown_beyond_tolerance_only():
    base = _result({"a": (2.0, 3.0), "b": (1.0, 1.0)})
    same = _result({"a": (2.2, 3.3), "b": (1.0, 1.1)})
    slower = _result({"a": (2.0, 6.5), "b": (1.0, 1.0)})
    assert check_regression.compare(base, same, 0.5)[1] == []
    regressions = check_regression.compare(base, slower, 0.5)[1]
    assert regressions == [("a", "forward_backward.vs_conv2d", 3.0, 6.5)]


def test_guard_command_on_files(tmp_path, capsys):
    base, fresh = tmp_path / "base.json", tmp_path / "fresh.json"
    base.write_text(json.dumps(_result({"a": (2.0, 3.0)})))
    fresh.write_text(json.dumps(_result({"a": (4.0, 3.0)})))
    assert check_regression.main(["--baseline", str(base), "--results", str(fresh)]) == 1
    assert "REGRESSION" in capsys.readouterr().out
    fresh.write_text(json.dumps(_result({"a": (2.1, 2.9)})))
    assert check_regression.main(["--baseline", str(base), "--results", str(fresh)]) == 0


def test_guard_compares_only_the_same_cpu_kernels(tmp_path, capsys):
    # The float32 forward is another kernel at avx512: a slower run at avx2 is not a regression.
    base, fresh = tmp_path / "base.json", tmp_path / "fresh.json"
    base.write_text(json.dumps(dict(_result({"a": (2.0, 3.0)}), environment={"cpu_isa": "avx512"})))
    fresh.write_text(json.dumps(dict(_result({"a": (4.0, 3.0)}), environment={"cpu_isa": "avx2"})))
    assert check_regression.main(["--baseline", str(base), "--results", str(fresh)]) == 0
    assert "CPU kernels differ: baseline avx512, fresh avx2" in capsys.readouterr().out


def test_benchmark_runs_and_writes_results(tmp_path):
    bench_adder2d.main(
        [
            "--device",
            "cpu",
            "--shapes",
            "lenet5.c2",
            "--repeats",
            "2",
            "--reference-repeats",
            "1",
            "--batch",
            "4",
            "--out",
            str(tmp_path),
        ]
    )
    with open(tmp_path / "results.json") as f:
        result = json.load(f)
    row = result["rows"][0]
    assert row["shape"] == "lenet5.c2" and row["batch"] == 4
    for key in (
        "adder2d.forward",
        "conv2d.forward",
        "reference.forward",
        "adder2d.forward_backward",
        "input_grad.ours",
        "input_grad.conv2d",
    ):
        assert row[key]["median_s"] > 0
    ratio = row["input_grad.vs_conv2d"]
    assert 0 < ratio["p20"] <= ratio["median"] <= ratio["p80"]
    assert row["adder2d.peak_mib"] >= 0 and result["environment"]["torch"]
    # bursts are for CUDA only: on the CPU each sample is one call on the wall clock
    assert result["environment"]["cuda_burst"] is None
    assert result["environment"]["clock"] == "wall clock"
    assert os.path.exists(tmp_path / "results.md")
    # the forward's fraction of the register-resident ceiling, measured in the same rounds
    assert row["ceiling_gterms_per_s"] > 0
    fraction = row["forward.fraction_of_ceiling"]
    assert 0 < fraction["p20"] <= fraction["median"] <= fraction["p80"]
    assert "% of ceiling" in (tmp_path / "results.md").read_text()
    assert "Input gradient alone" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("isa", ["base", "avx2"])
def test_register_ceiling_counts_terms_per_second(isa):
    from addernet_cuda._extension import _C

    info = addernet_cuda.build_info()
    if isa == "avx2" and not (info["cpu_avx2_compiled"] and info["cpu_isa"] in ("avx2", "avx512")):
        pytest.skip("no AVX2 kernels in this build or on this CPU")
    previous = _C.cpu_isa()
    _C.set_cpu_isa(isa)
    try:
        rate = _C.adder2d_register_ceiling(20000)
    finally:
        _C.set_cpu_isa(previous)
    # 1.28 M terms: far above 1e6 terms/s and below 1e13 on any CPU this runs on
    assert 1e6 < rate < 1e13


def test_committed_cpu_results_cover_every_layer():
    path = check_regression.DEFAULT_BASELINE
    with open(path) as f:
        result = json.load(f)
    assert {r["shape"] for r in result["rows"]} == set(bench_adder2d.SHAPES)
    assert result["device"] == "cpu" and result["environment"]["cpu_model"]


def test_term_count_follows_the_output_size_with_dilation():
    # (name, C, H, W, Co, k, stride, padding, dilation): OH = (10 + 2 - 2*2 - 1) // 1 + 1 = 8
    shape = ("dilated", 3, 10, 9, 4, 3, 1, 1, 2)
    x, w, kw = bench_adder2d.make_case(shape, 2, "cpu")
    y = addernet_cuda.adder2d(x, w, **kw)
    assert kw["dilation"] == 2 and y.shape == (2, 4, 8, 7)
    assert bench_adder2d.terms(shape, 2) == y.numel() * 3 * 3 * 3
    assert bench_adder2d.terms(shape[:8], 2) == 2 * 4 * 10 * 9 * 3 * 3 * 3  # dilation 1


def test_gpu_check_summary_counts_junit_results(tmp_path):
    (tmp_path / "stages.jsonl").write_text('{"stage": "build", "status": "passed"}\n')
    (tmp_path / "junit.xml").write_text(
        '<testsuites><testsuite tests="5" failures="1" errors="0" skipped="2"/></testsuites>'
    )
    gpu_check_summary.main([str(tmp_path), "GPU", torch.__version__, "0"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["last_stage"] == "build" and summary["device"] == "GPU"
    assert summary["tests"] == {"tests": 5, "failures": 1, "errors": 0, "skipped": 2, "passed": 2}


@pytest.mark.parametrize(
    "script",
    [
        "bench_adder2d",
        "bench_adder2d_int8",
        "bench_slac_head",
        "check_regression",
        "quantize_mnist",
        "reproduce_mnist",
        "sass_report",
    ],
)
def test_scripts_run_as_modules(script):
    """Every script starts as ``python -m benchmarks.X`` from the checkout (no sys.path edits)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{script}", "--help"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage:" in out.stdout


def test_interleaved_rounds_alternate_and_ratios_pair_rounds():
    calls = []

    def run(fn, repeats, warmup):
        for _ in range(warmup):
            fn()
        return [fn() for _ in range(repeats)]

    clock = iter(range(1, 100))
    fns = {
        "a": lambda: calls.append("a") or 2.0 * next(clock),
        "b": lambda: calls.append("b") or 1.0 * next(clock),
    }
    times = bench_adder2d.interleaved(run, fns, 3, 1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert len(times["a"]) == len(times["b"]) == 3
    ratio = bench_adder2d.ratio_stats([2.0, 4.0, 9.0], [1.0, 2.0, 3.0])
    assert ratio == {"median": 2.0, "p20": 2.0, "p80": 3.0}


def test_interleaved_settles_the_named_functions_before_each_timed_sample():
    calls = []

    def run(fn, repeats, warmup):
        for _ in range(warmup):
            fn()
        calls.append("|")  # the timed call follows
        return [fn() or 1.0 for _ in range(repeats)]

    fns = {"a": lambda: calls.append("a"), "c": lambda: calls.append("c")}
    bench_adder2d.interleaved(run, fns, 2, 0, settle=("a",))
    # rounds a c, then c a: each timed call of a follows an untimed one, c's follow nothing
    assert "".join(calls) == "||" + "a|a" + "|c" + "|c" + "a|a"


def test_time_calls_reports_seconds_per_call_of_a_burst():
    from benchmarks._common import time_calls

    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.01)

    times = time_calls(fn, repeats=3, warmup=1, burst=4)
    assert len(calls) == 1 + 3 * 4 and len(times) == 3
    # per call, not per sample of 4 calls (>= 0.04 s)
    assert all(0.009 < t < 0.03 for t in times), times
    with pytest.raises(ValueError, match="burst must be >= 1, got 0"):
        time_calls(fn, repeats=1, warmup=0, burst=0)


def test_cuda_burst_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench_adder2d.main(["--device", "cpu", "--cuda-burst", "0", "--out", str(tmp_path)])
    assert "--cuda-burst must be >= 1, got 0" in capsys.readouterr().err


def test_int8_benchmark_runs_and_writes_results(tmp_path):
    from benchmarks import bench_adder2d_int8

    threads = torch.get_num_threads()
    try:
        bench_adder2d_int8.main(
            ["--shapes", "lenet5.c2", "--repeats", "2", "--batch", "4", "--no-whole"]
            + ["--out", str(tmp_path)]
        )
    finally:
        torch.set_num_threads(threads)
    with open(tmp_path / "results_int8.json") as f:
        result = json.load(f)
    row = result["rows"][0]
    assert row["shape"] == "lenet5.c2" and row["batch"] == 4
    assert row["int8_adder"]["median_s"] > 0 and row["conv2d"]["median_s"] > 0
    assert row["int8_adder.nchw"]["median_s"] > 0
    assert "torch_int8_conv" in row or "torch_int8_conv.skipped" in row
    assert result["sad_ceiling_gbytes_per_s"] > 0
    assert "int8 adder benchmark" in (tmp_path / "results_int8.md").read_text()


def test_gpu_check_runs_every_int8_cuda_test():
    # gpu_check.sh names the int8 CUDA tests one by one: a new one must be added there too.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "tests", "test_adder2d_int8.py")) as f:
        names = [
            line.split("(")[0][len("def test_") :] for line in f if line.startswith("def test_cuda")
        ]
    with open(os.path.join(root, "benchmarks", "gpu_check.sh")) as f:
        script = f.read()
    assert names and [n for n in names if n not in script] == []
