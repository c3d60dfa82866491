"""Tests of the benchmark harness and its regression guard (benchmarks/)."""

import json
import os

from benchmarks import bench_adder2d, check_regression


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
    ):
        assert row[key]["median_s"] > 0
    assert row["adder2d.peak_mib"] >= 0 and result["environment"]["torch"]
    assert os.path.exists(tmp_path / "results.md")


def test_committed_cpu_results_cover_every_layer():
    path = check_regression.DEFAULT_BASELINE
    with open(path) as f:
        result = json.load(f)
    assert {r["shape"] for r in result["rows"]} == set(bench_adder2d.SHAPES)
    assert result["device"] == "cpu" and result["environment"]["cpu_model"]


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
