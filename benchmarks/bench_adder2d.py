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
import functools
import json
import math
import os
import platform
import subprocess
import sys

import torch
import torch.nn.functional as F
from tqdm import tqdm

import addernet_cuda
from addernet_cuda import reference
from addernet_cuda.ops import out_size

from ._common import ROOT, git_commit, reset_peak_rss, stats, status_kib, time_calls

# Adder layers of the paper's networks: (name, C, H, W, Co, k, stride, padding), with the batch
# per family on (CPU, CUDA). The first conv and the classifier stay multiplicative, so they are
# not here.
FAMILIES = {
    "resnet20": (
        (32, 256),
        [
            ("res20.s1.3x3", 16, 32, 32, 16, 3, 1, 1),
            ("res20.s2.down3x3", 16, 32, 32, 32, 3, 2, 1),
            ("res20.s2.3x3", 32, 16, 16, 32, 3, 1, 1),
            ("res20.s2.short1x1", 16, 32, 32, 32, 1, 2, 0),
            ("res20.s3.down3x3", 32, 16, 16, 64, 3, 2, 1),
            ("res20.s3.3x3", 64, 8, 8, 64, 3, 1, 1),
            ("res20.s3.short1x1", 32, 16, 16, 64, 1, 2, 0),
        ],
    ),
    "vgg_small": (
        (32, 256),
        [
            ("vgg.c2", 128, 32, 32, 128, 3, 1, 1),
            ("vgg.c3", 128, 16, 16, 256, 3, 1, 1),
            ("vgg.c4", 256, 16, 16, 256, 3, 1, 1),
            ("vgg.c5", 256, 8, 8, 512, 3, 1, 1),
            ("vgg.c6", 512, 8, 8, 512, 3, 1, 1),
        ],
    ),
    "resnet18": (
        (8, 64),
        [
            ("res18.l1.3x3", 64, 56, 56, 64, 3, 1, 1),
            ("res18.l2.down3x3", 64, 56, 56, 128, 3, 2, 1),
            ("res18.l2.3x3", 128, 28, 28, 128, 3, 1, 1),
            ("res18.l2.short1x1", 64, 56, 56, 128, 1, 2, 0),
            ("res18.l3.down3x3", 128, 28, 28, 256, 3, 2, 1),
            ("res18.l3.3x3", 256, 14, 14, 256, 3, 1, 1),
            ("res18.l4.down3x3", 256, 14, 14, 512, 3, 2, 1),
            ("res18.l4.3x3", 512, 7, 7, 512, 3, 1, 1),
        ],
    ),
    "lenet5": (
        (32, 256),
        [
            ("lenet5.c2", 6, 14, 14, 16, 5, 1, 0),
        ],
    ),
}
SHAPES = {
    shape[0]: (family, batches, shape)
    for family, (batches, shapes) in FAMILIES.items()
    for shape in shapes
}
QUICK = ["res20.s1.3x3", "res20.s2.down3x3", "res20.s2.3x3", "res20.s3.3x3", "lenet5.c2"]
# The reference materialises chunk x taps x N*L elements per step and takes seconds per call
# beyond this many |x - w| terms; it is skipped above it, with the reason recorded.
REFERENCE_MAX_TERMS = 3e9


def _dilation(shape):
    """A shape is (name, C, H, W, Co, k, stride, padding) with an optional dilation last."""
    return shape[8] if len(shape) > 8 else 1


def make_case(shape, batch, device, dtype=torch.float32, seed=0):
    name, c, h, w, co, k, stride, padding = shape[:8]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, c, h, w, generator=g, dtype=dtype).to(device)
    wt = torch.randn(co, c, k, k, generator=g, dtype=dtype).to(device)
    return x, wt, dict(stride=stride, padding=padding, dilation=_dilation(shape))


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


def weight_grad_decomposition(dy, x, w, kw):
    """dW = conv_weight_grad(Xp, dY) - W * sum_{n,oh,ow} dY[n, co]: the vendor convolution's weight
    gradient (oneDNN on the CPU, cuDNN on CUDA) minus W scaled per output channel."""
    stride, padding, dilation = (_pair(kw[k]) for k in ("stride", "padding", "dilation"))
    _, gw, _ = torch.ops.aten.convolution_backward(
        dy, x, w, None, stride, padding, dilation, False, [0, 0], 1, [False, True, False]
    )
    return gw - w * dy.sum((0, 2, 3)).view(-1, 1, 1, 1)


def _pair(v):
    return list(v) if isinstance(v, (tuple, list)) else [v, v]


def weight_grad_comparison(x, w, kw, run, repeats):
    """Times the direct weight-gradient kernel and the decomposition; their max relative gap."""
    dy = torch.randn(addernet_cuda.adder2d(x, w, None, **kw).shape, device=x.device, dtype=x.dtype)
    direct = lambda: addernet_cuda.ops.adder2d_weight_grad(dy, x, w, **kw)  # noqa: E731
    decomposed = lambda: weight_grad_decomposition(dy, x, w, kw)  # noqa: E731
    exact = addernet_cuda.ops.adder2d_weight_grad(dy.double(), x.double(), w.double(), **kw)
    scale = exact.abs().max().item()
    return {
        "weight_grad.direct": stats(run(direct, repeats, 2)),
        "weight_grad.decomposition": stats(run(decomposed, repeats, 2)),
        "weight_grad.direct_max_rel_error": (direct().double() - exact).abs().max().item() / scale,
        "weight_grad.decomposition_max_rel_error": (decomposed().double() - exact)
        .abs()
        .max()
        .item()
        / scale,
    }


def measure_memory_cpu(shape_name, impl, batch):
    """Runs one forward+backward in a fresh subprocess; returns peak RSS growth in MiB."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.bench_adder2d",
        "--memory-case",
        shape_name,
        impl,
        str(batch),
    ]
    out = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    if out.returncode != 0:
        raise RuntimeError(f"memory case {shape_name}/{impl} failed: {out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def terms(shape, batch):
    """Number of |x - w| terms of one forward: N * OH * OW * Co * C * k * k, where
    OH = floor((H + 2p - d(k-1) - 1) / s) + 1 (likewise OW) with the dilation d."""
    name, c, h, w, co, k, stride, padding = shape[:8]
    d = _dilation(shape)
    oh = out_size(h, k, stride, padding, d)
    ow = out_size(w, k, stride, padding, d)
    return batch * oh * ow * co * c * k * k


def memory_case(shape_name, impl, batch):
    """Peak RSS growth (MiB) of one forward+backward after set-up. The kernel's peak-RSS mark is
    reset to the current RSS after set-up (/proc/self/clear_refs), so the import and set-up peaks
    do not count; ru_maxrss would also carry the parent's peak across fork+exec."""
    x, w, kw = make_case(SHAPES[shape_name][2], batch, "cpu")
    run = fwd_bwd(impls()[impl], x, w, kw)
    reset_peak_rss()
    rss_after_setup = status_kib("VmRSS")
    run()
    print((status_kib("VmHWM") - rss_after_setup) / 1024)


def environment(device):
    info = {
        "device": torch.cuda.get_device_name()
        if device == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_isa": addernet_cuda.build_info()["cpu_isa"],
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        info["cpu_model"] = platform.processor()
    info["commit"] = git_commit()
    return info


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--full",
        action="store_true",
        help="every layer of ResNet-20, VGG-small, ResNet-18 and LeNet-5 (default: a quick subset)",
    )
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), help="these layers only")
    parser.add_argument(
        "--batch",
        type=int,
        default=None,
        help="default per family: 32 on CPU, 256 on CUDA (ResNet-18: 8 and 64)",
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--reference-repeats", type=int, default=3, help="the reference is slow: fewer runs"
    )
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the peak-memory measurements"
    )
    parser.add_argument("--out", default=None, help="output folder (default benchmarks/out/)")
    parser.add_argument(
        "--memory-case", nargs=3, metavar=("SHAPE", "IMPL", "BATCH"), help=argparse.SUPPRESS
    )
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
    names = args.shapes or (list(SHAPES) if args.full else QUICK)
    out_dir = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
    os.makedirs(out_dir, exist_ok=True)
    run = functools.partial(time_calls, device=device)
    env = environment(device)
    env.update(repeats=args.repeats, reference_repeats=args.reference_repeats)
    print(
        f"adder2d benchmark on {env['device']} ({env.get('cpu_model')}), torch {env['torch']}, "
        f"{env['threads']} threads",
        flush=True,
    )
    rows = []
    for name in tqdm(names, desc="layers", disable=None):
        family, batches, shape = SHAPES[name]
        batch = args.batch or batches[device == "cuda"]
        x, w, kw = make_case(shape, batch, device)
        row = {
            "shape": name,
            "family": family,
            "batch": batch,
            "C": shape[1],
            "H": shape[2],
            "W": shape[3],
            "Co": shape[4],
            "k": shape[5],
            "stride": shape[6],
            "padding": shape[7],
            "dilation": _dilation(shape),
            "terms": terms(shape, batch),
        }
        for impl, fn in impls().items():
            if impl == "reference" and row["terms"] > REFERENCE_MAX_TERMS:
                row["reference.skipped"] = (
                    f"{row['terms']:.2g} |x - w| terms per forward exceed "
                    f"{REFERENCE_MAX_TERMS:.0e}: seconds to minutes per call"
                )
                continue
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
                    row[f"{impl}.peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
                else:
                    row[f"{impl}.peak_mib"] = measure_memory_cpu(shape[0], impl, batch)
        for what in ("forward", "forward_backward"):
            ours = row[f"adder2d.{what}"]["median_s"]
            row[f"{what}.vs_conv2d"] = ours / row[f"conv2d.{what}"]["median_s"]
            if f"reference.{what}" in row:
                row[f"{what}.speedup_vs_reference"] = row[f"reference.{what}"]["median_s"] / ours
        row.update(weight_grad_comparison(x, w, kw, run, args.repeats))
        row["adder2d.forward_gterms_per_s"] = (
            row["terms"] / row["adder2d.forward"]["median_s"] / 1e9
        )
        if not args.no_memory:
            row["memory.vs_conv2d"] = row["adder2d.peak_mib"] / max(row["conv2d.peak_mib"], 1e-9)
        rows.append(row)
        tqdm.write(format_row(row, args.no_memory))
    result = {"environment": env, "device": device, "rows": rows}
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown(result, args.no_memory))
    print(markdown(result, args.no_memory))
    written = plot(result, os.path.join(out_dir, "results.png"))
    print(f"written to {out_dir}: results.json, results.md" + (", results.png" if written else ""))


def geomean(values):
    values = [v for v in values if v is not None]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def plot(result, path):
    """Bar chart of time per layer relative to conv2d (forward and forward+backward)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    rows = result["rows"]
    names = [r["shape"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(rows) + 2), 4))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["forward.vs_conv2d"] for r in rows], 0.4, label="forward")
    ax.bar(
        [x + 0.2 for x in xs],
        [r["forward_backward.vs_conv2d"] for r in rows],
        0.4,
        label="forward+backward",
    )
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("adder2d time / conv2d time")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    env = result["environment"]
    ax.set_title(f"adder2d vs conv2d on {env['device']}, torch {env['torch']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def format_row(row, no_memory):
    ms = lambda key: row[key]["median_s"] * 1e3  # noqa: E731
    vs_ref = row.get("forward.speedup_vs_reference")
    text = (
        f"{row['shape']:>18}: forward {ms('adder2d.forward'):8.2f} ms ({row['forward.vs_conv2d']:.2f}x conv2d, "
        + (f"{vs_ref:.0f}x faster than reference" if vs_ref else "reference skipped")
        + f"); fwd+bwd {ms('adder2d.forward_backward'):8.2f} ms ({row['forward_backward.vs_conv2d']:.2f}x conv2d)"
    )
    if not no_memory:
        text += f"; peak memory {row['adder2d.peak_mib']:.1f} MiB ({row['memory.vs_conv2d']:.2f}x conv2d)"
    return text


def markdown(result, no_memory):
    env = result["environment"]
    rows = result["rows"]
    lines = [
        f"adder2d benchmark on {result['device']}: {env['device']} ({env.get('cpu_model')}), torch {env['torch']}, "
        f"{env['threads']} threads, CPU kernels {env['cpu_isa']}, commit {env.get('commit')}, {env['date']}",
        "",
        "Times are medians in ms [p20, p80] of repeated runs after warm-up; `vs conv2d` is our time / conv2d's "
        "(lower is better), `vs reference` the reference's time / ours. Gterm/s: |x - w| terms per second.",
        "",
        "| layer | batch | adder2d fwd | conv2d fwd | reference fwd | fwd vs conv2d | fwd vs reference | Gterm/s | "
        "adder2d fwd+bwd | conv2d fwd+bwd | fwd+bwd vs conv2d |"
        + (" peak MiB adder2d / conv2d / reference |" if not no_memory else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if not no_memory else ""),
    ]
    fmt = lambda s: f"{s['median_s'] * 1e3:.2f} [{s['p20_s'] * 1e3:.2f}, {s['p80_s'] * 1e3:.2f}]"  # noqa: E731
    for r in rows:
        ref = fmt(r["reference.forward"]) if "reference.forward" in r else "skipped"
        vs_ref = (
            f"{r['forward.speedup_vs_reference']:.0f}x"
            if "forward.speedup_vs_reference" in r
            else "-"
        )
        line = (
            f"| {r['shape']} | {r['batch']} | {fmt(r['adder2d.forward'])} | {fmt(r['conv2d.forward'])} | {ref} | "
            f"{r['forward.vs_conv2d']:.2f}x | {vs_ref} | {r['adder2d.forward_gterms_per_s']:.1f} | "
            f"{fmt(r['adder2d.forward_backward'])} | {fmt(r['conv2d.forward_backward'])} | "
            f"{r['forward_backward.vs_conv2d']:.2f}x |"
        )
        if not no_memory:
            ref_mem = f"{r['reference.peak_mib']:.1f}" if "reference.peak_mib" in r else "skipped"
            line += f" {r['adder2d.peak_mib']:.1f} / {r['conv2d.peak_mib']:.1f} / {ref_mem} |"
        lines.append(line)
    lines += [
        "",
        "Weight gradient: the direct kernel (default: deterministic) against the decomposition "
        "`conv_weight_grad(Xp, dY) - W * sum(dY)` through the vendor convolution; errors are max |dW - exact| / "
        "max |exact|, exact = the float64 kernel.",
        "",
        "| layer | direct ms | decomposition ms | decomposition / direct | direct error | decomposition error |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        d, c = r["weight_grad.direct"]["median_s"], r["weight_grad.decomposition"]["median_s"]
        lines.append(
            f"| {r['shape']} | {d * 1e3:.2f} | {c * 1e3:.2f} | {c / d:.2f}x | "
            f"{r['weight_grad.direct_max_rel_error']:.1e} | {r['weight_grad.decomposition_max_rel_error']:.1e} |"
        )
    lines.append("")
    for family in dict.fromkeys(r["family"] for r in rows):
        fam = [r for r in rows if r["family"] == family]
        lines.append(
            f"- {family}: geometric mean over {len(fam)} layers: forward "
            f"{geomean([r['forward.vs_conv2d'] for r in fam]):.2f}x conv2d, forward+backward "
            f"{geomean([r['forward_backward.vs_conv2d'] for r in fam]):.2f}x conv2d"
            + (
                f", forward {geomean([r.get('forward.speedup_vs_reference') for r in fam]):.0f}x faster than the reference"
                if any("forward.speedup_vs_reference" in r for r in fam)
                else ""
            )
        )
    skipped = [f"{r['shape']} ({r['reference.skipped']})" for r in rows if "reference.skipped" in r]
    if skipped:
        lines.append("- reference skipped: " + "; ".join(skipped))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
