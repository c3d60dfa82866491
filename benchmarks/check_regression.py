"""Regression guard for the CPU kernels: compares a fresh quick benchmark (or a given results
file) with the committed CPU ratios and flags a slowdown beyond noise.

Ratios to conv2d measured in the same run are compared, not absolute times, so the machine's
speed and load cancel to first order; a layer is flagged when its ratio grew by more than
--tolerance (default 50%, the run-to-run spread seen on a shared 2-core machine).

    python -m benchmarks.check_regression                      # runs the quick benchmark
    python -m benchmarks.check_regression --results benchmarks/out/results.json

Exit status 1 when a layer regressed, 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_BASELINE = os.path.join(HERE, "results", "cpu_full.json")
METRICS = ("forward.vs_conv2d", "forward_backward.vs_conv2d")


def compare(baseline: dict, fresh: dict, tolerance: float):
    """Returns (lines, regressions) for the layers both results hold."""
    base_rows = {r["shape"]: r for r in baseline["rows"]}
    lines, regressions = [], []
    for row in fresh["rows"]:
        old = base_rows.get(row["shape"])
        if old is None:
            continue
        for metric in METRICS:
            before, now = old[metric], row[metric]
            change = now / before - 1.0
            flag = change > tolerance
            lines.append(
                f"{row['shape']:>20} {metric:<28} {before:6.2f}x -> {now:6.2f}x ({change:+.0%})"
                + ("  REGRESSION" if flag else "")
            )
            if flag:
                regressions.append((row["shape"], metric, before, now))
    return lines, regressions


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--results", help="a results.json of benchmarks.bench_adder2d (default: run the quick set)"
    )
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help="committed CPU results")
    parser.add_argument(
        "--tolerance", type=float, default=0.5, help="allowed relative growth of a ratio"
    )
    args = parser.parse_args(argv)
    with open(args.baseline) as f:
        baseline = json.load(f)
    if args.results:
        with open(args.results) as f:
            fresh = json.load(f)
    else:
        from . import bench_adder2d

        out = tempfile.mkdtemp(prefix="adder2d-regression-")
        bench_adder2d.main(["--device", "cpu", "--no-memory", "--out", out])
        with open(os.path.join(out, "results.json")) as f:
            fresh = json.load(f)
    if fresh.get("device") != baseline.get("device"):
        print(
            f"device differs: baseline {baseline.get('device')}, fresh {fresh.get('device')}: nothing compared"
        )
        return 0
    # The CPU kernels differ by instruction set (the float32 forward's tile at avx512), so ratios
    # from another one are not a regression of the code.
    isa = [r.get("environment", {}).get("cpu_isa") for r in (baseline, fresh)]
    if isa[0] != isa[1]:
        print(f"CPU kernels differ: baseline {isa[0]}, fresh {isa[1]}: nothing compared")
        return 0
    lines, regressions = compare(baseline, fresh, args.tolerance)
    print("\n".join(lines))
    if not lines:
        print("no layer in common with the baseline")
    if regressions:
        print(f"{len(regressions)} ratio(s) grew by more than {args.tolerance:.0%}")
        return 1
    print(f"no ratio grew by more than {args.tolerance:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
