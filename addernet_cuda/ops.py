"""Typed Python entry points of the adder2d ops, with their fake kernels and autograd.

The ops (schemas in csrc/adder2d.cpp) compute, for input X[N, C, H, W] and weight
W[Co, C/groups, KH, KW], with Xp the zero-padded input (padded taps count):

    Y[n,co,oh,ow]  = -sum_{ci,kh,kw} |Xp[n, c, oh*sh + kh*dh - ph, ow*sw + kw*dw - pw] - W[co,ci,kh,kw]|  (+ bias[co])
    dX[n,c,h,w]    = sum over taps landing on (h, w) of dY[n,co,oh,ow] * HT(W[co,ci,kh,kw] - X[n,c,h,w])
    dW[co,ci,kh,kw] = sum_{n,oh,ow} dY[n,co,oh,ow] * (Xp[...] - W[co,ci,kh,kw])
    dbias[co]      = sum_{n,oh,ow} dY[n,co,oh,ow]

HT(z) = clamp(z, -1, 1) (AdderNet's rule, ``input_grad="hardtanh"``) or sign(z) (the true
derivative, ``input_grad="exact"``). The weight gradient is AdderNet's full-precision one in both
modes, so it is not the derivative of the forward. Gradients here are raw: the adaptive learning
rate belongs to training (see :class:`addernet_cuda.AdderConv2d`).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ._extension import _C  # noqa: F401  (loading it registers torch.ops.addernet.*)

IntPair = Union[int, Sequence[int]]
INPUT_GRAD_MODES = ("hardtanh", "exact")


def _pair(value: IntPair, name: str) -> Tuple[int, int]:
    if isinstance(value, bool):
        raise TypeError(f"adder2d: {name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int) or (isinstance(value, torch.SymInt)):
        return (value, value)
    try:
        pair = tuple(value)
    except TypeError:
        raise TypeError(
            f"adder2d: {name} must be an int or a pair of ints, got {value!r}"
        ) from None
    if len(pair) == 1:
        pair = pair * 2
    if len(pair) != 2 or not all(
        isinstance(v, (int, torch.SymInt)) and not isinstance(v, bool) for v in pair
    ):
        raise TypeError(f"adder2d: {name} must be an int or a pair of ints, got {value!r}")
    return pair


def out_size(size, kernel, stride, padding, dilation):
    """Output length of one spatial dimension: floor((size + 2p - d(k-1) - 1) / s) + 1."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _geometry(stride: IntPair, padding: IntPair, dilation: IntPair, groups: int):
    """stride, padding and dilation as pairs, after the type checks (TypeError) of all four."""
    if isinstance(groups, bool) or not isinstance(groups, (int, torch.SymInt)):
        raise TypeError(f"adder2d: groups must be an int, got {groups!r}")
    return _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")


def _describe(x, dtype: bool = False) -> str:
    """What an error message says was passed: a tensor's rank (or dtype) and shape, or the type
    of anything else."""
    if not isinstance(x, Tensor):
        return type(x).__name__
    if dtype:
        return f"{x.dtype} of shape {tuple(x.shape)}"
    return f"{x.dim()}-D with shape {tuple(x.shape)}"


def _autocast_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a tensor has after adder2d's autocast policy: float16, bfloat16 and float32 run
    in float32; float64 and non-floating tensors are left alone, as autocast leaves them."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _check_tensors(op, input, weight, bias, grad_output, autocast=False) -> None:
    """The ranks, dtypes and devices of check_args's tensors; with ``autocast`` the dtypes are
    compared as the autocast policy will have cast them."""
    if not isinstance(input, Tensor) or input.dim() != 4:
        got = _describe(input)
        raise ValueError(f"{op}: input must be 4-D [N, C, H, W], got {got}")
    if not isinstance(weight, Tensor) or weight.dim() != 4:
        got = _describe(weight)
        raise ValueError(
            f"{op}: weight must be 4-D [out_channels, in_channels/groups, kH, kW], got {got}"
        )
    if input.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{op}: input must be a floating-point tensor (float32, float64, float16 or "
            f"bfloat16), got {input.dtype}"
        )
    cast = _autocast_dtype if autocast else (lambda dtype: dtype)
    for name, t in (("weight", weight), ("bias", bias), ("grad_output", grad_output)):
        if t is None:
            continue
        if cast(t.dtype) != cast(input.dtype):
            raise TypeError(
                f"{op}: {name} dtype {t.dtype} does not match input dtype {input.dtype}"
            )
        if t.device != input.device:
            raise ValueError(f"{op}: {name} is on {t.device} but input is on {input.device}")


INT64_MAX = 2**63 - 1


def _check_int64(cond, message) -> None:
    """ValueError(message()) unless ``cond``; with symbolic sizes (torch.compile) a runtime
    assertion, so compiled code refuses what the C++ check refuses, overflow included. (A plain
    bool is checked here: torch 2.11's dynamo cannot pass the message closure to _check_value.)"""
    if isinstance(cond, bool):
        if not cond:
            raise ValueError(message())
        return
    torch._check_value(cond, message)


def _check_geometry(op, size, kernel, padding, dilation) -> None:
    """The padded input and the dilated kernel fit in int64, and the kernel fits the input
    (the C++ check computes the same with overflow-checked arithmetic)."""
    padded = [size[i] + 2 * padding[i] for i in range(2)]
    span = [dilation[i] * (kernel[i] - 1) + 1 for i in range(2)]
    for i in range(2):
        _check_int64(
            padded[i] <= INT64_MAX,
            lambda: (
                f"{op}: padding {list(padding)} is too large: the padded input size overflows int64"
            ),
        )
        _check_int64(
            span[i] <= INT64_MAX,
            lambda: (
                f"{op}: dilation {list(dilation)} is too large: the dilated kernel size "
                "overflows int64"
            ),
        )
        _check_int64(
            span[i] <= padded[i],
            lambda: (
                f"{op}: kernel ({kernel[0]}x{kernel[1]}, dilated to {span[0]}x{span[1]}) "
                f"is larger than the padded input ({padded[0]}x{padded[1]})"
            ),
        )


def check_args(
    op, input, weight, bias, stride, padding, dilation, groups, grad_output=None, autocast=False
):
    """Validates adder2d arguments and returns the output shape (N, Co, OH, OW).

    The public check: ValueError/TypeError naming the argument, raised by :func:`adder2d`, the
    gradient wrappers and the fake kernels. The C++ check (``check_adder2d_args``) applies the
    same rules with the same messages as a RuntimeError, for raw ``torch.ops.addernet`` calls;
    ``tests/adder2d_cases.py`` holds one row per check and asserts the text through both.
    ``autocast``: compare dtypes as adder2d's autocast policy casts them (float16, bfloat16 and
    float32 all become float32)."""
    _check_tensors(op, input, weight, bias, grad_output, autocast)
    for name, value, low in (
        ("stride", stride, 1),
        ("padding", padding, 0),
        ("dilation", dilation, 1),
    ):
        if len(value) != 2:
            raise ValueError(f"{op}: {name} must have 2 elements (height, width), got {len(value)}")
        if value[0] < low or value[1] < low:
            raise ValueError(f"{op}: {name} must be >= {low}, got {list(value)}")
        if value[0] > INT64_MAX or value[1] > INT64_MAX:
            raise ValueError(f"{op}: {name} must be <= 2**63 - 1, got {list(value)}")
    if groups < 1:
        raise ValueError(f"{op}: groups must be >= 1, got {groups}")
    if groups > INT64_MAX:
        raise ValueError(f"{op}: groups must be <= 2**63 - 1, got {groups}")
    n, c, h, w = input.shape
    co, cig, kh, kw = weight.shape
    if c < 1:
        raise ValueError(
            f"{op}: input must have at least one channel, got shape {tuple(input.shape)}"
        )
    if c % groups != 0:
        raise ValueError(f"{op}: groups ({groups}) must divide the input channels ({c})")
    if co % groups != 0:
        raise ValueError(
            f"{op}: groups ({groups}) must divide the output channels, weight.size(0) = {co}"
        )
    if cig * groups != c:
        raise ValueError(
            f"{op}: weight.size(1) must be in_channels / groups = {c} / {groups} = {c // groups}, "
            f"got weight of shape {tuple(weight.shape)}"
        )
    if kh < 1 or kw < 1:
        raise ValueError(f"{op}: weight kernel size must be >= 1, got {tuple(weight.shape)}")
    _check_geometry(op, (h, w), (kh, kw), padding, dilation)
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != co):
        raise ValueError(f"{op}: bias must have shape [{co}], got {tuple(bias.shape)}")
    shape = (
        n,
        co,
        out_size(h, kh, stride[0], padding[0], dilation[0]),
        out_size(w, kw, stride[1], padding[1], dilation[1]),
    )
    _check_int64(
        shape[0] * shape[1] * shape[2] * shape[3] <= INT64_MAX,
        lambda: (
            f"{op}: the output {list(shape)} has too many elements for int64 "
            f"(padding {list(padding)}, stride {list(stride)})"
        ),
    )
    if grad_output is not None and tuple(grad_output.shape) != shape:
        raise ValueError(
            f"{op}: grad_output must have the output's shape {list(shape)}, got {tuple(grad_output.shape)}"
        )
    return shape


def check_input_grad_mode(mode: str, what: str = "adder2d: input_grad") -> None:
    """Refuses an input-gradient rule other than "hardtanh" or "exact" (the one check, used by
    the ops, the reference and AdderConv2d; the C++ kernels' parse_input_grad_mode says the same
    with a RuntimeError). `what` names the argument as the message starts."""
    if mode not in INPUT_GRAD_MODES:
        got = f'"{mode}"' if isinstance(mode, str) else repr(mode)
        raise ValueError(f'{what} must be "hardtanh" or "exact", got {got}')


@torch.library.register_fake("addernet::adder2d")
def _adder2d_fake(input, weight, bias, stride, padding, dilation, groups, input_grad="hardtanh"):
    check_input_grad_mode(input_grad)
    shape = check_args("adder2d", input, weight, bias, stride, padding, dilation, groups)
    return input.new_empty(shape)


@torch.library.register_fake("addernet::adder2d_input_grad")
def _adder2d_input_grad_fake(grad_output, input, weight, stride, padding, dilation, groups, mode):
    check_input_grad_mode(mode, "adder2d_input_grad: mode")
    check_args(
        "adder2d_input_grad", input, weight, None, stride, padding, dilation, groups, grad_output
    )
    return input.new_empty(input.shape)


@torch.library.register_fake("addernet::adder2d_weight_grad")
def _adder2d_weight_grad_fake(grad_output, input, weight, stride, padding, dilation, groups):
    check_args(
        "adder2d_weight_grad", input, weight, None, stride, padding, dilation, groups, grad_output
    )
    return weight.new_empty(weight.shape)


def _setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups, *rest = inputs
    ctx.save_for_backward(input, weight)
    ctx.has_bias = bias is not None
    ctx.args = (stride, padding, dilation, groups)
    ctx.mode = rest[0] if rest else "hardtanh"


def _call(op, *args):
    return op(*args)


def _below_autograd(op, *args):
    """``op(*args)`` dispatched past its autograd kernel, for calls that record no graph: the
    Python layer that ``torch.library.register_autograd`` puts in front of the kernel (a
    redispatch on every call, 10-15 us) is skipped."""
    with torch._C._AutoDispatchBelowAutograd():  # as torch's generated autograd redispatches
        return op(*args)


def _records_graph(*tensors) -> bool:
    """Whether adder2d on these tensors must go through autograd: grad mode with a tensor that
    requires grad, or a forward-mode AD level open (its dual tensors need not require grad, and
    adder2d must refuse them rather than drop their tangents)."""
    if torch.autograd.forward_ad._current_level >= 0:
        return True
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _double_backward_error(name):
    return RuntimeError(
        f"{name} has no derivative: double backward through adder2d is not supported "
        "(AdderNet's gradient rules are not derivatives of the forward)"
    )


class _GradientOpFunction(torch.autograd.Function):
    """A gradient op called under torch.func transforms, where the op's own generated autograd
    cannot run (it has no setup_context method): the op past autograd, refusing double backward
    as the op's autograd does."""

    generate_vmap_rule = True

    @staticmethod
    def forward(op, *args):
        return _below_autograd(op, *args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.name = inputs[0].name()

    @staticmethod
    def backward(ctx, grad):
        raise _double_backward_error(ctx.name)


def _through_function(op, *args):
    return _GradientOpFunction.apply(op, *args)


def _under_func_transform() -> bool:
    """A torch.func transform that needs an autograd.Function with setup_context (grad, jvp,
    vmap) is innermost; functionalize is not one of them: it runs the op as before."""
    if not torch._C._are_functorch_transforms_active():
        return False
    top = torch._C._functorch.peek_interpreter_stack()
    return top is None or top.key() != torch._C._functorch.TransformType.Functionalize


def _backward(ctx, grad):
    input, weight = ctx.saved_tensors
    grad_input = grad_weight = grad_bias = None
    # Under create_graph (grad mode on) the gradient ops record their nodes, which refuse double
    # backward; otherwise nothing is recorded and they run past their autograd kernels, except
    # while compiled autograd traces this backward (dynamo cannot trace the dispatch guard) and
    # under torch.func transforms (torch.func.grad), which need an autograd.Function.
    if torch.compiler.is_compiling():
        run = _call
    elif _under_func_transform():
        run = _through_function
    elif torch.is_grad_enabled():
        run = _call
    else:
        run = _below_autograd
    if ctx.needs_input_grad[0]:
        op = torch.ops.addernet.adder2d_input_grad.default
        grad_input = run(op, grad, input, weight, *ctx.args, ctx.mode)
    if ctx.needs_input_grad[1]:
        grad_weight = run(
            torch.ops.addernet.adder2d_weight_grad.default, grad, input, weight, *ctx.args
        )
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_bias = grad.sum((0, 2, 3))
    return grad_input, grad_weight, grad_bias, None, None, None, None, None


def _no_double_backward(op):
    def backward(ctx, grad):
        raise _double_backward_error(f"addernet::{op}")

    return backward


torch.library.register_autograd("addernet::adder2d", _backward, setup_context=_setup_context)


def _forward_mode_error():
    return RuntimeError(
        "adder2d: forward-mode AD (torch.autograd.forward_ad, torch.func.jvp) is not supported; "
        "use reverse mode (backward)"
    )


class _Adder2dFunction(torch.autograd.Function):
    """The op's registered autograd (the same setup_context and backward) as an autograd.Function,
    for eager calls of :func:`adder2d`. torch's generated autograd for a registered op fills in
    the schema's defaults (``torch._library.utils.fill_defaults``) before setup_context on every
    call with gradients: 21.6 us per call measured on a CI machine, where adder2d's C++ forward
    of a 4x4 image takes about 10 us; adder2d with gradients took 76 us a call that way, 36 us
    this way. Its forward runs the op past the op's autograd kernel (which would only
    redispatch), and calls that record no graph skip the Function as well (:func:`adder2d`)."""

    @staticmethod
    def forward(ctx, *inputs):
        output = _below_autograd(torch.ops.addernet.adder2d.default, *inputs)
        _setup_context(ctx, inputs, output)
        return output

    backward = staticmethod(_backward)

    @staticmethod
    def jvp(ctx, *tangents):
        raise _forward_mode_error()


class _Adder2dFuncTransformFunction(torch.autograd.Function):
    """adder2d under torch.func transforms, which need an autograd.Function with a setup_context
    method: the op's generated autograd returned a zero tangent under torch.func.jvp and refused
    torch.func.grad. Separate from _Adder2dFunction: in this form its eager calls took 15-40%
    longer (a 4x4 forward+backward, four alternating runs on a loaded machine)."""

    generate_vmap_rule = True  # torch.vmap runs forward batched: the op, per sample

    @staticmethod
    def forward(*inputs):
        return _below_autograd(torch.ops.addernet.adder2d.default, *inputs)

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_backward)

    @staticmethod
    def jvp(ctx, *tangents):
        raise _forward_mode_error()


for _op in ("adder2d_input_grad", "adder2d_weight_grad"):
    torch.library.register_autograd(
        f"addernet::{_op}", _no_double_backward(_op), setup_context=lambda ctx, inputs, output: None
    )


# Autocast policy, the only one: under autocast adder2d runs in float32; float16 and bfloat16
# inputs are cast up, float64 ones stay float64 (autocast never casts float64). |x - w| summed
# over thousands of taps loses too much in float16/bfloat16 to be a silent default; call it on
# half tensors outside autocast to choose half precision explicitly.
for _device in ("cpu", "cuda"):
    torch.library.register_autocast("addernet::adder2d", _device, torch.float32)


# torch.vmap rules: the vmapped dimension folds into the batch where every sample shares the
# weight, and into the groups where the weights differ per sample (sample s is groups s*g to
# s*g + g - 1 of one call); torch's fallback ran the op once per sample. The weight gradient is
# always per sample, so it always takes the groups.
def _batched(t, dim, size, at):
    """t with its vmapped dimension `dim` moved to `at`, or expanded there if t has none."""
    if dim is not None:
        return t.movedim(dim, at)
    return t.unsqueeze(at).expand(*t.shape[:at], size, *t.shape[at:])


def _check_vmap_size(op, size):
    if size == 0:
        raise ValueError(f"{op}: torch.vmap over a dimension of size 0 is not supported")


def _samples_as_groups(x, x_dim, w, w_dim, size):
    """x [N, B*C, H, W] and w [B*Co, C/g, KH, KW]: the B samples side by side as groups."""
    return _batched(x, x_dim, size, 1).flatten(1, 2), _batched(w, w_dim, size, 0).flatten(0, 1)


@torch.library.register_vmap("addernet::adder2d")
def _adder2d_vmap(
    info, in_dims, input, weight, bias, stride, padding, dilation, groups, input_grad="hardtanh"
):
    x_dim, w_dim, b_dim = in_dims[:3]
    size = info.batch_size
    _check_vmap_size("adder2d", size)
    if w_dim is None and b_dim is None:
        x = input.movedim(x_dim, 0).flatten(0, 1)
        out = torch.ops.addernet.adder2d(
            x, weight, bias, stride, padding, dilation, groups, input_grad
        )
        return out.unflatten(0, (size, -1)), 0
    x, w = _samples_as_groups(input, x_dim, weight, w_dim, size)
    b = None if bias is None else _batched(bias, b_dim, size, 0).flatten()
    out = torch.ops.addernet.adder2d(x, w, b, stride, padding, dilation, groups * size, input_grad)
    return out.unflatten(1, (size, -1)), 1


@torch.library.register_vmap("addernet::adder2d_input_grad")
def _adder2d_input_grad_vmap(
    info, in_dims, grad_output, input, weight, stride, padding, dilation, groups, mode
):
    dy_dim, x_dim, w_dim = in_dims[:3]
    size = info.batch_size
    _check_vmap_size("adder2d_input_grad", size)
    op = torch.ops.addernet.adder2d_input_grad
    if w_dim is None:
        dy = _batched(grad_output, dy_dim, size, 0).flatten(0, 1)
        x = _batched(input, x_dim, size, 0).flatten(0, 1)
        out = op(dy, x, weight, stride, padding, dilation, groups, mode)
        return out.unflatten(0, (size, -1)), 0
    x, w = _samples_as_groups(input, x_dim, weight, w_dim, size)
    dy = _batched(grad_output, dy_dim, size, 1).flatten(1, 2)
    out = op(dy, x, w, stride, padding, dilation, groups * size, mode)
    return out.unflatten(1, (size, -1)), 1


@torch.library.register_vmap("addernet::adder2d_weight_grad")
def _adder2d_weight_grad_vmap(
    info, in_dims, grad_output, input, weight, stride, padding, dilation, groups
):
    dy_dim, x_dim, w_dim = in_dims[:3]
    size = info.batch_size
    _check_vmap_size("adder2d_weight_grad", size)
    x, w = _samples_as_groups(input, x_dim, weight, w_dim, size)
    dy = _batched(grad_output, dy_dim, size, 1).flatten(1, 2)
    out = torch.ops.addernet.adder2d_weight_grad(dy, x, w, stride, padding, dilation, groups * size)
    return out.unflatten(0, (size, -1)), 0


def _string_padding(padding: str, input: Tensor, weight, stride, dilation):
    """(input, numeric padding) for F.conv2d's ``padding="valid"`` or ``"same"``; an asymmetric
    "same" (an even dilated kernel) pads the input explicitly, with zeros, the extra on the
    bottom/right as F.conv2d does."""
    if padding == "valid":
        return input, (0, 0)
    if padding != "same":
        raise ValueError(
            f"adder2d: padding must be 'same', 'valid', an int or a pair, got {padding!r}"
        )
    if stride != (1, 1):
        raise ValueError(
            f"adder2d: padding='same' is not supported for strided convolutions, got stride {list(stride)}"
        )
    if not isinstance(weight, Tensor) or weight.dim() != 4:
        return input, (0, 0)  # check_args names the weight
    totals = [dilation[i] * (weight.shape[2 + i] - 1) for i in range(2)]
    left = [t // 2 for t in totals]
    if totals[0] % 2 == 0 and totals[1] % 2 == 0:
        return input, (left[0], left[1])
    explicit = [left[1], totals[1] - left[1], left[0], totals[0] - left[0]]
    return torch.nn.functional.pad(input, explicit), (0, 0)


def adder2d(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: IntPair = 1,
    padding: Union[IntPair, str] = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    input_grad: str = "hardtanh",
) -> Tensor:
    """Adder convolution: ``Y = -sum |Xp - W| (+ bias)`` over each output's receptive field.

    Arguments follow :func:`torch.nn.functional.conv2d`: ``input`` is ``[N, C, H, W]`` or
    unbatched ``[C, H, W]`` (then so is the result), ``padding`` an int, a pair, ``"valid"`` or
    ``"same"`` (stride 1 only); zero padding, and padded taps contribute ``-|W|``. ``input_grad`` selects the rule for the input
    gradient: ``"hardtanh"`` (AdderNet: ``dY * clamp(W - X, -1, 1)``) or ``"exact"``
    (``dY * sign(W - X)``). The weight gradient is always AdderNet's full-precision
    ``dY * (X - W)``; the bias gradient is ``sum(dY)``. Gradients are raw (no adaptive scaling).

    Runs the C++ kernels on CPU tensors and the CUDA kernels on CUDA tensors. Returns a
    contiguous ``[N, Co, OH, OW]`` tensor of the input's dtype. Double backward is not supported.
    """
    text_padding = padding if isinstance(padding, str) else None
    numeric = 0 if text_padding is not None else padding
    stride, padding, dilation = _geometry(stride, numeric, dilation, groups)
    check_input_grad_mode(input_grad)
    unbatched = isinstance(input, Tensor) and input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    if text_padding is not None:
        input, padding = _string_padding(text_padding, input, weight, stride, dilation)
    autocast = (
        isinstance(input, Tensor)
        and input.device.type in ("cpu", "cuda")
        and torch.is_autocast_enabled(input.device.type)
    )
    geometry = (stride, padding, dilation, groups)
    args = (input, weight, bias, *geometry, input_grad)
    if autocast or torch.compiler.is_compiling() or _under_func_transform():
        check_args("adder2d", input, weight, bias, *geometry, autocast=autocast)
    else:
        # The common calls run the op first: its C++ checks are the Python ones, and only when it
        # raises do the Python checks run, to raise the documented ValueError/TypeError (they
        # cost about a third of a small call's host time).
        try:
            if _records_graph(input, weight, bias):
                out = _Adder2dFunction.apply(*args)
            else:  # inference, or no tensor requiring grad: nothing to record
                out = _below_autograd(torch.ops.addernet.adder2d.default, *args)
        except (RuntimeError, TypeError, ValueError, IndexError, OverflowError):
            try:
                check_args("adder2d", input, weight, bias, *geometry)
            except (ValueError, TypeError) as public:
                raise public from None
            raise
        return out.squeeze(0) if unbatched else out
    if autocast and _under_func_transform():
        # torch.func.grad cannot run the op's generated autograd: the autocast policy's casts
        # here (recorded by autograd like the op's own), then the Function outside autocast.
        cast = [t if t is None else t.to(_autocast_dtype(t.dtype)) for t in (input, weight, bias)]
        with torch.autocast(input.device.type, enabled=False):
            out = _Adder2dFuncTransformFunction.apply(*cast, *args[3:])
    elif autocast or torch.compiler.is_compiling():
        # Autocast casts the inputs at the op, above its autograd, which then saves the cast
        # tensors; compiled code has no per-call Python cost to save. The op's generated autograd
        # drops forward-mode tangents (torch.func.jvp, forward_ad) silently: refused here.
        if torch.autograd.forward_ad._current_level >= 0:
            raise _forward_mode_error()
        out = torch.ops.addernet.adder2d(*args)
    else:
        out = _Adder2dFuncTransformFunction.apply(*args)
    return out.squeeze(0) if unbatched else out


def adder2d_input_grad(
    grad_output, input, weight, stride=1, padding=0, dilation=1, groups=1, mode="hardtanh"
):
    """The input-gradient op: ``dX = sum dY * HT(W - X)`` (``mode="hardtanh"``) or with sign
    (``mode="exact"``), summed over every output whose tap reads the input element. Bad
    arguments raise ValueError/TypeError, as for :func:`adder2d`."""
    stride, padding, dilation = _geometry(stride, padding, dilation, groups)
    check_input_grad_mode(mode, "adder2d_input_grad: mode")
    check_args(
        "adder2d_input_grad", input, weight, None, stride, padding, dilation, groups, grad_output
    )
    return torch.ops.addernet.adder2d_input_grad(
        grad_output, input, weight, stride, padding, dilation, groups, mode
    )


def adder2d_weight_grad(grad_output, input, weight, stride=1, padding=0, dilation=1, groups=1):
    """The weight-gradient op: ``dW = sum_{n,oh,ow} dY * (Xp - W)`` (full precision, padded taps
    included with Xp = 0). Bad arguments raise ValueError/TypeError, as for :func:`adder2d`."""
    stride, padding, dilation = _geometry(stride, padding, dilation, groups)
    check_args(
        "adder2d_weight_grad", input, weight, None, stride, padding, dilation, groups, grad_output
    )
    return torch.ops.addernet.adder2d_weight_grad(
        grad_output, input, weight, stride, padding, dilation, groups
    )


# ---------------------------------------------------------------------------------------------
# adder2d_int8: the 8-bit adder forward (inference only). With codes q(v) = clamp(round(v / s),
# -127, 127) on one scale s for input and weight:
#
#     S[n,co,p] = sum_{ci,kh,kw} |q(Xp[n,c,ih,iw]) - Wq[co,ci,kh,kw]|     exact (int32)
#     Y[n,co,p] = alpha[co] * S + beta[co]        (then max(Y, 0) if relu)
#
# alpha = -s, beta = bias give Y = bias - s * S; a following BatchNorm folds into alpha, beta.


def check_int8_args(input, weight, scale, alpha, beta, stride, padding, dilation, groups):
    """Validates adder2d_int8 arguments (the C++ rules and messages) and returns the output
    shape (N, Co, OH, OW)."""
    op = "adder2d_int8"
    if not isinstance(input, Tensor) or input.dim() != 4 or input.dtype != torch.float32:
        got = _describe(input, dtype=True)
        raise ValueError(f"{op}: input must be a 4-D float32 tensor [N, C, H, W], got {got}")
    if not isinstance(weight, Tensor) or weight.dim() != 4 or weight.dtype != torch.int8:
        got = _describe(weight, dtype=True)
        raise ValueError(
            f"{op}: weight must be 4-D int8 codes [out_channels, in_channels/groups, kH, kW], "
            f"got {got}"
        )
    if scale.dtype != torch.float32 or scale.numel() != 1:
        raise ValueError(
            f"{op}: scale must be a float32 tensor with one element, got {scale.dtype} of "
            f"shape {tuple(scale.shape)}"
        )
    co = weight.shape[0]
    for name, t in (("alpha", alpha), ("beta", beta)):
        if t.dtype != torch.float32 or t.dim() != 1 or t.shape[0] != co:
            raise ValueError(
                f"{op}: {name} must be float32 of shape [{co}], got {t.dtype} of shape "
                f"{tuple(t.shape)}"
            )
    for name, t in (("weight", weight), ("alpha", alpha), ("beta", beta)):
        if t.device != input.device:
            raise ValueError(f"{op}: {name} is on {t.device} but input is on {input.device}")
    # The geometry rules are adder2d's: check them on a float view of the weight's shape.
    return check_args(
        op, input, input.new_empty(weight.shape), None, stride, padding, dilation, groups
    )


def int8_output_format(input: Tensor) -> torch.memory_format:
    """The memory format of adder2d_int8's output: channels-last for an input that is
    channels-last and not contiguous NCHW (which the op reads in place), else contiguous."""
    if input.is_contiguous(memory_format=torch.channels_last) and not input.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


@torch.library.register_fake("addernet::adder2d_int8")
def _adder2d_int8_fake(
    input, weight, scale, alpha, beta, stride, padding, dilation, groups, relu=False
):
    shape = check_int8_args(input, weight, scale, alpha, beta, stride, padding, dilation, groups)
    return torch.empty(
        shape, dtype=input.dtype, device=input.device, memory_format=int8_output_format(input)
    )


def _int8_no_backward(ctx, grad):
    raise RuntimeError(
        "addernet::adder2d_int8 is inference only and has no gradient: train the float model "
        "(AdderConv2d) and quantize it afterwards"
    )


torch.library.register_autograd(
    "addernet::adder2d_int8",
    _int8_no_backward,
    setup_context=lambda ctx, inputs, output: None,
)


def adder2d_int8(
    input: Tensor,
    weight: Tensor,
    scale: Tensor,
    alpha: Tensor,
    beta: Tensor,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    relu: bool = False,
) -> Tensor:
    """8-bit adder convolution: ``Y = alpha * sum |q(Xp) - weight| + beta`` (``relu``: then
    ``max(Y, 0)``), ``q(v) = clamp(round(v / scale), -127, 127)``.

    ``input`` is float32 ``[N, C, H, W]`` (quantized inside the op), ``weight`` the int8 codes
    ``[Co, C/groups, KH, KW]`` on the same ``scale`` (a one-element float32 tensor, > 0),
    ``alpha`` and ``beta`` float32 ``[Co]`` (``alpha = -scale``, ``beta = bias`` give the adder
    layer ``bias - scale * sum``; a following BatchNorm folds into them). The sums are exact
    (int32); stride, padding (zero, padded taps count) and dilation as in :func:`adder2d`.
    Returns float32 ``[N, Co, OH, OW]``: channels-last for a dense channels-last input
    (``input.is_contiguous(memory_format=torch.channels_last)`` and not ``is_contiguous()``; read
    in place on the CPU, where it saves the transposition into the kernel's layout), else
    contiguous (unlike ``conv2d``, a strided view that is channels-last only in its stride order
    gives contiguous output). CPU and CUDA (bitwise equal
    results; on CUDA the scale may lie on the CPU or on the input's device, where reading it
    waits for the stream); no gradient.
    """
    stride = _pair(stride, "stride")
    padding = _pair(padding, "padding")
    dilation = _pair(dilation, "dilation")
    check_int8_args(input, weight, scale, alpha, beta, stride, padding, dilation, groups)
    return torch.ops.addernet.adder2d_int8(
        input, weight, scale, alpha, beta, stride, padding, dilation, groups, bool(relu)
    )
