"""Build of addernet_cuda: the extension modules addernet_cuda._C and addernet_cuda._C_cuda.

Both are built on torch's stable ABI (TORCH_TARGET_VERSION = addernet_cuda.version.STABLE_ABI)
and Python's limited API, so one build runs on that torch and every later one, and on every
Python from 3.9 (an abi3 wheel). A plain ``pip install .`` builds against whatever torch the
isolated build environment gets; the result runs with the torch already installed.

  addernet_cuda._C       op schemas, CPU kernels, build information (needs only torch's CPU
                         libraries: imports under a CPU-only torch)
  addernet_cuda._C_cuda  the CUDA kernels, built whenever the building torch is a CUDA build,
                         nvcc is found (CUDA_HOME) and ADDERNET_FORCE_CPU is not 1; loaded only
                         when the running torch has CUDA (addernet_cuda/_extension.py)

Environment switches:
  ADDERNET_FORCE_CPU=1     compile the CPU kernels only
  ADDERNET_DEBUG=1         -O0 -g (and -G -lineinfo for CUDA), assertions on
  TORCH_CUDA_ARCH_LIST     CUDA architectures, e.g. "8.0;9.0" (default: the visible GPU's, or
                           "8.0;9.0" when no GPU is visible)
  MAX_JOBS                 parallel compile jobs (ninja)
"""

import glob
import os
import shutil
import sys

import torch
from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def has_cuda_runtime(home):
    return any(glob.glob(os.path.join(home, lib, "libcudart.so*")) for lib in ("lib64", "lib"))


def find_cuda_home():
    """CUDA_HOME, else the toolkit of the nvcc on PATH, else /usr/local/cuda: the first that has
    the CUDA runtime library to link against. (torch takes nvcc's grandparent directory, which for
    a wrapper script such as /usr/local/bin/nvcc is /usr/local, where no libcudart lies.)"""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    nvcc = shutil.which("nvcc")
    candidates = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []
    for home in candidates + ["/usr/local/cuda"]:
        if os.path.exists(os.path.join(home, "bin", "nvcc")) and has_cuda_runtime(home):
            return home
    return None


# Before torch.utils.cpp_extension reads it at import.
if find_cuda_home() is not None:
    os.environ["CUDA_HOME"] = find_cuda_home()

from torch.utils.cpp_extension import (  # noqa: E402
    CUDA_HOME,
    BuildExtension,
    CppExtension,
    CUDAExtension,
)

# Warnings and language standard: the same in CMakeLists.txt.
WARNINGS = ["-Wall", "-Wno-psabi"]
STD = "-std=c++20"


def package_info():
    about = {}
    with open(os.path.join(ROOT, "addernet_cuda", "version.py")) as f:
        exec(f.read(), about)
    return about


def want_cuda():
    if os.environ.get("ADDERNET_FORCE_CPU", "0") == "1":
        return False
    if torch.version.cuda is None or CUDA_HOME is None or not cuda_sources():
        return False
    if not has_cuda_runtime(CUDA_HOME):
        print(
            f"addernet_cuda: no CUDA runtime library under CUDA_HOME={CUDA_HOME}: CPU kernels only"
        )
        return False
    return True


def cuda_sources():
    return sorted(glob.glob("csrc/cuda/*.cu"))


def compile_args(stable_abi, with_cuda):
    debug = os.environ.get("ADDERNET_DEBUG", "0") == "1"
    # -Wno-psabi: the kernels pass 32-byte vectors between static inline functions, which GCC
    # flags in the baseline build although no ABI boundary is crossed. The AVX2 kernels get
    # their flags from a pragma (adder2d_cpu_avx2.cpp).
    # -ffp-contract=off: the CPU kernels fuse multiply-adds where they say so (mul_add in
    # cpu/adder2d_cpu_kernels.h); fusions of the compiler's choosing changed bitwise results
    # from one compiler version to the next.
    # -falign-loops=64: the loops GCC expects to iterate start 64-byte lines (the tap loops do;
    # tests/test_build.py checks the AVX2 forward's). Where a change elsewhere in its file
    # moved the float forward's micro-tile loop (160 bytes) off a line start, the forward ran
    # 10-11% slower on an AMD Zen 3 host (benchmarks/NOTES.md).
    cxx = (
        [STD]
        + (["-O0", "-g"] if debug else ["-O3", "-DNDEBUG"])
        + ["-ffp-contract=off", "-falign-loops=64"]
        + WARNINGS
    )
    nvcc = [STD] + (["-O0", "-g", "-G", "-lineinfo"] if debug else ["-O3", "-DNDEBUG", "-lineinfo"])
    nvcc += ["--expt-relaxed-constexpr", "-Xptxas=-warn-spills"]
    archs = ""
    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "visible GPU")
        cxx.append("-DADDERNET_WITH_CUDA")
        nvcc.append("-DADDERNET_WITH_CUDA")
    flags = " ".join(cxx + (nvcc if with_cuda else []))
    defines = [
        package_info()["target_version_define"](stable_abi),
        f'-DADDERNET_STABLE_ABI="{stable_abi}"',
        f'-DADDERNET_TORCH_VERSION="{torch.__version__}"',
        f'-DADDERNET_CUDA_ARCHS="{archs}"',
        f'-DADDERNET_BUILD_FLAGS="{flags}"',
    ]
    return {"cxx": cxx + defines, "nvcc": nvcc + defines}


# --exclude-libs,ALL: symbols the link takes from static archives stay inside the library. Where
# the compiler links libstdc++ statically (some images' g++ wrappers do), its copy would otherwise
# export std::locale and the rest, the process would bind part of them to the libstdc++ it loaded
# first, and any number formatted through an iostream crashed (torch's own stable-ABI headers
# format their error messages that way).
LINK_ARGS = ["-Wl,--exclude-libs,ALL"] if sys.platform.startswith("linux") else []


def extensions(stable_abi):
    with_cuda = want_cuda()
    args = compile_args(stable_abi, with_cuda)
    common = dict(
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_link_args=LINK_ARGS,
        py_limited_api=True,
    )
    cpu_sources = ["csrc/module.cpp", "csrc/adder2d.cpp", "csrc/adder2d_library.cpp"]
    cpu_sources += ["csrc/adder2d_int8.cpp"]
    cpu_sources += sorted(glob.glob("csrc/cpu/*.cpp"))
    exts = [
        CppExtension(
            "addernet_cuda._C", cpu_sources, extra_compile_args={"cxx": args["cxx"]}, **common
        )
    ]
    if with_cuda:
        sources = sorted(glob.glob("csrc/cuda/*.cpp")) + cuda_sources()
        exts.append(
            CUDAExtension("addernet_cuda._C_cuda", sources, extra_compile_args=args, **common)
        )
    return exts


about = package_info()
setup(
    name="addernet_cuda",
    version=about["__version__"],
    packages=find_packages(include=["addernet_cuda", "addernet_cuda.*"]),
    ext_modules=extensions(about["STABLE_ABI"]),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
