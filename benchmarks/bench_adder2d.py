"""Benchmark of the adder2d kernels against the unfused reference (the official unfold
algorithm) and torch.nn.functional.conv2d on the same shapes, in one process.

For every shape: forward and forward+backward times of ours, conv2d's and the reference's
(median with p20/p80 of repeated runs after warm-up; CUDA timed with events, TF32 off for conv),
the forward's fraction of the register-resident float32 ceiling (CPU: measured in the same
rounds), and peak memory of forward+backward (CPU: a fresh subprocess per case, peak RSS minus the RSS
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
import statistics
import subprocess
import sys

import torch
import torch.nn.functional as F
from tqdm import tqdm

import addernet_cuda
from addernet_cuda import reference
from addernet_cuda._extension import _C
from addernet_cuda.ops import out_size

from ._common import (
    ROOT,
    git_commit,
    percentile,
    reset_peak_rss,
    stats,
    status_kib,
    time_calls,
)

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


def interleaved(run, fns, repeats, warmup, settle=()):
    """Times several functions in alternating rounds (one sample of each per round, the order
    rotated every round) so that load changes on the machine hit them alike. Each timed sample of
    a function named in ``settle`` follows one untimed call of it, so that what ran before (the
    register ceiling measured in the same rounds) does not count in it. Returns the times of
    each, by name, round by round."""
    names = list(fns)
    for name in names:
        run(fns[name], 0, warmup)
    times = {name: [] for name in names}
    for i in range(repeats):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            times[name] += run(fns[name], 1, 1 if name in settle else 0)
    return times


def ratio_stats(ours, theirs):
    """Median and p20/p80 of the per-round ratios ours[i] / theirs[i]."""
    ratios = [a / b for a, b in zip(ours, theirs)]
    return {
        "median": statistics.median(ratios),
        "p20": percentile(ratios, 0.2),
        "p80": percentile(ratios, 0.8),
    }


def spread(s):
    """A timing's relative spread: (p80 - p20) / median."""
    return (s["p80_s"] - s["p20_s"]) / s["median_s"]


class RegisterCeiling:
    """The forward's float32 ceiling on this machine: |x - w| terms per second of the CPU
    kernels' micro-tile arithmetic on registers (``_C.adder2d_register_ceiling``, the current
    instruction set's; at avx512 the faster of its AVX2 and AVX-512 forms), measured on
    ``threads`` threads at once, each in its own CPU time.
    Comparable with a layer's terms per second: per core (the threads' mean) when the layer is
    timed in process CPU time, which sums over threads; all cores (their sum) on the wall clock.
    Each call measures once (about ``seconds``) and appends the rate to ``rates``."""

    def __init__(self, threads, cpu_time, seconds=0.005):
        import concurrent.futures

        self.threads, self.cpu_time, self.rates = threads, cpu_time, []
        self.pool = concurrent.futures.ThreadPoolExecutor(threads)
        # terms/s; an iteration is 64 terms, and at avx512 a call times two loops (the faster
        # rate is returned), so it takes twice as long for the same iterations
        probe = _C.adder2d_register_ceiling(10000)
        loops = 2 if _C.cpu_isa() == "avx512" else 1
        self.iterations = max(1000, int(probe * seconds / 64 / loops))

    def __call__(self):
        per_thread = list(
            self.pool.map(
                lambda _: _C.adder2d_register_ceiling(self.iterations), range(self.threads)
            )
        )
        total = sum(per_thread)
        self.rates.append(total / self.threads if self.cpu_time else total)


def fraction_of_ceiling(terms_, forward_times, ceiling_rates):
    """Median [p20, p80] over rounds of the forward's terms per second / the ceiling's, the two
    measured in the same round."""
    fractions = [terms_ / t / c for t, c in zip(forward_times, ceiling_rates)]
    return {
        "median": statistics.median(fractions),
        "p20": percentile(fractions, 0.2),
        "p80": percentile(fractions, 0.8),
    }


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
    return conv2d_weight_grad(dy, x, w, kw) - w * dy.sum((0, 2, 3)).view(-1, 1, 1, 1)


def _pair(v):
    return list(v) if isinstance(v, (tuple, list)) else [v, v]


def _pairs(kw):
    """stride, padding and dilation of kw as [h, w] lists, as the raw ops take them."""
    return [_pair(kw[k]) for k in ("stride", "padding", "dilation")]


def _conv2d_backward(dy, x, w, kw, which):
    """The vendor convolution's backward (oneDNN on the CPU, cuDNN on CUDA) for the input
    (which=0) or the weight (which=1) alone."""
    mask = [which == 0, which == 1, False]
    return torch.ops.aten.convolution_backward(dy, x, w, None, *_pairs(kw), False, [0, 0], 1, mask)[
        which
    ]


def gradient_op(name, dy, x, w, kw, *mode):
    """addernet's gradient op `name`, called as adder2d's backward calls it: the op past its
    autograd layer, without the Python wrapper's argument checks (the C++ ones run)."""
    stride, padding, dilation = _pairs(kw)
    op = getattr(torch.ops.addernet, name).default
    groups = kw.get("groups", 1)
    return addernet_cuda.ops._below_autograd(op, dy, x, w, stride, padding, dilation, groups, *mode)


def conv2d_weight_grad(dy, x, w, kw):
    """conv2d's weight gradient alone."""
    return _conv2d_backward(dy, x, w, kw, 1)


def direct_weight_grad(dy, x, w, kw):
    """The direct CPU kernel, sum dY * (Xp - W) (ADDERNET_CPU_WEIGHT_GRAD=direct)."""
    previous = os.environ.get("ADDERNET_CPU_WEIGHT_GRAD")
    os.environ["ADDERNET_CPU_WEIGHT_GRAD"] = "direct"
    try:
        return gradient_op("adder2d_weight_grad", dy, x, w, kw)
    finally:
        if previous is None:
            del os.environ["ADDERNET_CPU_WEIGHT_GRAD"]
        else:
            os.environ["ADDERNET_CPU_WEIGHT_GRAD"] = previous


def weight_grad_comparison(x, w, kw, run, repeats):
    """Times, interleaved: our weight gradient (the default kernel), conv2d's weight gradient,
    the direct kernel (CPU) and the vendor decomposition; their max errors against float64."""
    dy = torch.randn(addernet_cuda.adder2d(x, w, None, **kw).shape, device=x.device, dtype=x.dtype)
    fns = {
        "ours": lambda: gradient_op("adder2d_weight_grad", dy, x, w, kw),
        "conv2d": lambda: conv2d_weight_grad(dy, x, w, kw),
        "vendor_decomposition": lambda: weight_grad_decomposition(dy, x, w, kw),
    }
    if x.device.type == "cpu":
        fns["direct"] = lambda: direct_weight_grad(dy, x, w, kw)
    times = interleaved(run, fns, repeats, 2)
    exact = addernet_cuda.ops.adder2d_weight_grad(dy.double(), x.double(), w.double(), **kw)
    scale = exact.abs().max().item()
    out = {f"weight_grad.{name}": stats(t) for name, t in times.items()}
    out["weight_grad.vs_conv2d"] = ratio_stats(times["ours"], times["conv2d"])
    for name in fns:
        if name != "conv2d":
            err = (fns[name]().double() - exact).abs().max().item() / scale
            out[f"weight_grad.{name}_max_rel_error"] = err
    return out


def conv2d_input_grad(dy, x, w, kw):
    """conv2d's input gradient alone."""
    return _conv2d_backward(dy, x, w, kw, 0)


def input_grad_comparison(x, w, kw, run, repeats):
    """Times, interleaved: our input gradient (AdderNet's HardTanh rule, the default) and conv2d's
    input gradient; measured alone rather than as forward+backward minus the rest."""
    dy = torch.randn(addernet_cuda.adder2d(x, w, None, **kw).shape, device=x.device, dtype=x.dtype)
    fns = {
        "ours": lambda: gradient_op("adder2d_input_grad", dy, x, w, kw, "hardtanh"),
        "conv2d": lambda: conv2d_input_grad(dy, x, w, kw),
    }
    times = interleaved(run, fns, repeats, 2)
    out = {f"input_grad.{name}": stats(t) for name, t in times.items()}
    out["input_grad.vs_conv2d"] = ratio_stats(times["ours"], times["conv2d"])
    return out


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


def peak_memory(device, impl, x, w, kw, shape, batch):
    """Peak memory (MiB) of one forward+backward of impl: CUDA allocator peak, or the peak RSS of
    a fresh subprocess on the CPU."""
    if device != "cuda":
        return measure_memory_cpu(shape[0], impl, batch)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fwd_bwd(impls()[impl], x, w, kw)()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


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
        # float32 forward micro-tile: (output channels, pixels, bytes per register)
        "cpu_forward_tile": list(_C.adder2d_cpu_forward_tile(False)),
        # bytes per register of the float32 input gradient's stride-1 loop
        "cpu_input_grad_register_bytes": _C.adder2d_cpu_input_grad_register_bytes(False),
        # bytes per register of the float32 weight gradient's FMAs
        "cpu_weight_grad_register_bytes": _C.adder2d_cpu_weight_grad_register_bytes(False),
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
    parser.add_argument(
        "--no-reference", action="store_true", help="skip the (slow) unfused reference"
    )
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="CPU: time with the process's CPU time instead of the wall clock (a loaded machine)",
    )
    parser.add_argument(
        "--cuda-burst",
        type=int,
        default=10,
        help="CUDA: calls per timed sample, queued back to back (1: one call between two events, "
        "which also times the host's work before the launch)",
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
    if args.cuda_burst < 1:
        parser.error(f"--cuda-burst must be >= 1, got {args.cuda_burst}")
    burst = args.cuda_burst if device == "cuda" else 1
    run = functools.partial(time_calls, device=device, cpu_time=args.cpu_time, burst=burst)
    env = environment(device)
    if device == "cuda":
        clock = f"CUDA events around {burst} back-to-back calls" if burst > 1 else "CUDA events"
    else:
        clock = "process CPU time" if args.cpu_time else "wall clock"
    env.update(
        repeats=args.repeats,
        reference_repeats=args.reference_repeats,
        cuda_burst=burst if device == "cuda" else None,
        clock=clock,
        load_average=round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None,
    )
    print(
        f"adder2d benchmark on {env['device']} ({env.get('cpu_model')}), torch {env['torch']}, "
        f"{env['threads']} threads",
        flush=True,
    )
    # float32 forward ceiling (CPU kernels only)
    ceiling = RegisterCeiling(env["threads"], args.cpu_time) if device == "cpu" else None
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
        if device == "cpu":  # which of the CPU forward's three layouts this shape takes
            d = _dilation(shape)
            row["cpu_forward_path"] = _C.adder2d_cpu_forward_path(
                tuple(x.shape), tuple(w.shape), (shape[6],) * 2, (shape[7],) * 2, (d, d), 1, False
            )
        fns = impls()
        for what in ("forward", "forward_backward"):
            # adder2d and conv2d interleaved: their ratio per round cancels the machine's load
            calls = {
                impl: (lambda fn=fns[impl]: fn(x, w, kw))
                if what == "forward"
                else fwd_bwd(fns[impl], x, w, kw)
                for impl in ("adder2d", "conv2d")
            }
            if what == "forward" and ceiling is not None:
                ceiling.rates = []
                calls["ceiling"] = ceiling  # measured in the same rounds as the forward
            with torch.set_grad_enabled(what != "forward"):
                # after the ceiling's 5 ms a ~1 ms forward took 0.3-0.4 ms longer (NOTES)
                times = interleaved(run, calls, args.repeats, 2, settle=("adder2d", "conv2d"))
            if times.pop("ceiling", None) is not None:
                rates = ceiling.rates[-args.repeats :]  # the timed rounds, warm-up left out
                row["ceiling_gterms_per_s"] = statistics.median(rates) / 1e9
                row["forward.fraction_of_ceiling"] = fraction_of_ceiling(
                    row["terms"], times["adder2d"], rates
                )
            for impl, t in times.items():
                row[f"{impl}.{what}"] = stats(t)
            ratio = ratio_stats(times["adder2d"], times["conv2d"])
            row[f"{what}.vs_conv2d"] = ratio["median"]
            row[f"{what}.vs_conv2d_p20_p80"] = [ratio["p20"], ratio["p80"]]
            row[f"conv2d.{what}_spread"] = spread(row[f"conv2d.{what}"])
        if args.no_reference:
            row["reference.skipped"] = "--no-reference"
        elif row["terms"] > REFERENCE_MAX_TERMS:
            row["reference.skipped"] = (
                f"{row['terms']:.2g} |x - w| terms per forward exceed "
                f"{REFERENCE_MAX_TERMS:.0e}: seconds to minutes per call"
            )
        else:
            ref = fns["reference"]
            with torch.no_grad():
                row["reference.forward"] = stats(
                    run(lambda: ref(x, w, kw), args.reference_repeats, 1)
                )
            row["reference.forward_backward"] = stats(
                run(fwd_bwd(ref, x, w, kw), args.reference_repeats, 1)
            )
        for impl in fns:
            if not args.no_memory and not (impl == "reference" and "reference.skipped" in row):
                row[f"{impl}.peak_mib"] = peak_memory(device, impl, x, w, kw, shape, batch)
        for what in ("forward", "forward_backward"):
            ours = row[f"adder2d.{what}"]["median_s"]
            if f"reference.{what}" in row:
                row[f"{what}.speedup_vs_reference"] = row[f"reference.{what}"]["median_s"] / ours
        row.update(input_grad_comparison(x, w, kw, run, args.repeats))
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


def forward_tile(env):
    """' (float32 forward micro-tile 8 x 16 in 64-byte registers, input gradient in 64-byte
    registers, weight gradient in 64-byte registers)', or '' where not recorded."""
    tile = env.get("cpu_forward_tile")
    if not tile:
        return ""
    text = f" (float32 forward micro-tile {tile[0]} x {tile[1]} in {tile[2]}-byte registers"
    if env.get("cpu_input_grad_register_bytes"):
        text += f", input gradient in {env['cpu_input_grad_register_bytes']}-byte registers"
    if env.get("cpu_weight_grad_register_bytes"):
        text += f", weight gradient in {env['cpu_weight_grad_register_bytes']}-byte registers"
    return text + ")"


def markdown(result, no_memory):
    env = result["environment"]
    rows = result["rows"]
    lines = [
        f"adder2d benchmark on {result['device']}: {env['device']} ({env.get('cpu_model')}), torch {env['torch']}, "
        f"{env['threads']} threads, CPU kernels {env['cpu_isa']}{forward_tile(env)}, commit {env.get('commit')}, {env['date']}, "
        f"timed by {env.get('clock', 'wall clock')}, load average at the start {env.get('load_average')}",
        "",
        "Times are medians in ms [p20, p80] of repeated runs after warm-up (on CUDA, time per call "
        "of a burst of back-to-back calls). adder2d and conv2d run interleaved (one sample of each "
        "per round; on the forward each timed call follows an untimed call of the same function, "
        "so that the ceiling measured in the same rounds does not slow the call after it): "
        "`vs conv2d` is the median [p20, p80] of the "
        "per-round ratios our time / conv2d's (lower is better), `conv2d spread` conv2d's own "
        "(p80 - p20) / median, the noise a ratio carries. `vs reference`: the reference's time / "
        "ours. Gterm/s: |x - w| terms per second. `% of ceiling`: the forward's Gterm/s over the "
        "register-resident ceiling (`ceiling`: the CPU kernels' float32 micro-tile arithmetic on "
        "registers, at avx512 the faster of its AVX2 and AVX-512 forms, per core in CPU time and "
        "on all cores on the wall clock), median [p20, p80] "
        "of the per-round ratios, the two measured in the same rounds, and the CPU forward's path "
        "(batch: a vector holds one pixel of several images; direct: a vector holds pixels of one "
        "output row; packed: pixels packed into panels).",
        "",
        "| layer | batch | adder2d fwd | conv2d fwd | reference fwd | fwd vs conv2d | conv2d spread | "
        "fwd vs reference | Gterm/s | ceiling Gterm/s | % of ceiling | adder2d fwd+bwd | "
        "conv2d fwd+bwd | fwd+bwd vs conv2d | conv2d spread |"
        + (" peak MiB adder2d / conv2d / reference |" if not no_memory else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        + ("---|" if not no_memory else ""),
    ]
    fmt = lambda s: f"{s['median_s'] * 1e3:.2f} [{s['p20_s'] * 1e3:.2f}, {s['p80_s'] * 1e3:.2f}]"  # noqa: E731

    def ratio(r, what):
        lo, hi = r.get(f"{what}.vs_conv2d_p20_p80", [r[f"{what}.vs_conv2d"]] * 2)
        return f"{r[f'{what}.vs_conv2d']:.2f}x [{lo:.2f}, {hi:.2f}]"

    def conv_spread(r, what):
        return f"{r.get(f'conv2d.{what}_spread', spread(r[f'conv2d.{what}'])):.0%}"

    def of_ceiling(r):
        f = r.get("forward.fraction_of_ceiling")
        if f is None:
            return "-", "-"
        path = f", {r['cpu_forward_path']}" if "cpu_forward_path" in r else ""
        return (
            f"{r['ceiling_gterms_per_s']:.1f}",
            f"{f['median']:.0%} [{f['p20']:.0%}, {f['p80']:.0%}]{path}",
        )

    for r in rows:
        ref = fmt(r["reference.forward"]) if "reference.forward" in r else "skipped"
        ceiling, of = of_ceiling(r)
        vs_ref = (
            f"{r['forward.speedup_vs_reference']:.0f}x"
            if "forward.speedup_vs_reference" in r
            else "-"
        )
        line = (
            f"| {r['shape']} | {r['batch']} | {fmt(r['adder2d.forward'])} | {fmt(r['conv2d.forward'])} | {ref} | "
            f"{ratio(r, 'forward')} | {conv_spread(r, 'forward')} | {vs_ref} | "
            f"{r['adder2d.forward_gterms_per_s']:.1f} | {ceiling} | {of} | "
            f"{fmt(r['adder2d.forward_backward'])} | {fmt(r['conv2d.forward_backward'])} | "
            f"{ratio(r, 'forward_backward')} | {conv_spread(r, 'forward_backward')} |"
        )
        if not no_memory:
            ref_mem = f"{r['reference.peak_mib']:.1f}" if "reference.peak_mib" in r else "skipped"
            line += f" {r['adder2d.peak_mib']:.1f} / {r['conv2d.peak_mib']:.1f} / {ref_mem} |"
        lines.append(line)
    lines += [
        "",
        "Input gradient alone, interleaved: ours (`adder2d_input_grad`, the HardTanh rule "
        "`sum dY*clamp(W - X, -1, 1)`) and conv2d's input gradient.",
        "",
        "| layer | ours ms | conv2d ms | ours vs conv2d | conv2d spread |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if "input_grad.ours" not in r:
            continue
        v = r["input_grad.vs_conv2d"]
        lines.append(
            f"| {r['shape']} | {r['input_grad.ours']['median_s'] * 1e3:.2f} | "
            f"{r['input_grad.conv2d']['median_s'] * 1e3:.2f} | "
            f"{v['median']:.2f}x [{v['p20']:.2f}, {v['p80']:.2f}] | "
            f"{spread(r['input_grad.conv2d']):.0%} |"
        )
    lines += [
        "",
        "Weight gradient alone, interleaved: ours (the default kernel: on the CPU the decomposition "
        "`sum dY*(Xp - c) - (W - c)*sum dY`, deterministic), conv2d's weight gradient, the direct "
        "kernel `sum dY*(Xp - W)` (CPU) and the vendor decomposition `conv_weight_grad(Xp, dY) - "
        "W*sum(dY)` (not deterministic across thread counts). Errors: max |dW - exact| / max |exact|, "
        "exact = the float64 kernel.",
        "",
        "| layer | ours ms | conv2d ms | ours vs conv2d | conv2d spread | direct ms | vendor decomposition ms "
        "| ours error | direct error | vendor decomposition error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "weight_grad.ours" not in r:
            continue
        ms = lambda key: f"{r[key]['median_s'] * 1e3:.2f}" if key in r else "-"  # noqa: E731
        err = lambda key: f"{r[key]:.1e}" if key in r else "-"  # noqa: E731
        v = r["weight_grad.vs_conv2d"]
        lines.append(
            f"| {r['shape']} | {ms('weight_grad.ours')} | {ms('weight_grad.conv2d')} | "
            f"{v['median']:.2f}x [{v['p20']:.2f}, {v['p80']:.2f}] | "
            f"{spread(r['weight_grad.conv2d']):.0%} | {ms('weight_grad.direct')} | "
            f"{ms('weight_grad.vendor_decomposition')} | {err('weight_grad.ours_max_rel_error')} | "
            f"{err('weight_grad.direct_max_rel_error')} | "
            f"{err('weight_grad.vendor_decomposition_max_rel_error')} |"
        )
    lines.append("")
    for family in dict.fromkeys(r["family"] for r in rows):
        fam = [r for r in rows if r["family"] == family]
        lines.append(
            f"- {family}: geometric mean over {len(fam)} layers: forward "
            f"{geomean([r['forward.vs_conv2d'] for r in fam]):.2f}x conv2d, forward+backward "
            f"{geomean([r['forward_backward.vs_conv2d'] for r in fam]):.2f}x conv2d, "
            + (
                f"input gradient {geomean([r['input_grad.vs_conv2d']['median'] for r in fam]):.2f}x "
                "conv2d's, "
                if all("input_grad.vs_conv2d" in r for r in fam)
                else ""
            )
            + "weight "
            f"gradient {geomean([r.get('weight_grad.vs_conv2d', {}).get('median') for r in fam]):.2f}x "
            "conv2d's"
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
