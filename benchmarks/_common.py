"""Helpers shared by the benchmark scripts: the commit, peak RSS and timing statistics.

Times are reported as the median with the 20th and 80th percentiles of repeated runs after
warm-up; CUDA runs are timed with events, CPU runs with ``time.perf_counter``. Peak memory on the
CPU is ``VmHWM - VmRSS`` from ``/proc/self/status``, with the kernel's high-water mark reset to
the current RSS right after set-up (``/proc/self/clear_refs``), so the import and set-up peaks do
not count; ``ru_maxrss`` would also carry the parent's peak across ``fork`` + ``exec``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from typing import Callable, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git_commit() -> Optional[str]:
    """The short hash of the checkout's HEAD, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS: resident set, VmHWM: its high-water mark)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> bool:
    """Resets the kernel's peak-RSS mark (VmHWM) to the current RSS; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def percentile(values, q: float) -> float:
    """The value at rank round(q * (n - 1)) of the sorted values (nearest rank)."""
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def stats(times) -> dict:
    """Median, p20 and p80 of a list of times in seconds, and how many there were."""
    return {
        "median_s": statistics.median(times),
        "p20_s": percentile(times, 0.2),
        "p80_s": percentile(times, 0.8),
        "runs": len(times),
    }


def time_calls(
    fn: Callable[[], object],
    repeats: int,
    warmup: int,
    device: str = "cpu",
    cpu_time: bool = False,
    burst: int = 1,
) -> List:
    """Runs ``fn`` ``warmup`` times, then takes ``repeats`` samples of ``burst`` back-to-back
    calls each and returns the seconds per call of every sample: with CUDA events on
    ``device="cuda"``, with the wall clock otherwise, or with ``cpu_time`` the process's CPU time
    (``time.process_time``: on a machine shared with other work it counts only the cycles this
    process got; with several threads it also counts their spinning). On CUDA a sample of one
    call also times the host's work before the launch (the device idles while Python checks the
    arguments); a burst queues several calls without waiting, so that with the host ahead the
    events time the device's work, as in a training loop."""
    import torch  # here, so that the other helpers work where torch is not importable

    if burst < 1:
        raise ValueError(f"time_calls: burst must be >= 1, got {burst}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            for _ in range(burst):
                fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / burst)
        else:
            clock = time.process_time if cpu_time else time.perf_counter
            t0 = clock()
            for _ in range(burst):
                fn()
            times.append((clock() - t0) / burst)
    return times
