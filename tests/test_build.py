"""Tests of the build and import checks (setup.py, addernet_cuda/_extension.py)."""

import importlib
import os
import subprocess
import sys

import pytest
import torch

import addernet_cuda
from addernet_cuda import _extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_build_info():
    info = addernet_cuda.build_info()
    assert "cpu" in info["backends"]
    assert info["torch_version"] == torch.__version__
    assert info["openmp"] is True, "at::parallel_for would run on one thread without OpenMP"
    assert info["cpu_isa"] in ("avx2", "base")
    assert isinstance(addernet_cuda.__version__, str) and addernet_cuda.__version__.count(".") == 2


def test_ops_are_registered_for_cpu():
    for op in ("adder2d", "adder2d_input_grad", "adder2d_weight_grad"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"addernet::{op}", "CPU"), op


def test_refuses_extension_built_against_another_torch(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "0.0.1")
    with pytest.raises(
        ImportError, match=r"built against torch .* but torch 0.0.1 is running.*Rebuild"
    ):
        _extension._load()


def test_refuses_unloadable_extension_with_rebuild_instruction(monkeypatch):
    def fail(name):
        raise ImportError("undefined symbol: _ZN3c1010Something")

    monkeypatch.setattr(importlib, "import_module", fail)
    with pytest.raises(
        ImportError, match="cannot load the compiled extension.*undefined symbol.*Rebuild"
    ):
        _extension._load()


def test_isa_switch_from_environment():
    code = "import addernet_cuda; print(addernet_cuda.build_info()['cpu_isa'])"
    env = dict(os.environ, ADDERNET_CPU_ISA="base", PYTHONPATH=ROOT)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "base"


def test_set_cpu_isa_rejects_unknown():
    with pytest.raises(RuntimeError, match='isa must be "base" or "avx2", got "sse9"'):
        _extension._C.set_cpu_isa("sse9")
