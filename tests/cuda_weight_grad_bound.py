"""The rounding-error bound of the CUDA weight gradient (csrc/cuda/adder2d_weight_grad_kernels.cuh):

dW[co,k] = sum_p dY[co,p] (Xp[k,p] - c_k) - (W[co,k] - c_k) sum_p dY[co,p] per pixel chunk, with
c_k the mean of W[., k] over the 64-channel tile holding co; to first order

  |err| <= u_T |dW| + (m + 2) u sum_p |dY[co,p]| (|Xp[k,p] - W[co,k]| + 2 |W[co,k] - c_k|),

u the unit roundoff of the accumulation type (float, or double for float64), u_T that of the
result's dtype, m = 16 + S + splits with S the 16-pixel steps per split. The steps and splits
mirror adder2d_weight_grad_launch; the CUDA emulation checks the mirror against the launch
function for every emulated case (test_cuda_emulation.py).
"""

import torch
import torch.nn.functional as F

WG_BM, WG_BK, WG_BP = 64, 64, 16  # channels and taps per tile, pixels per step
TARGET_BLOCKS, MIN_STEPS_PER_SPLIT, MAX_GRID_Y = 1024, 8, 65535  # the launch function's constants

ROUNDOFF = {
    torch.float32: 2.0**-24,
    torch.float64: 2.0**-53,
    torch.float16: 2.0**-11,
    torch.bfloat16: 2.0**-8,
}


def _ceil_div(a, b):
    return -(-a // b)


def weight_grad_chunking(case, max_grid_y=MAX_GRID_Y):
    """(tiles, splits, pixels per split) as adder2d_weight_grad_launch chooses them."""
    tiles = case.groups * _ceil_div(case.co // case.groups, WG_BM) * _ceil_div(case.taps, WG_BK)
    steps = _ceil_div(case.n * case.oh * case.ow, WG_BP)
    splits = min(
        max(TARGET_BLOCKS // max(tiles, 1), 1), max(_ceil_div(steps, MIN_STEPS_PER_SPLIT), 1)
    )
    splits = min(splits, max_grid_y)
    steps_per_split = max(_ceil_div(steps, splits), 1)
    return tiles, max(_ceil_div(steps, steps_per_split), 1), steps_per_split * WG_BP


def weight_grad_allowed_error(case, dy, x, w):
    """The bound above per weight element (float64, on the CPU), for the dtype of x."""
    dtype = x.dtype
    u = ROUNDOFF[torch.float64 if dtype == torch.float64 else torch.float32]
    _, splits, chunk = weight_grad_chunking(case)
    m = WG_BP + chunk // WG_BP + splits
    dy, x, w = (t.detach().cpu().double() for t in (dy, x, w))
    g, cog = case.groups, case.co // case.groups
    cols = F.unfold(x, (case.kh, case.kw), case.dilation, case.padding, case.stride)
    cols = cols.view(case.n, g, 1, case.taps, cols.shape[-1])  # [N, G, 1, K, L]
    wg = w.reshape(g, cog, case.taps)
    centre = torch.empty_like(wg)
    for m0 in range(0, cog, WG_BM):
        centre[:, m0 : m0 + WG_BM] = wg[:, m0 : m0 + WG_BM].mean(1, keepdim=True)
    dyg = dy.reshape(case.n, g, cog, 1, cols.shape[-1])  # [N, G, Cog, 1, L]
    terms = 2 * (wg - centre).abs() * dyg.abs().sum((0, 4))
    exact = torch.zeros_like(wg)
    for n in range(case.n):  # in pixel chunks: [G, Cog, K, 256] at a time
        for p0 in range(0, cols.shape[-1], 256):
            diff = cols[n, ..., p0 : p0 + 256] - wg.unsqueeze(-1)  # [G, Cog, K, P]
            d = dyg[n, ..., p0 : p0 + 256]
            terms += (d.abs() * diff.abs()).sum(-1)
            exact += (d * diff).sum(-1)
    allowed = ROUNDOFF[dtype] * exact.abs() + (m + 2) * u * terms
    return allowed.reshape(w.shape)
