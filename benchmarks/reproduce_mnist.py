"""The SLAC paper's loss comparison (its Table 3 and Figure 3) on real MNIST with the LeNet-5 ANN.

Losses: softmax (the ``linear`` head), LGM, SL (the skew Laplace mixture without the angle
constraint: SLAC with ``beta = 0``) and SLAC (``beta = 0.1``), every one with ``lam = 0.01`` and the
recipe's defaults (``python -m addernet_cuda.train --dataset mnist``): SGD 0.1, momentum 0.9,
weight decay 5e-4, cosine schedule, batch 256, covariance rate / 100.

1. ``--seeds`` runs per loss with the natural 84-d features for ``--epochs`` epochs: test accuracy
   (10k test images), validation accuracy (10k), training time per epoch, and two measures of the
   feature distribution, computed on the trained model's features, the same way for every loss:

   - tail overlap: the share of test images whose nearest class centre by Mahalanobis distance is
     not their own class (class centres and diagonal covariances estimated from the 50k training
     features; ``d_k(x) = sum_j (x_j - m_kj)^2 / v_kj``). It counts the test points that lie
     deeper in another class's cloud than in their own, whatever the head predicts;
   - tail heaviness: the median, over classes and feature dimensions, of the excess kurtosis of the
     training features of a class (0 for a Gaussian, 3 for a Laplace).

2. One run per loss with 2-d features (``--feature-epochs``), whose test features are drawn as in
   the paper's Figure 3, with the learned locations (and skewness directions for SL and SLAC).

Writes ``OUT/mnist_losses.{md,json}`` and ``OUT/mnist_features.png``; each training run keeps its
metrics and checkpoint under ``--work``, and a finished run found there is reused (so an
interrupted reproduction continues where it stopped).

    python -m benchmarks.reproduce_mnist      # 4 losses x 3 seeds x 2 epochs, 4 x 1 epoch of 2-d features
    python -m benchmarks.reproduce_mnist --epochs 10 --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

from addernet_cuda import data as data_mod
from addernet_cuda.train import Config, load_checkpoint_model, run

from ._common import ROOT, git_commit

LOSSES = {  # name: (head, SLAC beta)
    "softmax": ("linear", 0.1),
    "LGM": ("lgm", 0.1),
    "SL": ("slac", 0.0),
    "SLAC": ("slac", 0.1),
}


def _config(
    loss: str, seed: int, epochs: int, feat_dim, work: str, max_steps=None, cnn: bool = False
) -> Config:
    head, beta = LOSSES[loss]
    tag = f"{'cnn-' if cnn else ''}{loss.lower()}-d{feat_dim or 84}-e{epochs}-s{seed}"
    return Config(
        dataset="mnist",
        model="lenet5",
        head=head,
        beta=beta,
        feat_dim=feat_dim,
        epochs=epochs,
        seed=seed,
        cnn=cnn,
        out=os.path.join(work, tag),
        progress=False,
        max_steps_per_epoch=max_steps,
    )


def _train_or_reuse(cfg: Config):
    path = os.path.join(cfg.out, "metrics.json")
    if os.path.isfile(path):
        metrics = json.load(open(path))
        same = all(
            metrics["config"].get(k) == v
            for k, v in (
                ("head", cfg.head),
                ("beta", cfg.beta),
                ("epochs", cfg.epochs),
                ("seed", cfg.seed),
                ("feat_dim", cfg.feat_dim),
                ("max_steps_per_epoch", cfg.max_steps_per_epoch),
                ("cnn", cfg.cnn),
            )
        )
        if same and metrics.get("finished"):
            print(f"[reproduce] reusing {cfg.out}", flush=True)
            model, _ = load_checkpoint_model(os.path.join(cfg.out, "checkpoint.pt"))
            return metrics, model
    load = os.getloadavg()[0]
    metrics, model = run(cfg, return_model=True)
    metrics["load_average_1min"] = [load, os.getloadavg()[0]]
    with open(path, "w") as f:
        json.dump(metrics, f, indent=2)
    return metrics, model.eval()


@torch.no_grad()
def _features(model, split, bundle, batch: int = 1000) -> np.ndarray:
    loader = data_mod.TensorLoader(split, batch, shuffle=False, mean=bundle.mean, std=bundle.std)
    model.eval()
    return torch.cat([model(x, return_features=True) for x, _ in loader]).double().numpy()


def feature_stats(
    train_f: np.ndarray, train_y: np.ndarray, test_f: np.ndarray, test_y: np.ndarray
) -> dict:
    """Tail overlap (share of test points nearest, by per-class diagonal Mahalanobis distance, to
    another class's centre) and tail heaviness (median excess kurtosis per class and dimension)."""
    classes = np.unique(train_y)
    means = np.stack([train_f[train_y == k].mean(0) for k in classes])
    variances = np.stack([train_f[train_y == k].var(0) for k in classes]) + 1e-12
    dist = np.stack(
        [(((test_f - means[i]) ** 2) / variances[i]).sum(1) for i in range(len(classes))], 1
    )
    nearest = classes[dist.argmin(1)]
    kurt = []
    for i, k in enumerate(classes):
        z = (train_f[train_y == k] - means[i]) / np.sqrt(variances[i])
        kurt.append((z**4).mean(0) - 3.0)
    return {
        "tail_overlap": float((nearest != test_y).mean()),
        "excess_kurtosis": float(np.median(np.stack(kurt))),
    }


def _mean_std(values):
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _plot(points: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(points), figsize=(4.2 * len(points), 4.4))
    colors = plt.get_cmap("tab10").colors
    for ax, (loss, entry) in zip(np.atleast_1d(axes), points.items()):
        f, y = entry["features"], entry["labels"]
        order = np.random.default_rng(0).permutation(len(y))
        ax.scatter(
            f[order, 0],
            f[order, 1],
            s=1.5,
            c=[colors[k] for k in y[order]],
            alpha=0.5,
            linewidths=0,
        )
        centres, skew = entry.get("centres"), entry.get("skewness")
        if centres is not None:
            ax.scatter(centres[:, 0], centres[:, 1], s=40, c="k", marker="x", linewidths=1.5)
        if skew is not None and np.abs(skew).max() > 0:
            span = np.percentile(np.linalg.norm(f - np.median(f, 0), axis=1), 90)
            unit = skew / np.maximum(np.linalg.norm(skew, axis=1, keepdims=True), 1e-12)
            for c, u, k in zip(centres, unit, range(len(unit))):
                ax.annotate(
                    "",
                    xy=c + 0.35 * span * u,
                    xytext=c,
                    arrowprops=dict(arrowstyle="->", color=colors[k], lw=1.8),
                )
        lo, hi = np.percentile(f, [0.5, 99.5], axis=0)
        pad = 0.08 * (hi - lo)
        ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
        ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
        ax.set_title(
            f"{loss}: test acc {entry['test_acc'] * 100:.2f}%, overlap {entry['tail_overlap'] * 100:.2f}%",
            fontsize=10,
        )
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        "LeNet-5 ANN on MNIST, 2-d test features (x: learned locations, arrows: skewness directions)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--feature-epochs",
        type=int,
        default=1,
        help="epochs of the 2-d feature runs (0: skip them)",
    )
    p.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    p.add_argument(
        "--no-cnn",
        dest="cnn",
        action="store_false",
        help="skip the CNN twin's runs (same grid with nn.Conv2d; about 4 s per epoch)",
    )
    p.add_argument("--work", default=os.path.join(ROOT, "runs", "reproduce_mnist"))
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--max-steps-per-epoch",
        type=int,
        default=None,
        help="cut epochs short (a quick check only)",
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    t_start = time.time()
    bundle = data_mod.load_mnist()
    train_y, test_y = bundle.train.labels.numpy(), bundle.test.labels.numpy()

    runs = []
    nets = ["ANN", "CNN"] if args.cnn else ["ANN"]
    for net, loss, seed in [(n, l, s) for n in nets for l in args.losses for s in args.seeds]:
        cfg = _config(
            loss, seed, args.epochs, None, args.work, args.max_steps_per_epoch, cnn=net == "CNN"
        )
        metrics, model = _train_or_reuse(cfg)
        stats = feature_stats(
            _features(model, bundle.train, bundle),
            train_y,
            _features(model, bundle.test, bundle),
            test_y,
        )
        runs.append(
            {
                "net": net,
                "loss": loss,
                "seed": seed,
                "test_acc": metrics["test_acc"],
                "val_acc": metrics.get("val_acc"),
                "train_time_per_epoch_s": metrics["train_time_per_epoch_s"],
                **stats,
                "load_average_1min": metrics.get("load_average_1min"),
                "wall_time_s": metrics["wall_time_s"],
                "history": metrics["history"],
                "out": os.path.relpath(cfg.out, ROOT),
            }
        )
        print(
            f"[reproduce] {net} {loss} seed {seed}: test {metrics['test_acc']:.4f}, overlap "
            f"{stats['tail_overlap']:.4f}, kurtosis {stats['excess_kurtosis']:.2f}, "
            f"{metrics['train_time_per_epoch_s']:.1f} s/epoch",
            flush=True,
        )

    feature_runs, points = [], {}
    if args.feature_epochs > 0:
        for loss in args.losses:
            cfg = _config(
                loss, args.seeds[0], args.feature_epochs, 2, args.work, args.max_steps_per_epoch
            )
            metrics, model = _train_or_reuse(cfg)
            test_f = _features(model, bundle.test, bundle)
            stats = feature_stats(_features(model, bundle.train, bundle), train_y, test_f, test_y)
            head = model.head
            centres = skew = None
            if cfg.head == "slac":
                centres, skew = (
                    head.mu.detach().double().numpy(),
                    head.gamma.detach().double().numpy(),
                )
            elif cfg.head == "lgm":
                centres = head.means.detach().double().numpy()
            points[loss] = {
                "features": test_f,
                "labels": test_y,
                "centres": centres,
                "skewness": skew,
                "test_acc": metrics["test_acc"],
                **stats,
            }
            feature_runs.append(
                {
                    "loss": loss,
                    "seed": cfg.seed,
                    "epochs": cfg.epochs,
                    "test_acc": metrics["test_acc"],
                    "wall_time_s": metrics["wall_time_s"],
                    **stats,
                    "out": os.path.relpath(cfg.out, ROOT),
                }
            )
            print(
                f"[reproduce] 2-d {loss}: test {metrics['test_acc']:.4f}, overlap {stats['tail_overlap']:.4f}",
                flush=True,
            )
        _plot(points, os.path.join(args.out, "mnist_features.png"))

    summary = {}
    for net in nets:
        for loss in args.losses:
            rows = [r for r in runs if r["loss"] == loss and r["net"] == net]
            entry = {
                key: _mean_std([r[key] for r in rows])
                for key in (
                    "test_acc",
                    "val_acc",
                    "tail_overlap",
                    "excess_kurtosis",
                    "train_time_per_epoch_s",
                )
            }
            summary[f"{net} {loss}"] = {**entry, "net": net, "loss": loss, "seeds": len(rows)}
    result = {
        "description": "LeNet-5 ANN (and its CNN twin) on MNIST (50k train / 10k test), losses of the SLAC "
        "paper's Table 3",
        "command": "python -m benchmarks.reproduce_mnist "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "epochs": args.epochs,
        "seeds": args.seeds,
        "feature_epochs": args.feature_epochs,
        "recipe": {
            k: v
            for k, v in vars(Config(dataset="mnist").resolved()).items()
            if k
            in (
                "batch_size",
                "lr",
                "momentum",
                "weight_decay",
                "cov_lr_scale",
                "lam",
                "lgm_alpha",
                "lgm_lam",
                "eta",
                "head_weight_decay",
            )
        },
        "measures": {
            "tail_overlap": "share of test images whose nearest class centre (per-class diagonal "
            "Mahalanobis distance, centres and variances from the training features) is "
            "not their own class",
            "excess_kurtosis": "median over classes and dimensions of the excess kurtosis of the "
            "training features of a class (Gaussian 0, Laplace 3)",
        },
        "environment": {
            "machine": platform.machine(),
            "cpu_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "commit": git_commit() or "unknown",
        },
        "summary": summary,
        "runs": runs,
        "feature_runs": feature_runs,
        "load_range": [
            min((x for r in runs for x in (r["load_average_1min"] or [])), default=float("nan")),
            max((x for r in runs for x in (r["load_average_1min"] or [])), default=float("nan")),
        ],
        "wall_time_s": time.time() - t_start,
        "training_wall_time_s": sum(r["wall_time_s"] for r in runs + feature_runs),
    }
    with open(os.path.join(args.out, "mnist_losses.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(args.out, "mnist_losses.md"), "w") as f:
        f.write(_markdown(result))
    print(_markdown(result))
    return 0


def _markdown(result: dict) -> str:
    def pm(pair, scale=100.0, digits=2):
        return f"{pair[0] * scale:.{digits}f} ± {pair[1] * scale:.{digits}f}"

    lines = [
        f"### LeNet-5 on MNIST: {result['epochs']} epochs, seeds {result['seeds']}",
        "",
        "| network | loss | test acc (%) | val acc (%) | tail overlap (%) | excess kurtosis | s / epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in result["summary"].values():
        lines.append(
            f"| {s['net']} | {s['loss']} | {pm(s['test_acc'])} | {pm(s['val_acc'])} | {pm(s['tail_overlap'])} | "
            f"{pm(s['excess_kurtosis'], 1.0)} | {s['train_time_per_epoch_s'][0]:.1f} |"
        )
    lines += [
        "",
        "Mean ± sample standard deviation over the seeds. Tail overlap: "
        + result["measures"]["tail_overlap"]
        + ". Excess kurtosis: "
        + result["measures"]["excess_kurtosis"]
        + ". Time: training only, per epoch of 50k images (the machine was shared: the 1-minute load "
        f"averages at the start and end of the runs ranged over {result['load_range'][0]:.1f}-"
        f"{result['load_range'][1]:.1f}), "
        f"{result['environment']['cpu_threads']} CPU threads ({result['environment']['machine']}, "
        f"torch {result['environment']['torch']}, commit {result['environment']['commit']}).",
    ]
    if result["feature_runs"]:
        lines += [
            "",
            f"2-d features, ANN (seed {result['seeds'][0]}, {result['feature_epochs']} epochs; "
            "mnist_features.png):",
            "",
            "| loss | test acc (%) | tail overlap (%) |",
            "|---|---|---|",
        ]
        for r in result["feature_runs"]:
            lines.append(
                f"| {r['loss']} | {r['test_acc'] * 100:.2f} | {r['tail_overlap'] * 100:.2f} |"
            )
    lines += [
        "",
        f"Command: `{result['command'].strip()}`. The training runs took "
        f"{result['training_wall_time_s'] / 60:.1f} min of wall time in all (runs found finished in the work "
        "folder are reused; this invocation took "
        f"{result['wall_time_s'] / 60:.1f} min, feature extraction and statistics included).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
