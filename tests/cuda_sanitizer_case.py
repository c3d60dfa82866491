"""Forward and backward (both input-gradient modes) of adder2d on CUDA over the shapes of
adder2d_cases.sanitizer_cases: every kernel (direct and 16x256, 32x128, 64x64, 128x128 tiled forward,
depthwise, one and many weight-gradient splits), and with float32 the 8-bit forward adder2d_int8
in each of its four tiles, for compute-sanitizer to watch.

    python tests/cuda_sanitizer_case.py [DTYPE...]      (float32, float16, float64; default float32)

benchmarks/gpu_check.sh runs it under memcheck (with the caching allocator off) and racecheck.
"""

import sys

import torch
from adder2d_cases import Case, sanitizer_cases

import addernet_cuda
from addernet_cuda import ops

# adder2d_int8: 16, 17, 40 output channels per group (the 16x256, 32x128 and 64x64 tiles),
# depthwise, and 128 on a grid of 288 blocks (the 128x128 tile up to 144 SMs).
INT8_CASES = [
    Case("int8-16", 2, 5, 9, 9, 16, 3, 3, padding=1),
    Case("int8-17", 2, 6, 9, 9, 17, 3, 3, stride=2, padding=1),
    Case("int8-40", 1, 13, 8, 8, 40, 3, 3, padding=1),
    Case("int8-depthwise", 2, 24, 10, 10, 24, 5, 5, padding=2, groups=24),
    Case("int8-128", 4, 32, 96, 96, 128, 1, 1),
]


def main(dtype_names):
    torch.manual_seed(0)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for name in dtype_names:
        dtype = getattr(torch, name)
        for case in sanitizer_cases(sms):
            x, w, b = (t.requires_grad_() for t in case.tensors(dtype, "cuda", seed=len(case.name)))
            for mode in ("hardtanh", "exact"):
                y = addernet_cuda.adder2d(x, w, b, **case.kwargs, input_grad=mode)
                y.backward(torch.randn_like(y))
    if "float32" in dtype_names:
        for case in INT8_CASES:
            x = torch.randn(case.n, case.c, case.h, case.w, device="cuda")
            shape = (case.co, case.c // case.groups, case.kh, case.kw)
            wq = torch.randint(-128, 128, shape, dtype=torch.int8, device="cuda")
            a, b = torch.randn(case.co, device="cuda"), torch.randn(case.co, device="cuda")
            ops.adder2d_int8(x, wq, torch.tensor([0.05]), a, b, **case.kwargs, relu=True)
    torch.cuda.synchronize()
    print("sanitizer case done:", dtype_names)


if __name__ == "__main__":
    main(sys.argv[1:] or ["float32"])
