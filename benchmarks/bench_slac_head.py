"""Time and peak memory of one SLAC loss forward + backward (``SLACLoss``: L_c + lam L_nll + beta L_ac).

Shapes: features ``[B, d]`` (requires grad, as coming from a network), ``K`` classes; default the
ImageNet head B = 256, K = 1000, d = 2048, float32, on the CPU with torch's default thread count.

Peak memory: this process is started fresh per measurement; the first forward + backward runs
before anything else, and the number is the peak RSS minus the RSS right after the set-up
(parameters, features, targets allocated). The peak is ``VmHWM`` of ``/proc/self/status``, reset to
the current RSS after the set-up where the kernel allows (``/proc/self/clear_refs``); not
``ru_maxrss``, which keeps the parent's peak across ``fork``/``vfork`` + ``exec``. Time: median (with p20/p80) of ``--repeats``
forward + backward passes after ``--warmup`` passes. Prints one JSON object.

    python -m benchmarks.bench_slac_head [--batch 256 --classes 1000 --dim 2048 --beta 0.1 ...]

By default it measures both heads, each in its own fresh process: the SLAC loss and the
baseline it replaces, a linear layer with softmax cross-entropy (``--head slac`` or
``--head linear`` for one), and prints their ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

import torch

from ._common import ROOT, git_commit, reset_peak_rss, stats, status_kib, time_calls


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--lam", type=float, default=0.01)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument(
        "--threads", type=int, default=0, help="torch.set_num_threads (0: leave the default)"
    )
    ap.add_argument(
        "--head",
        choices=["both", "slac", "linear"],
        default="both",
        help="slac: SLACLoss; linear: nn.Linear + cross-entropy; both: each in a fresh process",
    )
    argv = sys.argv[1:] if argv is None else list(argv)
    args = ap.parse_args(argv)
    if args.head == "both":
        results = {}
        for head in ("slac", "linear"):
            cmd = [sys.executable, "-m", "benchmarks.bench_slac_head", "--head", head, *argv]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
            results[head] = json.loads(out.stdout)
        results["slac_over_linear"] = {
            "time": results["slac"]["time_s"]["median"] / results["linear"]["time_s"]["median"],
            "peak_memory": results["slac"]["peak_rss_minus_setup_MiB"]
            / max(results["linear"]["peak_rss_minus_setup_MiB"], 1e-9),
        }
        print(json.dumps(results, indent=1))
        return
    if args.threads:
        torch.set_num_threads(args.threads)

    from addernet_cuda.nn import SLACLoss, SoftmaxLoss

    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    if args.head == "slac":
        loss_fn = SLACLoss(args.classes, args.dim, lam=args.lam, beta=args.beta, dtype=dtype)
        with torch.no_grad():  # a trained-looking head: nonzero skewness, varied covariances
            loss_fn.mixture.gamma.normal_(0, 0.1)
            loss_fn.mixture.log_var.uniform_(-0.5, 0.5)
    else:
        loss_fn = SoftmaxLoss(args.classes, args.dim).to(dtype)
    x = torch.randn(args.batch, args.dim, dtype=dtype, requires_grad=True)
    y = torch.randint(0, args.classes, (args.batch,))

    def step():
        loss = loss_fn(x, y)
        loss.backward()
        x.grad = None
        loss_fn.zero_grad(set_to_none=True)
        return loss

    peak_reset = reset_peak_rss()
    rss_setup = status_kib("VmRSS") * 1024
    step()
    peak_delta = status_kib("VmHWM") * 1024 - rss_setup

    times = stats(time_calls(step, args.repeats, args.warmup))
    bkd = args.batch * args.classes * args.dim * torch.finfo(dtype).bits // 8
    print(
        json.dumps(
            {
                "head": args.head,
                "case": {
                    "batch": args.batch,
                    "classes": args.classes,
                    "dim": args.dim,
                    "dtype": args.dtype,
                    "lam": args.lam,
                    "beta": args.beta,
                },
                "time_s": {
                    "median": times["median_s"],
                    "p20": times["p20_s"],
                    "p80": times["p80_s"],
                    "repeats": times["runs"],
                },
                "peak_rss_minus_setup_MiB": round(peak_delta / 2**20, 1),
                "rss_after_setup_MiB": round(rss_setup / 2**20, 1),
                "peak_reset_after_setup": peak_reset,
                "a_B_x_K_x_d_tensor_would_be_MiB": round(bkd / 2**20, 1),
                "device": f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
                "torch": torch.__version__,
                "commit": git_commit() or "",
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
