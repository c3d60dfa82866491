"""Build of addernet_cuda and its extension module addernet_cuda._C.

The C++ CPU kernels are always compiled; the CUDA kernels (csrc/cuda/*.cu) whenever the
installed torch is a CUDA build, nvcc is found (CUDA_HOME) and ADDERNET_FORCE_CPU is not 1.

Environment switches:
  ADDERNET_FORCE_CPU=1     compile the CPU kernels only
  ADDERNET_DEBUG=1         -O0 -g (and -G -lineinfo for CUDA), assertions on
  TORCH_CUDA_ARCH_LIST     CUDA architectures, e.g. "8.0;9.0" (default: the visible GPU's, or
                           "8.0;9.0" when no GPU is visible)
  MAX_JOBS                 parallel compile jobs (ninja)

Build against the torch you run with: ``pip install --no-build-isolation .``. The package
refuses to import an extension built against another torch (addernet_cuda/_extension.py).
"""

import glob
import os
import platform

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def version():
    about = {}
    with open(os.path.join(ROOT, "addernet_cuda", "version.py")) as f:
        exec(f.read(), about)
    return about["__version__"]


def want_cuda():
    if os.environ.get("ADDERNET_FORCE_CPU", "0") == "1":
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None and bool(cuda_sources())


def cuda_sources():
    return sorted(glob.glob("csrc/cuda/*.cu"))


def extension():
    debug = os.environ.get("ADDERNET_DEBUG", "0") == "1"
    with_cuda = want_cuda()
    sources = ["csrc/module.cpp", "csrc/adder2d.cpp", "csrc/adder2d_int8.cpp"] + sorted(
        glob.glob("csrc/cpu/*.cpp")
    )
    cxx = ["-O0", "-g"] if debug else ["-O3", "-DNDEBUG"]
    if platform.system() != "Windows":
        # at::parallel_for is OpenMP code inlined from ATen's headers: without -fopenmp it runs
        # on one thread. The AVX2 kernels get their flags from a pragma (adder2d_cpu_avx2.cpp).
        # -Wno-psabi: the kernels pass 32-byte vectors between static inline functions, which
        # GCC flags in the baseline build although no ABI boundary is crossed.
        cxx += ["-fopenmp", "-Wno-psabi"]
    nvcc = ["-O0", "-g", "-G", "-lineinfo"] if debug else ["-O3", "-DNDEBUG", "-lineinfo"]
    nvcc += ["--expt-relaxed-constexpr", "-Xptxas=-warn-spills"]
    archs = ""
    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "visible GPU")
        sources += cuda_sources()
        cxx.append("-DADDERNET_WITH_CUDA")
        nvcc.append("-DADDERNET_WITH_CUDA")
    flags = " ".join(cxx + (nvcc if with_cuda else []))
    defines = [
        f'-DADDERNET_TORCH_VERSION="{torch.__version__}"',
        f'-DADDERNET_CUDA_ARCHS="{archs}"',
        f'-DADDERNET_BUILD_FLAGS="{flags}"',
    ]
    args = {"cxx": cxx + defines}
    if with_cuda:
        args["nvcc"] = nvcc + defines
    kind = CUDAExtension if with_cuda else CppExtension
    return kind(
        name="addernet_cuda._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args=args,
        extra_link_args=["-fopenmp"] if platform.system() != "Windows" else [],
    )


setup(
    name="addernet_cuda",
    version=version(),
    packages=find_packages(include=["addernet_cuda", "addernet_cuda.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
