"""Loads the compiled extension addernet_cuda._C, which registers torch.ops.addernet.*.

An extension compiled against one torch and loaded with another fails in obscure ways
(undefined symbols, or worse, silent ABI mismatches). This module refuses both cases with an
instruction to rebuild.
"""

import importlib

import torch

REBUILD = (
    "Rebuild it against the installed torch: `pip install --no-build-isolation --force-reinstall "
    "--no-deps .` in the addernet_cuda source tree (or run scripts/test.sh, which rebuilds)."
)


def _load():
    try:
        module = importlib.import_module("addernet_cuda._C")
    except ImportError as error:
        raise ImportError(
            f"addernet_cuda: cannot load the compiled extension addernet_cuda._C ({error}). "
            f"It is missing or was built against another torch than torch {torch.__version__}. "
            + REBUILD
        ) from error
    built = module.torch_version()
    if built != torch.__version__:
        raise ImportError(
            f"addernet_cuda: the extension was built against torch {built} but torch "
            f"{torch.__version__} is running. " + REBUILD
        )
    return module


_C = _load()


def build_info():
    """How the extension was built.

    Returns a dict with ``backends`` (``["cpu"]`` or ``["cpu", "cuda"]``), ``torch_version``
    (the torch it was compiled against), ``cuda_archs`` (``TORCH_CUDA_ARCH_LIST`` of the CUDA
    build), ``flags`` (compiler flags), ``debug``, ``openmp``, ``cpu_avx2_compiled`` and
    ``cpu_isa`` (the instruction set the CPU kernels use on this machine: ``"avx2"`` or
    ``"base"``; ``ADDERNET_CPU_ISA=base`` forces the latter).
    """
    return dict(_C.build_info())
