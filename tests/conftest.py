"""Shared test parameters: devices, dtypes, CPU instruction sets, and the expectation switch.

CUDA cases skip with a reason on a machine without a usable GPU. ADDERNET_EXPECT_CUDA=1 (set by
.ci/run) turns "the CUDA kernels were not compiled" from a skip into a failure.
"""

import os

import pytest
import torch

import addernet_cuda
from addernet_cuda import _extension

CUDA_REASON = "no CUDA device: torch.cuda.is_available() is False on this machine"
EXPECT_CUDA = os.environ.get("ADDERNET_EXPECT_CUDA", "0") == "1"

devices = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON)
    ),
]
float_dtypes = [torch.float32, torch.float64]


def _isa_param(isa):
    info = addernet_cuda.build_info()
    if isa == "avx2":
        supported = info["cpu_avx2_compiled"] and info["cpu_isa"] in ("avx2", "avx512")
        return pytest.param(
            isa,
            marks=pytest.mark.skipif(
                not supported, reason="AVX2 kernels not compiled in or the CPU lacks AVX2/FMA"
            ),
        )
    if isa == "avx512":
        return pytest.param(
            isa,
            marks=pytest.mark.skipif(
                info["cpu_isa"] != "avx512",
                reason="AVX-512 kernels not compiled in or the CPU lacks AVX-512 "
                "F/BW/VL/DQ/VNNI (or ADDERNET_CPU_ISA chose a lower level)",
            ),
        )
    return isa


# At "avx512" the int8 kernels, the float forward's tile loops, the float input gradient and the
# float weight gradient have AVX-512 copies (the input gradient's stride-1 loop and the weight
# gradient's FMAs on 64-byte vectors); the other float kernels run their AVX2 copy there.
cpu_isas = [_isa_param("base"), _isa_param("avx2"), _isa_param("avx512")]
int8_cpu_isas = cpu_isas


@pytest.fixture
def cpu_isa(request):
    """Runs the test body with the CPU kernels of the requested instruction set."""
    previous = _extension._C.cpu_isa()
    _extension._C.set_cpu_isa(request.param)
    yield request.param
    _extension._C.set_cpu_isa(previous)


@pytest.fixture
def one_thread():
    """Runs the test on one thread (restored afterwards)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
