"""8-bit adder inference on MNIST and the per-layer error of a quantized ResNet-20.

1. The LeNet-5 ANN (``python -m addernet_cuda.train --dataset mnist --model lenet5``) with the
   softmax (``linear``) and SLAC heads, trained for ``--epochs`` (reused from ``--work`` when a
   finished run is there), quantized with ``addernet_cuda.quantize`` on the first
   ``--calibration`` (512) training images, per-layer scales and ``--scale-groups`` grouped
   scales: float32 vs int8 test accuracy on the 10k test images, the per-layer calibration
   errors, and the end-to-end time of classifying the 10k test images (batches of 1000) with the
   int8 ANN, the float32 ANN and the float32 CNN twin (interleaved rounds, medians).
2. A ResNet-20 ANN (random weights; BatchNorm statistics from the calibration images), quantized
   with per-layer and grouped scales: the relative L2 error of every quantized layer's output
   after the folded BatchNorm, against the 2% target.

Writes OUT/quantize_mnist.{md,json} and prints the tables.

    python -m benchmarks.quantize_mnist                 # 1 epoch per model
    python -m benchmarks.quantize_mnist --epochs 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

import addernet_cuda
from addernet_cuda import data as data_mod
from addernet_cuda.models import resnet20
from addernet_cuda.nn.quantized import recalibrate_batchnorm

from ._common import ROOT, git_commit
from .reproduce_mnist import _config, _train_or_reuse

HEADS = {"softmax": "linear", "SLAC": "slac"}


def _loader(split, bundle, batch, max_batches=None):
    return data_mod.TensorLoader(
        split, batch, shuffle=False, mean=bundle.mean, std=bundle.std, max_batches=max_batches
    )


@torch.no_grad()
def accuracy(model, batches) -> float:
    correct = total = 0
    for x, y in batches:
        correct += (model(x).argmax(1) == y).sum().item()
        total += y.numel()
    return 100.0 * correct / total


def timed_rounds(models: dict, batches, rounds: int) -> dict:
    """Seconds to classify all ``batches`` per model on one thread, in thread CPU time (time spent
    descheduled by other work on a shared machine does not count): median of ``rounds``
    interleaved rounds."""
    times = {name: [] for name in models}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _rounds(models, batches, rounds, times)
    finally:
        torch.set_num_threads(threads)


def _rounds(models, batches, rounds, times):
    with torch.no_grad():
        for _ in range(rounds):
            for name, model in models.items():
                t0 = time.thread_time()
                for x, _ in batches:
                    model(x)
                times[name].append(time.thread_time() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def lenet_results(args, bundle) -> dict:
    calib = [x for x, _ in _loader(bundle.train, bundle, 128, args.calibration // 128)]
    test = list(_loader(bundle.test, bundle, 1000))
    out = {}
    cnn_metrics, cnn = _train_or_reuse(
        _config("softmax", 0, args.epochs, None, args.work, cnn=True)
    )
    out["cnn_float32_accuracy"] = accuracy(cnn.eval(), test)
    for loss in HEADS:
        _, ann = _train_or_reuse(_config(loss, 0, args.epochs, None, args.work))
        ann = ann.eval()
        row = {"float32": accuracy(ann, test)}
        for groups in (1, args.scale_groups):
            q = addernet_cuda.quantize(ann, calib, scale_groups=groups, max_images=args.calibration)
            row[f"int8_g{groups}"] = accuracy(q, test)
            row[f"errors_g{groups}"] = {k: max(v) for k, v in q.quantization_errors.items()}
            if groups == 1:
                q1 = q
        row["seconds_10k"] = timed_rounds(
            {"int8 ANN": q1, "float32 ANN": ann, "float32 CNN": cnn.eval()}, test, args.rounds
        )
        out[loss] = row
    return out


def resnet_errors(args) -> dict:
    torch.manual_seed(0)
    calib = [torch.randn(64, 3, 32, 32) for _ in range(2)]
    model = recalibrate_batchnorm(resnet20(), calib)
    out = {}
    for groups in (1, args.scale_groups):
        q = addernet_cuda.quantize(model, calib, scale_groups=groups, max_images=64)
        out[f"g{groups}"] = {k: max(v) for k, v in q.quantization_errors.items()}
    return out


def markdown(result: dict, groups: int) -> str:
    lines = [
        f"8-bit adder inference, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"commit {result['commit']}, load average {result['load_average']}; LeNet-5 trained "
        f"{result['epochs']} epoch(s), calibration {result['calibration']} training images.",
        "",
        f"| head | float32 acc | int8 acc (per-layer scale) | int8 acc ({groups} scale groups) | "
        "10k test images, 1 thread, CPU s: int8 ANN / float32 ANN / float32 CNN |",
        "|---|---|---|---|---|",
    ]
    for loss in HEADS:
        r = result["lenet5"][loss]
        t = r["seconds_10k"]
        lines.append(
            f"| {loss} | {r['float32']:.2f} | {r['int8_g1']:.2f} | {r[f'int8_g{groups}']:.2f} | "
            f"{t['int8 ANN']:.2f} / {t['float32 ANN']:.2f} / {t['float32 CNN']:.2f} |"
        )
    lines.append(
        f"\nCNN twin (softmax) float32 accuracy: {result['lenet5']['cnn_float32_accuracy']:.2f}"
    )
    lines += [
        "",
        "Per-layer relative L2 output error (after the folded BatchNorm), calibration data:",
        "",
    ]
    lines += [f"| layer | per-layer scale | {groups} scale groups |", "|---|---|---|"]
    for model, errs in [(f"lenet5/{k}", result["lenet5"][k]) for k in HEADS]:
        for name, e in errs["errors_g1"].items():
            lines.append(
                f"| {model} {name} | {100 * e:.2f}% | {100 * errs[f'errors_g{groups}'][name]:.2f}% |"
            )
    res = result["resnet20"]
    for name, e in res["g1"].items():
        lines.append(f"| resnet20 {name} | {100 * e:.2f}% | {100 * res[f'g{groups}'][name]:.2f}% |")
    worst = max(res["g1"].values())
    lines.append(f"\nResNet-20 worst layer, per-layer scale: {100 * worst:.2f}% (target <= 2%)")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--calibration", type=int, default=512, help="training images (multiple of 128)")
    p.add_argument("--scale-groups", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--work", default=os.path.join(ROOT, "runs", "quantize_mnist"))
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = p.parse_args(argv)
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    bundle = data_mod.load_mnist()
    result = {
        "commit": git_commit() or "unknown",
        "epochs": args.epochs,
        "calibration": args.calibration,
        "load_average": load,
        "lenet5": lenet_results(args, bundle),
        "resnet20": resnet_errors(args),
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "quantize_mnist.json"), "w") as f:
        json.dump(result, f, indent=1)
    text = markdown(result, args.scale_groups)
    with open(os.path.join(args.out, "quantize_mnist.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
