"""Forward and backward (both input-gradient modes) of adder2d on CUDA over the shapes of
adder2d_cases.sanitizer_cases: every kernel (direct and small/medium/large tiled forward,
depthwise, one and many weight-gradient splits), for compute-sanitizer to watch.

    python tests/cuda_sanitizer_case.py [DTYPE...]      (float32, float16, float64; default float32)

benchmarks/gpu_check.sh runs it under memcheck (with the caching allocator off) and racecheck.
"""

import sys

import torch
from adder2d_cases import sanitizer_cases

import addernet_cuda


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
    torch.cuda.synchronize()
    print("sanitizer case done:", dtype_names)


if __name__ == "__main__":
    main(sys.argv[1:] or ["float32"])
