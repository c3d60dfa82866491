"""Tests of the build and import checks (setup.py, addernet_cuda/_extension.py)."""

import glob
import importlib
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import addernet_cuda
from addernet_cuda import _extension
from addernet_cuda.version import STABLE_ABI, target_version_define

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_build_info():
    info = addernet_cuda.build_info()
    assert "cpu" in info["backends"]
    assert info["stable_abi"] == STABLE_ABI
    assert ("cuda" in info["backends"]) == (
        info["cuda_compiled"] and torch.version.cuda is not None
    )
    # Built with any torch >= STABLE_ABI (the isolated build takes the newest), runs with this one.
    assert _extension._major_minor(info["torch_version"]) >= _extension._major_minor(STABLE_ABI)
    assert info["cpu_isa"] in ("avx512", "avx2", "base")
    assert isinstance(addernet_cuda.__version__, str) and addernet_cuda.__version__.count(".") == 2


def test_ops_are_registered_for_cpu():
    for op in ("adder2d", "adder2d_input_grad", "adder2d_weight_grad"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"addernet::{op}", "CPU"), op


def test_accepts_every_torch_from_the_stable_abi_on(monkeypatch):
    for version in (STABLE_ABI + ".0", "2.13.0+cpu", "2.99.1", "3.0.0a0+git123"):
        monkeypatch.setattr(torch, "__version__", version)
        _extension._check_torch_version()


def test_refuses_torch_older_than_the_stable_abi(monkeypatch):
    major, minor = _extension._major_minor(STABLE_ABI)
    older = f"{major}.{minor - 1}.3"
    monkeypatch.setattr(torch, "__version__", older)
    expected = rf"built for the torch stable ABI {STABLE_ABI} and runs with torch >= {STABLE_ABI}"
    with pytest.raises(ImportError, match=rf"{expected}, but torch {older} is running.*Install"):
        _extension._load()


class _FakeC:
    """Stands in for addernet_cuda._C: a build with CUDA kernels."""

    @staticmethod
    def build_info():
        return {"stable_abi": STABLE_ABI, "cuda_compiled": True}


@pytest.mark.parametrize("torch_cuda", [None, "13.0"])
def test_cuda_library_loaded_only_under_cuda_torch(monkeypatch, torch_cuda):
    # A wheel built with a CUDA torch must import under a CPU-only torch: its CUDA library (which
    # needs libtorch_cuda) is loaded only when the running torch has CUDA.
    loaded = []

    def fake_import(name):
        loaded.append(name)
        return _FakeC if name == "addernet_cuda._C" else object()

    monkeypatch.setattr(importlib, "import_module", fake_import)
    monkeypatch.setattr(torch.version, "cuda", torch_cuda)
    module, cuda = _extension._load()
    assert module is _FakeC
    expected = ["addernet_cuda._C"] + (["addernet_cuda._C_cuda"] if torch_cuda else [])
    assert loaded == expected
    assert (cuda is not None) == (torch_cuda is not None)


def test_pyproject_requires_the_stable_abi_torch():
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        text = f.read()
    dependencies = re.search(r"^dependencies = \[(.*)\]", text, re.MULTILINE).group(1)
    assert f'"torch>={STABLE_ABI}"' in dependencies


def _op_libraries():
    package = os.path.dirname(addernet_cuda.__file__)
    return sorted(glob.glob(os.path.join(package, "_C*.so")))


def _dynamic_symbols(which):
    """(library, names of its dynamic symbols, nm's `which`: "--undefined-only" or
    "--defined-only") for each op library; fails when none was built."""
    libraries = _op_libraries()
    assert libraries, "no compiled extension found next to addernet_cuda/__init__.py"
    for library in libraries:
        out = subprocess.run(["nm", "-D", which, library], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        yield library, out.stdout.split()


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs nm (binutils)")
def test_op_libraries_use_only_the_stable_c_abi_of_torch():
    # A C++ symbol of ATen, c10 or torch (or libtorch_python) would tie the build to one torch.
    for library, symbols in _dynamic_symbols("--undefined-only"):
        bound = [s for s in symbols if re.match(r"_Z\w*(3c10|2at|5torch)", s)]
        assert not bound, f"{os.path.basename(library)} uses torch C++ symbols: {bound[:5]}"
        needed = subprocess.run(["readelf", "-d", library], capture_output=True, text=True).stdout
        assert "libtorch_python" not in needed, os.path.basename(library)


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs nm (binutils)")
def test_op_libraries_export_no_libstdcxx_of_their_own():
    """A library linked against a static libstdc++ (some compilers' wrappers do that) must keep
    that copy hidden: exported, part of it (std::locale's globals) bound to the libstdc++ the
    process loaded first, and formatting a number in any error message crashed the process."""
    for library, symbols in _dynamic_symbols("--defined-only"):
        # std::locale's members and std::ostream's number insertion are never instantiated in user
        # code: defined here, they come from a copy of libstdc++.
        own = [s for s in symbols if re.match(r"_ZNS(t6locale|o9_M_insert)", s)]
        assert not own, f"{os.path.basename(library)} exports libstdc++'s own symbols: {own[:5]}"


def _avx2_functions(wanted, namespaces=("cpu::avx2::",)):
    """The disassembly of the AVX2 kernels in _C.abi3.so (or of those in any of ``namespaces``)
    whose name passes ``wanted``: a dict name -> list of (address, instruction text). Skips
    where objdump, the library or its symbols are missing, or the AVX2 kernels are not compiled
    in."""
    if shutil.which("objdump") is None:
        pytest.skip("needs objdump (binutils)")
    library = os.path.join(os.path.dirname(addernet_cuda.__file__), "_C.abi3.so")
    if not os.path.exists(library):
        pytest.skip("no _C.abi3.so next to addernet_cuda/__init__.py")
    if not addernet_cuda.build_info()["cpu_avx2_compiled"]:
        pytest.skip("the AVX2 kernels are not compiled in")
    out = subprocess.run(
        ["objdump", "-d", "-C", "--no-show-raw-insn", library], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    functions, function = {}, None
    for line in out.stdout.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if head:
            name = head.group(1)
            inside = any(n in name for n in namespaces)
            function = name if inside and wanted(name) else None
            if function:
                functions[function] = []
        elif function:
            body = re.match(r"^\s*([0-9a-f]+):\s*(.*)$", line)
            if body:
                functions[function].append((int(body.group(1), 16), body.group(2)))
    if not functions:
        pytest.skip("no symbols of the AVX2 kernels in _C.abi3.so (a stripped library?)")
    return functions


def test_gradient_kernels_fuse_every_product():
    """The AVX2 gradient kernels multiply only inside explicit fused multiply-adds (mul_add in
    cpu/adder2d_cpu_kernels.h; the build passes -ffp-contract=off). Left to the compiler, which
    products were fused changed with its version and its inlining: built by GCC 13 the input
    gradient of a plane differed in the last bit between blocks of 1 and 4 planes, built by
    GCC 12 it did not. A plain vector or scalar multiply in these functions is such a product.
    The AVX-512 copies (input and weight gradient, float) are held to the same."""
    functions = _avx2_functions(
        lambda name: "input_grad" in name or "weight_grad" in name,
        ("cpu::avx2::", "cpu::avx512_float::"),
    )
    assert any("input_grad" in f for f in functions) and any("weight_grad" in f for f in functions)
    if addernet_cuda.build_info()["cpu_avx512_compiled"]:
        assert any("avx512_float::weight_grad_block<" in f for f in functions), sorted(functions)
    plain = {}
    for function, lines in functions.items():
        for _, text in lines:
            if re.match(r"vmul[ps][sd]\s", text):
                plain[function] = plain.get(function, 0) + 1
    assert not plain, f"unfused products: {plain}"


def test_forward_tap_loops_start_cache_lines():
    """Every innermost tap loop of the AVX2 forward micro-tiles (a conditional backward jump's
    target, with a sign-bit clear inside and no other loop) starts on a 64-byte line (the
    build's -falign-loops=64). Where a change elsewhere in its file moved
    micro_tile<float, 4, true>'s 160-byte loop to an address 32 bytes past a line, the same loop
    ran 10-11% slower on an AMD Zen 3 host (vgg.c5's forward 0.87 -> 0.78 of the register
    ceiling, benchmarks/NOTES.md)."""
    functions = _avx2_functions(
        lambda name: "::micro_tile" in name or "::register_ceiling(" in name
    )
    starts = {}
    for function, lines in functions.items():
        loops = []  # (first address, jump's address)
        for address, text in lines:
            jump = re.match(r"j(?!mp)[a-z]+\s+([0-9a-f]+)\s", text)
            if jump and int(jump.group(1), 16) < address:
                loops.append((int(jump.group(1), 16), address))
        for target, address in loops:
            inner = any(
                target <= t and a < address for t, a in loops if (t, a) != (target, address)
            )
            loop = [t for a, t in lines if target <= a <= address]
            if not inner and any(re.match(r"vp?and(p[sd]|[dq])?\s", t) for t in loop):
                starts.setdefault(function, []).append(target)
    assert any("micro_tile<float, 4, true>" in f for f in starts), sorted(functions)
    off_line = {f: [hex(a) for a in a_list if a % 64] for f, a_list in starts.items()}
    off_line = {f: a for f, a in off_line.items() if a}
    assert not off_line, f"tap loops not on a 64-byte line: {off_line}"


def test_forward_tap_loops_stay_in_registers():
    """The forward micro-tiles' loop over taps (micro_tile, micro_tile_direct, the AVX-512 build's
    micro_tile_zmm_panel, and the register ceilings that measure their arithmetic) keeps pixels and accumulators in registers:
    no load or store on the stack, and no register copy. Pixels copied into an array through the
    stack in 16-byte halves and read back as 32-byte vectors (a load store forwarding cannot
    serve, every tap) made the float64 forward 3.7x slower; a subtraction by fused multiply-add,
    which overwrites an operand the other rows still read, cost three copies per tap of 36
    instructions. A loop is the code from a conditional backward jump's target to the jump; a tap
    loop is one that clears sign bits (|x - w|)."""
    functions = _avx2_functions(
        lambda name: "::micro_tile" in name or "::register_ceiling" in name,
        ("cpu::avx2::", "cpu::avx512_float::"),
    )
    unchecked, bad = [], {}
    for function, lines in functions.items():
        frame_pointer = any(re.match(r"mov\s+%rsp,%rbp$", t) for _, t in lines)
        stack = ("(%rsp)", "(%rbp)") if frame_pointer else ("(%rsp)",)
        tap_loops = 0
        for address, text in lines:
            jump = re.match(r"j(?!mp)[a-z]+\s+([0-9a-f]+)\s", text)  # conditional
            if not jump or int(jump.group(1), 16) >= address:
                continue
            loop = [t for a, t in lines if int(jump.group(1), 16) <= a <= address]
            if not any(re.match(r"vp?and(p[sd]|[dq])?\s", t) for t in loop):
                continue
            tap_loops += 1
            found = [
                t
                for t in loop
                if any(s in t for s in stack)
                or re.match(r"vmov[a-z0-9]*\s+%[xyz]mm\d+,%[xyz]mm\d+$", t)
            ]
            if found:
                bad[function] = found
        if tap_loops == 0:
            unchecked.append(function)
    names = " ".join(functions)
    for name in (
        "micro_tile<float, 4, true>",  # a panel of pixels, weights interleaved
        "micro_tile<float, 4, false>",  # and as they are
        "micro_tile_direct<float, 4",
        "micro_tile_direct<double, 2",
        "micro_tile_direct<float, 1, true, 4>",  # the wide tile of the channels left over
        "micro_tile_direct<double, 1, true, 2>",
        "register_ceiling(",
    ):
        assert name in names, f"{name} not found out of line: {sorted(functions)}"
    if addernet_cuda.build_info()["cpu_avx512_compiled"]:
        for name in (
            "micro_tile_zmm_panel<8, true>",  # the AVX-512 float tile over a panel
            "micro_tile_zmm_panel<8, false>",
            "micro_tile_zmm_panel<4, false>",
            "register_ceiling_zmm(",
        ):
            assert name in names, f"{name} not found out of line: {sorted(functions)}"
    assert not unchecked, f"no tap loop found in: {unchecked}"
    assert not bad, bad


def _clang():
    for name in (
        "clang++",
        "clang++-19",
        "clang++-18",
        "clang++-17",
        "clang++-16",
        "clang++-15",
        "clang++-14",
    ):
        if shutil.which(name):
            return name
    return None


def test_target_version_define_encodes_major_and_minor():
    assert target_version_define("2.11") == "-DTORCH_TARGET_VERSION=0x020b000000000000"
    assert target_version_define("3.0") == "-DTORCH_TARGET_VERSION=0x0300000000000000"
    assert target_version_define() == target_version_define(STABLE_ABI)


@pytest.mark.skipif(_clang() is None, reason="needs clang++ (the build uses the C++ compiler)")
def test_op_library_sources_compile_with_clang():
    """The C++ sources of the op libraries pass clang's front end (from clang 14) with the build's
    flags. GCC accepts lambdas that capture a structured binding (C++20); clang before 16 does
    not, and the input gradient's entries used one."""
    import sysconfig

    from torch.utils.cpp_extension import include_paths

    sources = sorted(glob.glob(os.path.join(ROOT, "csrc", "*.cpp")))
    sources += sorted(glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))
    flags = ["-std=c++20", "-fsyntax-only", "-Wall", "-Werror", "-Wno-unknown-warning-option"]
    flags += [target_version_define()]
    flags += ["-I", os.path.join(ROOT, "csrc"), "-I", sysconfig.get_paths()["include"]]
    flags += [f"-I{p}" for p in include_paths()]
    failed = {}
    for source in sources:
        out = subprocess.run([_clang(), *flags, source], capture_output=True, text=True)
        if out.returncode != 0:
            failed[os.path.relpath(source, ROOT)] = out.stderr[-1500:]
    assert not failed, f"clang refuses: {failed}"


def test_cpp_errors_show_no_source_path():
    x, w = torch.randn(2, 4, 8, 8), torch.randn(6, 3, 3, 3)
    with pytest.raises(RuntimeError) as error:
        torch.ops.addernet.adder2d(x, w, None, [1, 1], [0, 0], [1, 1], 1)
    message = str(error.value)
    assert message.startswith("adder2d: weight.size(1) must be in_channels / groups"), message
    assert ".cpp" not in message and "csrc" not in message, message


def test_refuses_unloadable_extension_with_rebuild_instruction(monkeypatch):
    def fail(name):
        raise ImportError("undefined symbol: _ZN3c1010Something")

    monkeypatch.setattr(importlib, "import_module", fail)
    with pytest.raises(
        ImportError, match="cannot load the compiled extension.*undefined symbol.*Install torch"
    ):
        _extension._load()


@pytest.mark.parametrize("isa", ["base", "avx2", "avx512", "sse9"])
def test_isa_switch_from_environment(isa):
    levels = ["base", "avx2", "avx512"]
    if os.environ.get("ADDERNET_CPU_ISA") and isa in ("avx2", "avx512"):
        pytest.skip("ADDERNET_CPU_ISA is set for the tests: this machine's best level is unknown")
    best = addernet_cuda.build_info()["cpu_isa"]
    code = "import addernet_cuda; print(addernet_cuda.build_info()['cpu_isa'])"
    # The copy of the package under test (the source tree's, or an installed wheel's).
    package_parent = os.path.dirname(os.path.dirname(addernet_cuda.__file__))
    env = dict(os.environ, ADDERNET_CPU_ISA=isa, PYTHONPATH=package_parent)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    if isa == "sse9":
        assert out.returncode != 0
        assert "ADDERNET_CPU_ISA: isa must be" in out.stderr and '"sse9"' in out.stderr
    elif levels.index(isa) > levels.index(best):
        assert out.returncode != 0 and "ADDERNET_CPU_ISA" in out.stderr, out.stderr
    else:
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == isa


def test_set_cpu_isa_rejects_unknown():
    with pytest.raises(RuntimeError, match='isa must be "base", "avx2" or "avx512", got "sse9"'):
        _extension._C.set_cpu_isa("sse9")


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_forward_ab_harness_builds_and_agrees_with_itself(tmp_path):
    """benchmarks/forward_ab.cpp (the standalone A/B timing of the CPU forward kernels) compiles
    against the tree's kernel header, and with the same header as A and B runs the direct and
    the batch path to bitwise equal outputs."""
    cpuinfo = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    if not (re.search(r"\bavx2\b", cpuinfo) and re.search(r"\bfma\b", cpuinfo)):
        pytest.skip("the harness runs AVX2 + FMA kernels; /proc/cpuinfo lists no avx2 and fma")
    kernels = '"' + os.path.join(ROOT, "csrc", "cpu", "adder2d_cpu_kernels.h") + '"'
    binary = str(tmp_path / "forward_ab")
    build = subprocess.run(
        ["g++", "-O1", "-std=c++17", "-ffp-contract=off", "-Wall", "-Werror", "-Wno-psabi"]
        + ["-I", os.path.join(ROOT, "csrc", "cpu"), f"-DKERNELS_A={kernels}"]
        + [f"-DKERNELS_B={kernels}", "-o", binary]
        + [os.path.join(ROOT, "benchmarks", "forward_ab.cpp")],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    for args in (
        ["direct", "3", "5", "11", "13", "16", "3", "2", "1"],
        ["batch", "9", "6", "9", "7", "12", "3", "1", "1"],
    ):
        out = subprocess.run([binary, *args, "1"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert "bitwise equal" in out.stdout, out.stdout
