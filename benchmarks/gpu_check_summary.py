"""Writes OUTDIR/summary.json for benchmarks/gpu_check.sh from OUTDIR/stages.jsonl (one JSON
object a stage) and OUTDIR/junit.xml (test counts), atomically (write, then rename).

    python -m benchmarks.gpu_check_summary OUTDIR DEVICE TORCH_VERSION START_EPOCH_S
"""

from __future__ import annotations

import json
import os
import sys
import time
import xml.etree.ElementTree as ET

from ._common import git_commit


def read_stages(out: str) -> list:
    with open(os.path.join(out, "stages.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_counts(junit: str) -> dict:
    """tests, failures, errors, skipped and passed summed over the junit XML's test suites."""
    try:
        root = ET.parse(junit).getroot()
    except (OSError, ET.ParseError) as error:
        return {"unreadable": str(error)}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    keys = ("tests", "failures", "errors", "skipped")
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in keys}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def main(argv) -> None:
    out, device, torch_version, start = argv[0], argv[1], argv[2], int(argv[3])
    stages = read_stages(out)
    summary = {
        "device": device or None,
        "torch_version": torch_version or None,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(start)),
        "elapsed_s": int(time.time()) - start,
        "last_stage": stages[-1]["stage"] if stages else None,
        "stages": stages,
        "commit": git_commit(),
    }
    junit = os.path.join(out, "junit.xml")
    if os.path.exists(junit):
        summary["tests"] = test_counts(junit)
    tmp = os.path.join(out, ".summary.json.tmp")
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    os.replace(tmp, os.path.join(out, "summary.json"))


if __name__ == "__main__":
    main(sys.argv[1:])
