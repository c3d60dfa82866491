"""The 8-bit rows of the adder2d benchmark: int8 adder forward against float32 conv2d and
PyTorch's int8 convolution on the same layers, in one process, with interleaved runs.

Per layer (batch 32 by default), each timed float32 in, float32 out:

- ``int8 adder``: the op ``torch.ops.addernet.adder2d_int8`` as ``QuantizedAdderConv2d`` calls it
  on the CPU (its C++ entry checks the arguments; the Python wrapper ``ops.adder2d_int8`` adds
  about 20 us of checks in front), on the channels-last float input PyTorch's int8 row gets: it
  quantizes the input inside, runs the byte-SAD GEMM (or the min + dot GEMM on AVX-512 VNNI for
  long reductions) and the float32 epilogue, with the weight codes prepared beforehand, and
  returns channels-last output; ``int8 adder (NCHW)``: the same on contiguous NCHW input and
  output (the op then transposes the input into its channels-last codes);
- ``conv2d``: ``torch.nn.functional.conv2d`` in float32 (NCHW);
- ``torch int8 conv``: ``torch.ao.nn.quantized.Conv2d`` on the x86 engine: ``quantize_per_tensor``
  of a channels-last float input to quint8, the convolution (per-channel qint8 weights), then
  ``dequantize``; also timed int8 in, int8 out (the convolution alone). Skipped with the reason
  where these deprecated APIs are gone.

Runs are interleaved (one call of each implementation per round) and medians reported, so a
change in machine load hits all alike; on one thread (the default) the clock is the thread's CPU
time, which leaves out the time the process spends descheduled on a shared machine. The rounds rotate the order of the implementations, so that none always runs right after the
same other one. The byte-SAD ceiling (``_C.int8_sad_ceiling``: a register-resident vpsadbw +
vpaddq loop, on zmm where the AVX-512 kernels run, one per thread, run concurrently) and, where the AVX-512 kernels are in use, the
min + dot ceiling (``_C.int8_min_dot_ceiling``: vpminub + vpdpbusd on 64 bytes) are measured in
the same run, and each layer's rate is compared with the ceiling of the kernel it runs; ``G taps/s`` counts real |x - w| terms, ``bytes/s`` the padded bytes the kernel sums
(channels padded to 8). Also one whole ResNet-20 ANN forward quantized to int8
against its float32 CNN twin (and the float32 ANN).

    python -m benchmarks.bench_adder2d_int8                  # every ResNet-20, VGG-small, LeNet-5 layer
    python -m benchmarks.bench_adder2d_int8 --repeats 30 --shapes res20.s3.3x3
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import resource
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

import addernet_cuda
from addernet_cuda import reference
from addernet_cuda._extension import _C
from addernet_cuda.models import resnet20
from addernet_cuda.nn.quantized import recalibrate_batchnorm

from .bench_adder2d import FAMILIES, SHAPES, environment, percentile, terms

INT8_FAMILIES = ("resnet20", "vgg_small", "lenet5")


def _concurrent_rate(loop, bytes_per_iteration: int, threads: int, seconds: float) -> float:
    """Byte-taps per second of a register-resident ceiling loop on ``threads`` threads at once."""
    iterations = max(1, int(loop(10000) * seconds / bytes_per_iteration))
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(lambda _: loop(iterations), range(threads)))


def sad_ceiling(threads: int, seconds: float = 0.3) -> float:
    """Byte-taps per second of the register-resident vpsadbw + vpaddq loop, on zmm at cpu_isa
    "avx512" (the AVX-512 kernels'), else on ymm (the AVX2 kernels')."""
    width = 64 if _C.cpu_isa() == "avx512" else 32
    return _concurrent_rate(_C.int8_sad_ceiling, 12 * width, threads, seconds)


def min_dot_ceiling(threads: int, seconds: float = 0.3) -> float | None:
    """Byte-taps per second of the register-resident vpminub + vpdpbusd loop (the AVX-512
    kernels'), or None where they are not in use."""
    if _C.cpu_isa() != "avx512":
        return None
    return _concurrent_rate(_C.int8_min_dot_ceiling, 12 * 64, threads, seconds)


def kernel_of(shape) -> str:
    """Which byte sums adder2d_int8's CPU GEMM runs on a layer: vpminub + vpdpbusd at "avx512"
    on reductions of at least ``int8_min_dot_min_bytes`` bytes, else vpsadbw (zmm at "avx512")."""
    _, c, _, _, _, k, _, _ = shape
    kq = k * k * (-(-c // 8) * 8)
    info = addernet_cuda.build_info()
    if info["cpu_isa"] == "avx512" and kq >= info["int8_min_dot_min_bytes"]:
        return "min_dot"
    return "sad" if info["cpu_isa"] in ("avx2", "avx512") else "base"


def torch_int8_conv(x, w, stride, padding):
    """(float in/out callable, int8 in/out callable) of torch.ao's quantized Conv2d, or a reason."""
    try:
        torch.backends.quantized.engine = "x86"
        from torch.ao.nn.quantized import Conv2d as QConv2d
    except (ImportError, RuntimeError, AttributeError) as error:
        return None, None, f"torch.ao.nn.quantized.Conv2d / the x86 engine unavailable: {error}"
    co, c, k = w.shape[0], w.shape[1], w.shape[2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qconv = QConv2d(c, co, k, stride=stride, padding=padding, bias=False)
        w_scales = (w.abs().amax((1, 2, 3)) / 127).clamp_min(1e-8).double()
        qw = torch.quantize_per_channel(
            w, w_scales, torch.zeros(co, dtype=torch.long), 0, torch.qint8
        )
        qconv.set_weight_bias(qw, None)
        y = F.conv2d(x, w, None, stride, padding)
        qconv.scale, qconv.zero_point = float((y.max() - y.min()) / 255), int(128)
    x_scale = float(x.abs().max() / 127)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    xq = torch.quantize_per_tensor(x_cl, x_scale, 128, torch.quint8)

    def float_path():
        return qconv(torch.quantize_per_tensor(x_cl, x_scale, 128, torch.quint8)).dequantize()

    return float_path, (lambda: qconv(xq)), None


def clock():
    """The timer: this thread's CPU time on one thread (time spent descheduled by other work on a
    shared machine does not count), wall time on several (OpenMP workers are other threads)."""
    return time.thread_time if torch.get_num_threads() == 1 else time.perf_counter


def minor_faults() -> int:
    """Minor page faults of this process so far (first touches of memory handed out afresh by the
    OS: on this kind of virtual machine a few microseconds each, charged to the CPU time)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def interleaved(fns: dict, repeats: int, warmup: int = 2) -> dict:
    """Medians [p20, p80] of ``repeats`` rounds, each calling every function once, and the
    mean page faults per call. The order rotates from round to round, so that no implementation
    always runs right after the same other one (whose memory traffic and freed allocations the
    next call inherits)."""
    now = clock()
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    times = {name: [] for name in fns}
    faults = dict.fromkeys(fns, 0)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn = fns[name]
            f0 = minor_faults()
            t0 = now()
            fn()
            times[name].append(now() - t0)
            faults[name] += minor_faults() - f0
    return {
        name: {
            "median_s": statistics.median(t),
            "p20_s": percentile(t, 0.2),
            "p80_s": percentile(t, 0.8),
            "page_faults_per_call": faults[name] / repeats,
        }
        for name, t in times.items()
    }


def layer_row(name: str, batch: int, repeats: int) -> dict:
    family, _, shape = SHAPES[name]
    _, c, h, w_, co, k, stride, padding = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, c, h, w_, generator=g).relu()
    w = torch.randn(co, c, k, k, generator=g)
    scale = torch.tensor([float(max(x.abs().max(), w.abs().max())) / 127])
    wq = reference.quantize_codes(w, scale)
    alpha, beta = -scale.expand(co).contiguous(), torch.zeros(co)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    fns = {
        # The call QuantizedAdderConv2d makes on the CPU: the op itself, whose C++ entry checks
        # the arguments (ops.adder2d_int8 adds about 20 us of Python checks in front).
        "int8_adder": lambda: torch.ops.addernet.adder2d_int8(
            x_cl, wq, scale, alpha, beta, [stride] * 2, [padding] * 2, [1, 1], 1, False
        ),
        "int8_adder.nchw": lambda: torch.ops.addernet.adder2d_int8(
            x, wq, scale, alpha, beta, [stride] * 2, [padding] * 2, [1, 1], 1, False
        ),
        "conv2d": lambda: F.conv2d(x, w, None, stride, padding),
    }
    float_path, int8_path, reason = torch_int8_conv(x, w, stride, padding)
    if reason is None:
        fns["torch_int8_conv"] = float_path
        fns["torch_int8_conv.int8_io"] = int8_path
    with torch.no_grad():
        timed = interleaved(fns, repeats)
    n_terms = terms(shape, batch)
    cpg = -(-c // 8) * 8
    padded = n_terms // (c * k * k) * (cpg * k * k)
    row = {"shape": name, "family": family, "batch": batch, "terms": n_terms, **timed}
    row["int8_adder.kernel"] = kernel_of(shape)
    ours = timed["int8_adder"]["median_s"]
    row["int8_adder.vs_conv2d"] = ours / timed["conv2d"]["median_s"]
    row["int8_adder.gterms_per_s"] = n_terms / ours / 1e9
    row["int8_adder.padded_gbytes_per_s"] = padded / ours / 1e9
    if reason is None:
        row["int8_adder.vs_torch_int8"] = ours / timed["torch_int8_conv"]["median_s"]
        row["int8_adder.nchw.vs_torch_int8"] = (
            timed["int8_adder.nchw"]["median_s"] / timed["torch_int8_conv"]["median_s"]
        )
        row["torch_int8_conv.vs_conv2d"] = (
            timed["torch_int8_conv"]["median_s"] / timed["conv2d"]["median_s"]
        )
    else:
        row["torch_int8_conv.skipped"] = reason
    return row


def resnet20_row(batch: int, repeats: int) -> dict:
    """Whole ResNet-20 forward: int8 ANN (quantized, BN statistics from random calibration
    images) against the float32 CNN twin and the float32 ANN, interleaved; also the int8 ANN
    quantized without simplification (``quantize(simplify=False)``: the fused layers' redundant
    float work kept), and the int8 ANN and the CNN twin on a channels-last input (every layer then
    works channels-last, the int8 ops included)."""
    torch.manual_seed(0)
    calib = [torch.randn(32, 3, 32, 32) for _ in range(2)]
    ann = recalibrate_batchnorm(resnet20(), calib)
    cnn = recalibrate_batchnorm(resnet20(cnn=True), calib)
    q = addernet_cuda.quantize(ann, calib, max_images=32, simplify=True)
    plain = addernet_cuda.quantize(ann, calib, max_images=32, simplify=False)
    x = torch.randn(batch, 3, 32, 32)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        timed = interleaved(
            {
                "int8_ann": lambda: q(x),
                "int8_ann.unsimplified": lambda: plain(x),
                "float_cnn": lambda: cnn(x),
                "float_ann": lambda: ann(x),
                "int8_ann.channels_last": lambda: q(x_cl),
                "float_cnn.channels_last": lambda: cnn(x_cl),
            },
            repeats,
        )
    row = {"shape": "resnet20.whole", "batch": batch, **timed}
    row["int8_ann.vs_unsimplified"] = (
        timed["int8_ann"]["median_s"] / timed["int8_ann.unsimplified"]["median_s"]
    )
    row["int8_ann.vs_float_cnn"] = timed["int8_ann"]["median_s"] / timed["float_cnn"]["median_s"]
    row["int8_ann.vs_float_ann"] = timed["int8_ann"]["median_s"] / timed["float_ann"]["median_s"]
    row["int8_ann.channels_last.vs_float_cnn.channels_last"] = (
        timed["int8_ann.channels_last"]["median_s"] / timed["float_cnn.channels_last"]["median_s"]
    )
    return row


def geomean(values):
    values = [v for v in values if v is not None]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def markdown(result: dict) -> str:
    env, rows = result["environment"], result["rows"]
    ceiling = {
        "sad": result["sad_ceiling_gbytes_per_s"],
        "base": result["sad_ceiling_gbytes_per_s"],
        "min_dot": result.get("min_dot_ceiling_gbytes_per_s"),
    }
    min_dot = ceiling["min_dot"]
    lines = [
        f"int8 adder benchmark: {env.get('cpu_model')}, torch {env['torch']}, {env['threads']} "
        f"threads, CPU kernels {env['cpu_isa']}, commit {env.get('commit')}, {env['date']}, "
        f"load average at start {result['load_average']}",
        "",
        f"Register-resident ceilings measured in this run on {env['threads']} threads: byte SAD "
        f"(vpsadbw + vpaddq, {'zmm' if env['cpu_isa'] == 'avx512' else 'ymm'}) "
        f"{ceiling['sad']:.0f} G byte-taps/s"
        + (
            f", min + dot (vpminub + vpdpbusd, 64 bytes) {min_dot:.0f} G byte-taps/s"
            if min_dot
            else ""
        )
        + ". The kernel column says which one a layer runs (min_dot: at avx512, on reductions of "
        "512 bytes or more), and % of ceiling is against that one's. Times: medians "
        f"in ms [p20, p80] of interleaved rounds in rotating order ({result['clock']}), float32 "
        "in and out; ratios are time / time (lower is better).",
        "",
        "| layer | batch | int8 adder | int8 adder (NCHW) | conv2d | torch int8 conv | "
        "torch int8 (int8 i/o) | adder / conv2d | adder / torch int8 | adder (NCHW) / torch int8 | "
        "torch int8 / conv2d | G taps/s | padded G bytes/s | kernel | % of ceiling | "
        "page faults per call (adder / conv2d / torch int8) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda s: f"{s['median_s'] * 1e3:.2f} [{s['p20_s'] * 1e3:.2f}, {s['p80_s'] * 1e3:.2f}]"  # noqa: E731
    for r in rows:
        t8 = fmt(r["torch_int8_conv"]) if "torch_int8_conv" in r else "skipped"
        t8io = fmt(r["torch_int8_conv.int8_io"]) if "torch_int8_conv" in r else "skipped"
        vs8 = f"{r['int8_adder.vs_torch_int8']:.2f}x" if "int8_adder.vs_torch_int8" in r else "-"
        key = "int8_adder.nchw.vs_torch_int8"
        vs8n = f"{r[key]:.2f}x" if key in r else "-"
        t8c = f"{r['torch_int8_conv.vs_conv2d']:.2f}x" if "torch_int8_conv.vs_conv2d" in r else "-"
        kernel = r.get("int8_adder.kernel", "sad")
        reference_rate = ceiling[kernel] or ceiling["sad"]
        pct = 100 * r["int8_adder.padded_gbytes_per_s"] / reference_rate if reference_rate else 0.0
        faults = " / ".join(
            f"{r[k]['page_faults_per_call']:.0f}" if k in r else "-"
            for k in ("int8_adder", "conv2d", "torch_int8_conv")
        )
        lines.append(
            f"| {r['shape']} | {r['batch']} | {fmt(r['int8_adder'])} | "
            f"{fmt(r['int8_adder.nchw'])} | {fmt(r['conv2d'])} | {t8} | "
            f"{t8io} | {r['int8_adder.vs_conv2d']:.2f}x | {vs8} | {vs8n} | {t8c} | "
            f"{r['int8_adder.gterms_per_s']:.1f} | {r['int8_adder.padded_gbytes_per_s']:.1f} | "
            f"{kernel} | {pct:.0f}% | "
            f"{faults} |"
        )
    for key, value in result["summary"].items():
        lines.append(f"\n{key}: {value}")
    return "\n".join(lines) + "\n"


def summary(rows, whole) -> dict:
    res3 = [r for r in rows if r["shape"].startswith("res20") and "3x3" in r["shape"]]
    out = {
        "ResNet-20 3x3 layers, geometric mean of int8 adder / conv2d": geomean(
            [r["int8_adder.vs_conv2d"] for r in res3]
        ),
        "ResNet-20 3x3 layers, geometric mean of int8 adder / torch int8 conv (target <= 1)": geomean(
            [r.get("int8_adder.vs_torch_int8") for r in res3]
        ),
        "ResNet-20 3x3 layers, geometric mean of int8 adder on NCHW / torch int8 conv": geomean(
            [r.get("int8_adder.nchw.vs_torch_int8") for r in res3]
        ),
        "ResNet-20 3x3 layers, geometric mean of torch int8 conv / conv2d": geomean(
            [r.get("torch_int8_conv.vs_conv2d") for r in res3]
        ),
    }
    if whole:
        out["Whole ResNet-20 forward, int8 ANN / float32 CNN twin (target <= 0.5)"] = whole[
            "int8_ann.vs_float_cnn"
        ]
        out["Whole ResNet-20 forward on channels-last input, int8 ANN / float32 CNN twin"] = whole[
            "int8_ann.channels_last.vs_float_cnn.channels_last"
        ]
        out["Whole ResNet-20 forward, int8 ANN / float32 ANN"] = whole["int8_ann.vs_float_ann"]
        out["Whole ResNet-20 forward, int8 ANN / int8 ANN unsimplified"] = whole[
            "int8_ann.vs_unsimplified"
        ]
        keys = (
            "int8_ann",
            "int8_ann.unsimplified",
            "float_cnn",
            "float_ann",
            "int8_ann.channels_last",
            "float_cnn.channels_last",
        )
        out[
            "Whole ResNet-20 forward medians (ms) [page faults per call]: int8 ANN / int8 ANN "
            "unsimplified / float32 CNN / float32 ANN / int8 ANN channels-last / float32 CNN "
            "channels-last"
        ] = " / ".join(
            f"{whole[k]['median_s'] * 1e3:.2f} [{whole[k]['page_faults_per_call']:.0f}]"
            for k in keys
        )
    return {k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in out.items()}


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    names = [s[0] for f in INT8_FAMILIES for s in FAMILIES[f][1]]
    p.add_argument("--shapes", nargs="+", choices=names, default=names)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared machine a descheduled OpenMP thread stalls "
        "every parallel region, which swamps multi-threaded timings)",
    )
    p.add_argument(
        "--whole-repeats",
        type=int,
        default=45,
        help="rounds of the whole ResNet-20 forward (its ratio moves by 10%% between runs at 15)",
    )
    p.add_argument("--no-whole", action="store_true", help="skip the whole ResNet-20 forward")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    env = environment("cpu")
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    threads = torch.get_num_threads()
    ceilings, min_dot = [sad_ceiling(threads)], [min_dot_ceiling(threads)]
    rows = []
    for name in args.shapes:
        rows.append(layer_row(name, args.batch, args.repeats))
        ceilings.append(sad_ceiling(threads))
        min_dot.append(min_dot_ceiling(threads))
        print(f"{name}: int8 adder {rows[-1]['int8_adder.vs_conv2d']:.2f}x conv2d", flush=True)
    whole = None if args.no_whole else resnet20_row(args.batch, args.whole_repeats)
    result = {
        "environment": env,
        "load_average": load,
        "clock": "thread CPU time" if args.threads == 1 else "wall time",
        "sad_ceiling_gbytes_per_s": statistics.median(ceilings) / 1e9,
        "min_dot_ceiling_gbytes_per_s": (
            statistics.median(min_dot) / 1e9 if min_dot[0] is not None else None
        ),
        "rows": rows,
        "whole": whole,
        "summary": summary(rows, whole),
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results_int8.json"), "w") as f:
        json.dump(result, f, indent=1)
    text = markdown(result)
    with open(os.path.join(args.out, "results_int8.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
