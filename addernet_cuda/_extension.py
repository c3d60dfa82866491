"""Loads the compiled extension: addernet_cuda._C (op schemas and CPU kernels) and, when the
running torch has CUDA, addernet_cuda._C_cuda (the CUDA kernels), which registers
torch.ops.addernet.*.

Both are built on torch's stable ABI for version STABLE_ABI (addernet_cuda/version.py): one
build runs on that torch and every later one. An older torch is refused before anything is
loaded, with the versions named.
"""

import importlib
import re

import torch

from .version import STABLE_ABI

REINSTALL = (
    "Install torch >= {abi} (`pip install 'torch>={abi}'`), or reinstall addernet_cuda with "
    "`pip install --force-reinstall --no-deps .` in its source tree."
)


def _major_minor(version):
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        raise ImportError(f"addernet_cuda: cannot read the torch version {version!r}")
    return int(match.group(1)), int(match.group(2))


def _check_torch_version():
    if _major_minor(torch.__version__) < _major_minor(STABLE_ABI):
        raise ImportError(
            f"addernet_cuda: the extension is built for the torch stable ABI {STABLE_ABI} and runs "
            f"with torch >= {STABLE_ABI}, but torch {torch.__version__} is running. "
            + REINSTALL.format(abi=STABLE_ABI)
        )


def _import(name):
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ImportError(
            f"addernet_cuda: cannot load the compiled extension {name} ({error}) with torch "
            f"{torch.__version__}. " + REINSTALL.format(abi=STABLE_ABI)
        ) from error


def _load():
    _check_torch_version()
    module = _import("addernet_cuda._C")
    built_for = module.build_info()["stable_abi"]
    if built_for != STABLE_ABI:
        raise ImportError(
            f"addernet_cuda: the compiled extension is built for the torch stable ABI {built_for} "
            f"but this package's Python code expects {STABLE_ABI}: a stale build. "
            + REINSTALL.format(abi=STABLE_ABI)
        )
    cuda = None
    if module.build_info()["cuda_compiled"] and torch.version.cuda is not None:
        cuda = _import("addernet_cuda._C_cuda")
    return module, cuda


_C, _C_cuda = _load()


def build_info():
    """How the extension was built and what this process loaded.

    Returns a dict with ``backends`` (the kernels loaded: ``["cpu"]`` or ``["cpu", "cuda"]``;
    a build with CUDA kernels loads them only under a CUDA build of torch), ``cuda_compiled``
    (whether the build has CUDA kernels), ``torch_version`` (the torch it was compiled with),
    ``stable_abi`` (the oldest torch it runs on: every later one works too), ``cuda_archs``
    (``TORCH_CUDA_ARCH_LIST`` of the CUDA build), ``flags`` (compiler flags), ``debug``,
    ``cpu_avx2_compiled``, ``cpu_avx512_compiled`` (the int8 kernels' AVX-512 VNNI copy, and the
    float32 forward's tile loops, stride-1 input gradient and weight gradient on 64-byte vectors),
    ``int8_min_dot_min_bytes`` (the shortest reduction, ``KH * KW * roundup(C / groups, 8)``
    bytes, on which the AVX-512 int8 kernels sum ``vpminub`` + ``vpdpbusd``; shorter ones use
    ``vpsadbw`` on 64 bytes) and ``cpu_isa`` (the instruction set the CPU kernels use on this
    machine: ``"avx512"``, where the CPU has AVX-512 F/BW/VL/VNNI, the float kernels running their
    AVX2 copy but for the float32 forward's tile loops, input gradient and weight gradient; ``"avx2"``; or ``"base"``; ``ADDERNET_CPU_ISA=base``, ``avx2`` or ``avx512`` chooses
    one: an unknown value, or one the CPU lacks, makes the import fail with a RuntimeError that
    names it).
    """
    info = dict(_C.build_info())
    info["backends"] = ["cpu"] + (["cuda"] if _C_cuda is not None else [])
    return info
