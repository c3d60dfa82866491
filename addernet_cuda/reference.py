"""Unfused pure-PyTorch reference of adder2d: the official AdderNet unfold algorithm,
generalised to stride/padding/dilation pairs, groups and bias, and chunked over output channels.

The algorithm follows ``adder.py`` of the official AdderNet code (Chen et al., "AdderNet: Do We
Really Need Multiplications in Deep Learning?", CVPR 2020; https://github.com/huawei-noah/AdderNet,
Copyright (C) 2020 Huawei Technologies Co., Ltd., BSD-3-Clause): unfold the zero-padded input to
columns X_col[K, N*L], then broadcast against W_col[Co, K]:

    Y      = -|W_col[:, :, None] - X_col[None]|.sum(1)
    dW_col = ((X_col[None] - W_col[:, :, None]) * dY[:, None]).sum(2)      full precision
    dX_col = (HT(W_col[:, :, None] - X_col[None]) * dY[:, None]).sum(0)   folded back (col2im)

The official code also rescales dW inside autograd (the adaptive learning rate); here, as in the
ops, gradients are raw. The broadcast materialises chunk x K x N*L elements, so output channels
are processed in chunks of at most ``max_chunk_bytes``; this is a slow, memory-hungry yardstick
for tests and benchmarks, not for training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .ops import _geometry as _parse_geometry
from .ops import check_args, check_input_grad_mode

DEFAULT_CHUNK_BYTES = 256 * 1024 * 1024


def _geometry(x, w, stride, padding, dilation, groups):
    n, c, h, wd = x.shape
    co, cig, kh, kw = w.shape
    shape = check_args("reference.adder2d", x, w, None, stride, padding, dilation, groups)
    return n, c, h, wd, co, cig, kh, kw, shape[2], shape[3]


def _columns(x, g, cig, kh, kw, stride, padding, dilation):
    """X_col of group g: [cig*kh*kw, N*L], column index n*L + l."""
    n = x.shape[0]
    cols = F.unfold(
        x[:, g * cig : (g + 1) * cig], (kh, kw), dilation=dilation, padding=padding, stride=stride
    )
    return cols.permute(1, 0, 2).reshape(cols.shape[1], n * cols.shape[2])


def _chunks(rows, per_row_elems, itemsize, max_chunk_bytes):
    step = max(1, int(max_chunk_bytes // max(1, per_row_elems * itemsize)))
    for start in range(0, rows, step):
        yield start, min(rows, start + step)


def forward(x, w, bias, stride, padding, dilation, groups, max_chunk_bytes=DEFAULT_CHUNK_BYTES):
    n, c, h, wd, co, cig, kh, kw, oh, ow = _geometry(x, w, stride, padding, dilation, groups)
    cog = co // groups
    out = x.new_empty(co, n * oh * ow)
    for g in range(groups):
        x_col = _columns(x, g, cig, kh, kw, stride, padding, dilation)
        w_col = w[g * cog : (g + 1) * cog].reshape(cog, -1)
        for a, b in _chunks(cog, x_col.numel(), x.element_size(), max_chunk_bytes):
            out[g * cog + a : g * cog + b] = -(w_col[a:b, :, None] - x_col[None]).abs().sum(1)
    y = out.view(co, n, oh * ow).permute(1, 0, 2).reshape(n, co, oh, ow)
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1)
    return y.contiguous()


def input_grad(
    grad_output,
    x,
    w,
    stride,
    padding,
    dilation,
    groups,
    mode="hardtanh",
    max_chunk_bytes=DEFAULT_CHUNK_BYTES,
):
    n, c, h, wd, co, cig, kh, kw, oh, ow = _geometry(x, w, stride, padding, dilation, groups)
    cog = co // groups
    dy = grad_output.permute(1, 0, 2, 3).reshape(co, n * oh * ow)
    grads = []
    for g in range(groups):
        x_col = _columns(x, g, cig, kh, kw, stride, padding, dilation)
        w_col = w[g * cog : (g + 1) * cog].reshape(cog, -1)
        gx_col = torch.zeros_like(x_col)
        for a, b in _chunks(cog, x_col.numel(), x.element_size(), max_chunk_bytes):
            z = w_col[a:b, :, None] - x_col[None]
            z = z.clamp(-1, 1) if mode == "hardtanh" else z.sign()
            gx_col += (z * dy[g * cog + a : g * cog + b, None]).sum(0)
        cols = gx_col.view(cig * kh * kw, n, oh * ow).permute(1, 0, 2)
        # fold sums every column entry into its input pixel; entries of padded taps fall outside.
        grads.append(
            F.fold(cols, (h, wd), (kh, kw), dilation=dilation, padding=padding, stride=stride)
        )
    return torch.cat(grads, 1)


def weight_grad(
    grad_output, x, w, stride, padding, dilation, groups, max_chunk_bytes=DEFAULT_CHUNK_BYTES
):
    n, c, h, wd, co, cig, kh, kw, oh, ow = _geometry(x, w, stride, padding, dilation, groups)
    cog = co // groups
    dy = grad_output.permute(1, 0, 2, 3).reshape(co, n * oh * ow)
    gw = torch.empty_like(w)
    for g in range(groups):
        x_col = _columns(x, g, cig, kh, kw, stride, padding, dilation)
        w_col = w[g * cog : (g + 1) * cog].reshape(cog, -1)
        for a, b in _chunks(cog, x_col.numel(), x.element_size(), max_chunk_bytes):
            d = x_col[None] - w_col[a:b, :, None]
            gw[g * cog + a : g * cog + b] = (
                (d * dy[g * cog + a : g * cog + b, None]).sum(2).view(b - a, cig, kh, kw)
            )
    return gw


class _Adder2dReference(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, bias, stride, padding, dilation, groups, mode, max_chunk_bytes):
        ctx.save_for_backward(x, w)
        ctx.args = (stride, padding, dilation, groups)
        ctx.mode = mode
        ctx.max_chunk_bytes = max_chunk_bytes
        ctx.has_bias = bias is not None
        return forward(x, w, bias, stride, padding, dilation, groups, max_chunk_bytes)

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = input_grad(
                grad, x, w, *ctx.args, mode=ctx.mode, max_chunk_bytes=ctx.max_chunk_bytes
            )
        if ctx.needs_input_grad[1]:
            gw = weight_grad(grad, x, w, *ctx.args, max_chunk_bytes=ctx.max_chunk_bytes)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum((0, 2, 3))
        return gx, gw, gb, None, None, None, None, None, None


def adder2d(
    input,
    weight,
    bias=None,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    input_grad="hardtanh",
    max_chunk_bytes=DEFAULT_CHUNK_BYTES,
):
    """Reference adder2d with the same arguments, result and gradient rules as
    :func:`addernet_cuda.adder2d` (raw gradients), computed by the official unfold algorithm."""
    check_input_grad_mode(input_grad)
    stride, padding, dilation = _parse_geometry(stride, padding, dilation, groups)
    return _Adder2dReference.apply(
        input, weight, bias, stride, padding, dilation, groups, input_grad, max_chunk_bytes
    )


def quantize_codes(v, scale):
    """The int8 codes of the 8-bit adder: ``clamp(round(v / scale), -127, 127)`` computed in
    float32 (round half to even), as ``adder2d_int8`` computes them."""
    scale = torch.as_tensor(scale, dtype=torch.float32)
    return torch.clamp(torch.round(v.float() / scale), -127, 127).to(torch.int8)


def adder2d_int8_sums(x_codes, w_codes, stride, padding, dilation, groups):
    """``S = sum |Xq_pad - Wq|`` of integer codes (zero-padded), exact, as int64: the unfold
    reference in float64 (integers below 2^53 are exact)."""
    y = forward(x_codes.double(), w_codes.double(), None, stride, padding, dilation, groups)
    return (-y).round().to(torch.int64)


def adder2d_int8(x, w_codes, scale, alpha, beta, stride, padding, dilation, groups, relu=False):
    """Reference of ``ops.adder2d_int8``: codes of x, exact sums, then ``alpha * S + beta``
    (a float32 multiply, then an add) and the optional ReLU."""
    s = adder2d_int8_sums(quantize_codes(x, scale), w_codes, stride, padding, dilation, groups)
    y = s.float() * alpha.view(1, -1, 1, 1)
    y = y + beta.view(1, -1, 1, 1)
    return torch.relu(y) if relu else y
