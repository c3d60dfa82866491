"""Benchmark of the adder2d kernels against the unfused reference (the official unfold
algorithm) and torch.nn.functional.conv2d on the same shapes, in one process.

For every shape: forward and forward+backward times of ours, conv2d's and the reference's
(median with p20/p80 of repeated runs after warm-up; CUDA timed with events, TF32 off for conv),
and peak memory of forward+backward (CPU: a fresh subprocess per case, peak RSS minus the RSS
after set-up; CUDA: torch.cuda.max_memory_allocated). Writes results.json and results.md into
--out (default benchmarks/out/, git-ignored) and prints the table.

    python -m benchmarks.bench_adder2d                 # best device, quick set of shapes
    python -m benchmarks.bench_adder2d --device cpu --full --repeats 20
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import addernet_cuda
from addernet_cuda import reference

# ResNet-20 (CIFAR) adder layers: (name, C, H, W, Co, k, stride, padding).
RESNET20 = [
    ("res20.s1.3x3", 16, 32, 32, 16, 3, 1, 1),
    ("res20.s2.down3x3", 16, 32, 32, 32, 3, 2, 1),
    ("res20.s2.3x3", 32, 16, 16, 32, 3, 1, 1),
    ("res20.s2.short1x1", 16, 32, 32, 32, 1, 2, 0),
    ("res20.s3.down3x3", 32, 16, 16, 64, 3, 2, 1),
    ("res20.s3.3x3", 64, 8, 8, 64, 3, 1, 1),
    ("res20.s3.short1x1", 32, 16, 16, 64, 1, 2, 0),
]
QUICK = ["res20.s1.3x3", "res20.s2.3x3", "res20.s3.3x3"]


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def timer(device):
    if device == "cuda":
        def run(fn, repeats, warmup):
            for _ in range(warmup):
                fn()
            times = []
            for _ in range(repeats):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            return times
    else:
        def run(fn, repeats, warmup):
            for _ in range(warmup):
                fn()
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return times
    return run


def make_case(shape, batch, device, dtype=torch.float32, seed=0):
    name, c, h, w, co, k, stride, padding = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, c, h, w, generator=g, dtype=dtype).to(device)
    wt = torch.randn(co, c, k, k, generator=g, dtype=dtype).to(device)
    return x, wt, dict(stride=stride, padding=padding)


def impls():
    return {
        "adder2d": lambda x, w, kw: addernet_cuda.adder2d(x, w, None, **kw),
        "conv2d": lambda x, w, kw: F.conv2d(x, w, None, **kw),
        "reference": lambda x, w, kw: reference.adder2d(x, w, None, **kw),
    }


def fwd_bwd(fn, x, w, kw):
    xg, wg = x.detach().requires_grad_(), w.detach().requires_grad_()

    def run():
        y = fn(xg, wg, kw)
        y.backward(torch.ones_like(y))
        xg.grad = wg.grad = None

    return run


def measure_memory_cpu(shape_name, impl, batch):
    """Runs one forward+backward in a fresh subprocess; returns peak RSS growth in MiB."""
    cmd = [sys.executable, "-m", "benchmarks.bench_adder2d", "--memory-case", shape_name, impl, str(batch)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if out.returncode != 0:
        raise RuntimeError(f"memory case {shape_name}/{impl} failed: {out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def _status_kib(field):
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith(field + ":")))


def memory_case(shape_name, impl, batch):
    """Peak RSS growth (MiB) of one forward+backward after set-up. The kernel's peak-RSS mark is
    reset to the current RSS after set-up (/proc/self/clear_refs), so the import and set-up peaks
    do not count; ru_maxrss would also carry the parent's peak across fork+exec."""
    shape = next(s for s in RESNET20 if s[0] == shape_name)
    x, w, kw = make_case(shape, batch, "cpu")
    run = fwd_bwd(impls()[impl], x, w, kw)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    rss_after_setup = _status_kib("VmRSS")
    run()
    print((_status_kib("VmHWM") - rss_after_setup) / 1024)


def environment(device):
    info = {
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_isa": addernet_cuda.build_info()["cpu_isa"],
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu_model"] = platform.processor()
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                        cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except OSError:
        info["commit"] = None
    return info


def stats(times):
    return {"median_s": statistics.median(times), "p20_s": percentile(times, 0.2), "p80_s": percentile(times, 0.8),
            "runs": len(times)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--full", action="store_true", help="every ResNet-20 layer (default: a quick subset)")
    parser.add_argument("--batch", type=int, default=None, help="default 32 on CPU, 256 on CUDA")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--reference-repeats", type=int, default=3, help="the reference is slow: fewer runs")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--out", default=None, help="output folder (default benchmarks/out/)")
    parser.add_argument("--memory-case", nargs=3, metavar=("SHAPE", "IMPL", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_case:
        memory_case(args.memory_case[0], args.memory_case[1], int(args.memory_case[2]))
        return
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    batch = args.batch or (256 if device == "cuda" else 32)
    shapes = RESNET20 if args.full else [s for s in RESNET20 if s[0] in QUICK]
    out_dir = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
    os.makedirs(out_dir, exist_ok=True)
    run = timer(device)
    env = environment(device)
    env.update(batch=batch, repeats=args.repeats, reference_repeats=args.reference_repeats)
    print(f"adder2d benchmark on {env['device']} ({env.get('cpu_model')}), torch {env['torch']}, "
          f"{env['threads']} threads, batch {batch}", flush=True)
    rows = []
    for shape in shapes:
        x, w, kw = make_case(shape, batch, device)
        row = {"shape": shape[0], "C": shape[1], "H": shape[2], "W": shape[3], "Co": shape[4], "k": shape[5],
               "stride": shape[6], "padding": shape[7]}
        for impl, fn in impls().items():
            repeats = args.reference_repeats if impl == "reference" else args.repeats
            warmup = 1 if impl == "reference" else 2
            with torch.no_grad():
                row[f"{impl}.forward"] = stats(run(lambda: fn(x, w, kw), repeats, warmup))
            row[f"{impl}.forward_backward"] = stats(run(fwd_bwd(fn, x, w, kw), repeats, warmup))
            if not args.no_memory:
                if device == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                    fwd_bwd(fn, x, w, kw)()
                    torch.cuda.synchronize()
                    row[f"{impl}.peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
                else:
                    row[f"{impl}.peak_mib"] = measure_memory_cpu(shape[0], impl, batch)
        for what in ("forward", "forward_backward"):
            ours = row[f"adder2d.{what}"]["median_s"]
            row[f"{what}.vs_conv2d"] = ours / row[f"conv2d.{what}"]["median_s"]
            row[f"{what}.speedup_vs_reference"] = row[f"reference.{what}"]["median_s"] / ours
        if not args.no_memory:
            row["memory.vs_conv2d"] = row["adder2d.peak_mib"] / max(row["conv2d.peak_mib"], 1e-9)
        rows.append(row)
        print(format_row(row, args.no_memory), flush=True)
    result = {"environment": env, "device": device, "rows": rows}
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown(result, args.no_memory))
    print(markdown(result, args.no_memory))
    print(f"written to {out_dir}/results.json and results.md")


def format_row(row, no_memory):
    ms = lambda key: row[key]["median_s"] * 1e3  # noqa: E731
    text = (f"{row['shape']:>20}: forward {ms('adder2d.forward'):8.2f} ms ({row['forward.vs_conv2d']:.2f}x conv2d, "
            f"{row['forward.speedup_vs_reference']:.0f}x faster than reference); fwd+bwd "
            f"{ms('adder2d.forward_backward'):8.2f} ms ({row['forward_backward.vs_conv2d']:.2f}x conv2d)")
    if not no_memory:
        text += f"; peak memory {row['adder2d.peak_mib']:.1f} MiB ({row['memory.vs_conv2d']:.2f}x conv2d)"
    return text


def markdown(result, no_memory):
    env = result["environment"]
    lines = [
        f"adder2d benchmark: {env['device']} ({env.get('cpu_model')}), torch {env['torch']}, {env['threads']} threads, "
        f"CPU kernels {env['cpu_isa']}, batch {env['batch']}, commit {env.get('commit')}, {env['date']}",
        "",
        "Times are medians in ms [p20, p80]; ratios are ours / conv2d (lower is better) and reference / ours.",
        "",
        "| layer | adder2d fwd | conv2d fwd | reference fwd | fwd vs conv2d | fwd speed-up vs reference | "
        "adder2d fwd+bwd | conv2d fwd+bwd | fwd+bwd vs conv2d |" + (" peak MiB adder2d / conv2d / reference |" if not no_memory else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|" if not no_memory else ""),
    ]
    fmt = lambda s: f"{s['median_s'] * 1e3:.2f} [{s['p20_s'] * 1e3:.2f}, {s['p80_s'] * 1e3:.2f}]"  # noqa: E731
    for r in result["rows"]:
        line = (f"| {r['shape']} | {fmt(r['adder2d.forward'])} | {fmt(r['conv2d.forward'])} | {fmt(r['reference.forward'])} | "
                f"{r['forward.vs_conv2d']:.2f}x | {r['forward.speedup_vs_reference']:.0f}x | {fmt(r['adder2d.forward_backward'])} | "
                f"{fmt(r['conv2d.forward_backward'])} | {r['forward_backward.vs_conv2d']:.2f}x |")
        if not no_memory:
            line += f" {r['adder2d.peak_mib']:.1f} / {r['conv2d.peak_mib']:.1f} / {r['reference.peak_mib']:.1f} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
