"""Tests of the benchmark harness and its regression guard (benchmarks/)."""

import json
import os

import torch

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
    assert "torch_int8_conv" in row or "torch_int8_conv.skipped" in row
    assert result["sad_ceiling_gbytes_per_s"] > 0
    assert "int8 adder benchmark" in (tmp_path / "results_int8.md").read_text()
