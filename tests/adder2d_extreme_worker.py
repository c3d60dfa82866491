"""Runs adder2d cases with extreme stride/padding/dilation/groups values, one JSON line each.

Used by tests/test_adder2d.py::test_extreme_arguments_never_crash in a subprocess: reads a JSON
list of cases on stdin and, for each, calls the public wrapper (forward and backward), the two
raw gradient ops and the fake kernel, printing one line per case as soon as it is done, so a
crash is pinned to the case after the last line. Memory is capped (RLIMIT_DATA) so that a
valid but enormous output fails to allocate instead of exhausting the machine.
"""

import json
import resource
import sys

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import addernet_cuda

MEMORY_CAP = 3 << 30
INT64_MAX = 2**63 - 1


def expected_shape(case):
    n, c, h, w = case["x"]
    co, _, kh, kw = case["w"]
    (sh, sw), (ph, pw), (dh, dw) = case["stride"], case["padding"], case["dilation"]
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1 if sh > 0 else None
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1 if sw > 0 else None
    return [n, co, oh, ow]


def outcome(fn):
    try:
        out = fn()
    except (RuntimeError, ValueError, TypeError, IndexError, OverflowError, MemoryError) as e:
        return {"error": type(e).__name__, "message": str(e).splitlines()[0][:300]}
    return {"shape": list(out.shape) if out is not None else None}


def run_case(case):
    x = torch.randn(case["x"], requires_grad=True)
    w = torch.randn(case["w"], requires_grad=True)
    args = (case["stride"], case["padding"], case["dilation"], case["groups"])

    def public():
        y = addernet_cuda.adder2d(x, w, None, *args)
        y.sum().backward()
        return y

    shape = expected_shape(case)
    valid = None not in shape and all(0 <= s <= INT64_MAX for s in shape)
    if valid and shape[0] * shape[1] * shape[2] * shape[3] <= INT64_MAX:
        dy = torch.ones(1).expand(shape)  # no memory, whatever the claimed size
    else:
        dy = torch.ones(1, 1, 1, 2)
    raw = (dy, x.detach(), w.detach(), *args)

    def fake():
        mode = FakeTensorMode()
        fx, fw = mode.from_tensor(x.detach()), mode.from_tensor(w.detach())
        with mode:
            return torch.ops.addernet.adder2d(fx, fw, None, *args, "hardtanh")

    return {
        "public": outcome(public),
        "input_grad": outcome(lambda: torch.ops.addernet.adder2d_input_grad(*raw, "hardtanh")),
        "weight_grad": outcome(lambda: torch.ops.addernet.adder2d_weight_grad(*raw)),
        "fake": outcome(fake),
        "expected": shape,
    }


def main():
    torch.set_num_threads(1)
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    cap = MEMORY_CAP if hard == resource.RLIM_INFINITY else min(MEMORY_CAP, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    for case in json.load(sys.stdin):
        print(json.dumps(run_case(case)), flush=True)


if __name__ == "__main__":
    main()
