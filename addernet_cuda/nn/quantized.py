"""8-bit adder inference: :class:`QuantizedAdderConv2d` and :func:`quantize`.

A quantized layer holds the int8 codes of its weight on one scale ``s`` (per layer, or per group
of output channels with ``scale_groups``) and computes, with ``q(v) = clamp(round(v / s), -127,
127)`` and Xp the zero-padded input:

    S[n,co,p] = sum_{ci,kh,kw} |q(Xp[n,c,ih,iw]) - q(W[co,ci,kh,kw])|      exact (int32)
    Y[n,co,p] = alpha[co] * S + beta[co]          (then max(Y, 0) if relu)

Without a following BatchNorm ``alpha = -s`` and ``beta = bias`` (``Y = bias - s * S``); an
eval-mode BatchNorm that alone reads the layer's output folds in: with ``a = gamma / sqrt(var +
eps)``, ``alpha = -a * s`` and ``beta = a * (bias - mean) + beta_bn``. The scale is chosen on
calibration data: the clip level ``c = 127 s`` that minimises the relative L2 error of the layer's
(folded) output on the calibration inputs. Layers hand float32 to each other; the first
multiplicative convolution, the classifier, residual additions and pooling stay float32.
"""

from __future__ import annotations

import copy
import inspect
import operator
from typing import Dict, Iterable, List, Optional, Tuple, Union

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..reference import quantize_codes
from .adder_conv import AdderConv2d, _set_submodule

__all__ = ["QuantizedAdderConv2d", "quantize", "recalibrate_batchnorm"]


class QuantizedAdderConv2d(nn.Module):
    """Inference-only 8-bit adder layer: ``Y = alpha * sum |q(Xp) - Wq| + beta`` (ReLU optional).

    Buffers (saved in ``state_dict``): ``weight`` int8 codes ``[Co, C/groups, KH, KW]``,
    ``scale`` float32 ``[scale_groups]`` (one scale per group of ``Co / scale_groups``
    consecutive output channels; input and weight share it), ``alpha`` and ``beta`` float32
    ``[Co]``. Built by :func:`quantize`; input float (computed in float32), output float32.
    Raises in training mode.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Union[int, Tuple[int, int]],
        stride: Union[int, Tuple[int, int]] = 1,
        padding: Union[int, Tuple[int, int]] = 0,
        dilation: Union[int, Tuple[int, int]] = 1,
        groups: int = 1,
        relu: bool = False,
        scale_groups: int = 1,
        explicit_padding: Optional[List[int]] = None,
        padding_mode: str = "zeros",
    ):
        super().__init__()
        kh, kw = nn.modules.utils._pair(kernel_size)
        if scale_groups < 1 or out_channels % scale_groups != 0:
            raise ValueError(
                f"QuantizedAdderConv2d: scale_groups must divide out_channels ({out_channels}), "
                f"got {scale_groups}"
            )
        if scale_groups > 1 and groups > 1:
            raise ValueError("QuantizedAdderConv2d: scale_groups > 1 needs groups == 1")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = (kh, kw)
        self.stride = nn.modules.utils._pair(stride)
        self.padding = nn.modules.utils._pair(padding)
        self.dilation = nn.modules.utils._pair(dilation)
        self.relu, self.scale_groups = bool(relu), int(scale_groups)
        self.explicit_padding, self.padding_mode = explicit_padding, padding_mode
        cig = in_channels // groups
        self.register_buffer("weight", torch.zeros(out_channels, cig, kh, kw, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(scale_groups))
        self.register_buffer("alpha", -torch.ones(out_channels))
        self.register_buffer("beta", torch.zeros(out_channels))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise RuntimeError(
                "QuantizedAdderConv2d is inference only: call model.eval() (train the float "
                "model and quantize it again to change it)"
            )
        x = input.float()
        if self.explicit_padding is not None:
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, self.explicit_padding, mode=mode)
        args = (self.stride, self.padding, self.dilation, self.groups, self.relu)
        if self.scale_groups == 1:
            if x.is_cpu and x.dim() == 4:
                # The C++ op checks its arguments with the same messages; the Python checks of
                # ops.adder2d_int8 cost about 20 us per call, 3-5% of a ResNet-20 3x3 layer.
                geometry = (list(self.stride), list(self.padding), list(self.dilation))
                return torch.ops.addernet.adder2d_int8(
                    x,
                    self.weight,
                    self.scale,
                    self.alpha,
                    self.beta,
                    *geometry,
                    self.groups,
                    self.relu,
                )
            return ops.adder2d_int8(x, self.weight, self.scale, self.alpha, self.beta, *args)
        per = self.out_channels // self.scale_groups
        outs = [
            ops.adder2d_int8(
                x,
                self.weight[j * per : (j + 1) * per],
                self.scale[j : j + 1],
                self.alpha[j * per : (j + 1) * per],
                self.beta[j * per : (j + 1) * per],
                *args,
            )
            for j in range(self.scale_groups)
        ]
        return torch.cat(outs, 1)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, relu={self.relu}, scale_groups={self.scale_groups}"
        )


class _LeafTracer(torch.fx.Tracer):
    """Keeps AdderConv2d, and the modules in ``opaque`` (ids), as call_module nodes."""

    def __init__(self, opaque=frozenset()):
        super().__init__()
        self.opaque = opaque

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, AdderConv2d) or id(m) in self.opaque:
            return True
        return super().is_leaf_module(m, qualname)


_RELU_FUNCTIONS = (F.relu, torch.relu)


def _is_relu(node: torch.fx.Node, modules: Dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return type(modules.get(node.target)) is nn.ReLU
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS and not node.kwargs.get("inplace", False)
    return node.op == "call_method" and node.target == "relu"


def _folds_in_graph(graph, root: nn.Module, prefix: str) -> Dict[str, Tuple[Optional[str], bool]]:
    """conv name -> (name of the BatchNorm2d to fold or None, whether a ReLU follows)."""
    modules = dict(root.named_modules())
    calls: Dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    folds = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), AdderConv2d):
            continue
        bn, last = None, node
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module":
            m = modules.get(users[0].target)
            if type(m) is nn.BatchNorm2d and m.track_running_stats and calls[users[0].target] == 1:
                bn, last = prefix + users[0].target, users[0]
        users = list(last.users)
        relu = len(users) == 1 and _is_relu(users[0], modules)
        folds[prefix + node.target] = (bn, relu)
    return folds


def _defaults(m: nn.Module) -> Dict[str, object]:
    """forward's arguments with defaults, traced at their default (e.g. return_features=False)."""
    params = inspect.signature(m.forward).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def _find_folds(model: nn.Module) -> Dict[str, Tuple[Optional[str], bool]]:
    """FX-traces every module, children first; a module that cannot be traced (data-dependent
    control flow) is an opaque leaf for its ancestors, and the folds come from the largest
    modules that could be traced. Layers whose dataflow is not seen fold nothing."""
    named = list(model.named_modules())
    opaque, graphs = set(), {}
    for _, m in reversed(named):
        if isinstance(m, AdderConv2d) or not list(m.children()):
            continue
        try:
            graphs[id(m)] = _LeafTracer(frozenset(opaque)).trace(m, _defaults(m))
        except Exception:  # noqa: BLE001  (any tracing failure makes the module opaque)
            opaque.add(id(m))

    def gather(m: nn.Module, prefix: str):
        if id(m) not in graphs:
            folds = {}
            for name, child in m.named_children():
                folds.update(gather(child, prefix + name + "."))
            return folds
        folds = _folds_in_graph(graphs[id(m)], m, prefix)
        for name, sub in m.named_modules():
            if name and id(sub) in opaque:
                folds.update(gather(sub, prefix + name + "."))
        return folds

    return gather(model, "")


def _capture(model: nn.Module, names: List[str], calibration, max_images: int):
    """Runs the float model on the calibration batches; returns each layer's inputs (first
    ``max_images`` images) and the number of images seen."""
    store: Dict[str, List[torch.Tensor]] = {n: [] for n in names}
    counts = dict.fromkeys(names, 0)

    def hook(name):
        def fn(module, args, output):
            if counts[name] < max_images:
                x = args[0].detach()[: max_images - counts[name]]
                store[name].append(x.float().cpu())
                counts[name] += x.shape[0]

        return fn

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    seen = 0
    try:
        with torch.no_grad():
            for batch in calibration:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                x = x.cpu()  # the quantized copy lives on the CPU
                model(x)
                seen += x.shape[0]
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(v) for n, v in store.items() if v}, seen


def _bn_affine(conv: AdderConv2d, bn: Optional[nn.BatchNorm2d]):
    """(a, b) with folded output = a * adder_sum_output + b, where adder_sum_output = -sum|x-w|."""
    co = conv.out_channels
    bias = conv.bias.detach().float() if conv.bias is not None else torch.zeros(co)
    if bn is None:
        return torch.ones(co), bias
    a = bn.weight.detach().float() if bn.affine else torch.ones(co)
    a = a / torch.sqrt(bn.running_var.float() + bn.eps)
    shift = bn.bias.detach().float() if bn.affine else torch.zeros(co)
    return a, a * (bias - bn.running_mean.float()) + shift


def _layer_output(layer, x, w, scale, a, b):
    """Folded int8 output of ``layer``'s geometry for weight slice ``w`` at one scale."""
    s = torch.tensor([scale], dtype=torch.float32)
    wq = quantize_codes(w, s)
    return ops.adder2d_int8(
        x, wq, s, -a * s, b, layer.stride, layer.padding, layer.dilation, layer.groups
    )


def _best_scale(layer, x, w, a, b, target, candidates: int) -> Tuple[float, float]:
    """The scale (clip level / 127) minimising the relative L2 error against ``target``, searched
    over ``candidates`` clip levels from 2% to 100% of max(|w|, |x|) (geometric), then refined."""
    top = max(w.abs().max().item(), x.abs().max().item(), 1e-12)
    norm = target.norm().item() or 1.0

    def err(clip):
        return (_layer_output(layer, x, w, clip / 127.0, a, b) - target).norm().item() / norm

    clips = [top * 0.02 ** (1 - i / (candidates - 1)) for i in range(candidates)]
    errors = [err(c) for c in clips]
    i = min(range(candidates), key=errors.__getitem__)
    lo, hi = clips[max(i - 1, 0)], clips[min(i + 1, candidates - 1)]
    for c in (lo + (hi - lo) * k / 8 for k in range(1, 8)):
        e = err(c)
        if e < errors[i]:
            clips[i], errors[i] = c, e
    return clips[i] / 127.0, errors[i]


def _quantize_layer(conv, bn, relu, x, scale_groups, candidates):
    """The QuantizedAdderConv2d of ``conv`` (+ folded ``bn``) and its per-group relative errors."""
    padding, explicit = conv._numeric_padding()
    if explicit is not None:
        mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        x = F.pad(x, explicit, mode=mode)
    layer = QuantizedAdderConv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        padding,
        conv.dilation,
        conv.groups,
        relu=relu,
        scale_groups=scale_groups,
        explicit_padding=explicit,
        padding_mode=conv.padding_mode,
    )
    w = conv.weight.detach().float().cpu()
    a, b = _bn_affine(conv, bn)
    with torch.no_grad():
        raw = ops.adder2d(x, w, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    per, errors = conv.out_channels // scale_groups, []
    for j in range(scale_groups):
        sl = slice(j * per, (j + 1) * per)
        target = raw[:, sl] * a[sl].view(1, -1, 1, 1) + b[sl].view(1, -1, 1, 1)
        scale, error = _best_scale(layer, x, w[sl], a[sl], b[sl], target, candidates)
        s = torch.tensor([scale], dtype=torch.float32)
        layer.weight[sl] = quantize_codes(w[sl], s)
        layer.scale[j] = s[0]
        layer.alpha[sl] = -a[sl] * s
        layer.beta[sl] = b[sl]
        errors.append(error)
    return layer.eval(), errors


class _ChildrenTracer(torch.fx.Tracer):
    """Keeps every direct child of the traced module as one call_module node."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return "." not in qualname


def _add_into(fresh: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``fresh + other`` written into ``fresh`` (a tensor nothing else reads) when the sum has
    its shape and dtype; float addition is commutative, so either operand order is the same.
    Anything else (a Python number, a broadcast or a dtype promotion) gives ``fresh + other``."""
    if (
        isinstance(other, torch.Tensor)
        and other.shape == fresh.shape
        and other.dtype == fresh.dtype
    ):
        return fresh.add_(other)
    return fresh + other


def _add_relu_into(fresh: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``relu(fresh + other)`` without a new tensor when :func:`_add_into` writes in place."""
    return _add_into(fresh, other).relu_()


# Leaves for symbolic tracing (their shape test would be control flow on a traced value).
torch.fx.wrap("_add_into")
torch.fx.wrap("_add_relu_into")


def _fresh_layer_output(node, modules: Dict[str, nn.Module]) -> bool:
    """Whether ``node`` is a quantized layer's output (a new tensor) that only one node reads."""
    return (
        node.op == "call_module"
        and type(modules.get(node.target)) is QuantizedAdderConv2d
        and len(node.users) == 1
    )


def _simplify_graph(graph: torch.fx.Graph, modules: Dict[str, nn.Module]) -> bool:
    """Rewrites ``graph`` in place, outputs unchanged bit for bit; returns whether it changed.

    - ``nn.Identity`` calls (the folded BatchNorms) go;
    - a ReLU whose input is a quantized layer with a fused ReLU that nothing else reads goes (the
      fused epilogue's output is >= 0, -0 or NaN, which ReLU returns unchanged);
    - ``a + b`` where one operand is a quantized layer's output that nothing else reads is
      written into that output (:func:`_add_into`), with the ReLU that alone reads the sum
      (:func:`_add_relu_into`).
    """
    changed = False
    for node in list(graph.nodes):
        is_identity = node.op == "call_module" and type(modules.get(node.target)) is nn.Identity
        if is_identity and len(node.args) == 1 and not node.kwargs:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            changed = True
    for node in list(graph.nodes):
        if not _is_relu(node, modules) or len(node.args) != 1:
            continue
        src = node.args[0]
        if _fresh_layer_output(src, modules) and modules[src.target].relu:
            node.replace_all_uses_with(src)
            graph.erase_node(node)
            changed = True
    for node in list(graph.nodes):
        is_add = node.op == "call_function" and node.target in (operator.add, torch.add)
        if not is_add or len(node.args) != 2 or node.kwargs:
            continue
        a, b = node.args
        if not isinstance(a, torch.fx.Node) or not isinstance(b, torch.fx.Node) or a is b:
            continue
        if not _fresh_layer_output(a, modules):
            if not _fresh_layer_output(b, modules):
                continue
            a, b = b, a
        users = list(node.users)
        relu = users[0] if len(users) == 1 and _is_relu(users[0], modules) else None
        if relu is not None and len(relu.args) == 1:
            with graph.inserting_before(relu):
                fused = graph.call_function(_add_relu_into, (a, b))
            relu.replace_all_uses_with(fused)
            graph.erase_node(relu)
        else:
            with graph.inserting_before(node):
                fused = graph.call_function(_add_into, (a, b))
            node.replace_all_uses_with(fused)
        graph.erase_node(node)
        changed = True
    return changed


_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _has_hooks(m: nn.Module) -> bool:
    return any(
        getattr(m, hooks, None)
        for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks")
    )


def _simplify(qmodel: nn.Module) -> None:
    """Applies :func:`_simplify_graph` to every submodule of ``qmodel`` (not ``qmodel`` itself,
    whose class and methods stay, nor containers, which stay indexable) that traces with its
    children as leaves; a changed one is replaced by a ``torch.fx.GraphModule`` of the same
    class name and buffers (the state_dict keys are the same). Left as they are: modules whose
    ``forward`` takes arguments with defaults (a trace would fix them at their default) and
    modules that have hooks, or whose children have (a rewrite would drop or feed them
    differently)."""
    for name, m in reversed(list(qmodel.named_modules())):
        if not name or isinstance(m, _CONTAINERS) or not list(m.children()):
            continue
        if _defaults(m) or _has_hooks(m) or any(_has_hooks(c) for c in m.children()):
            continue
        try:
            graph = _ChildrenTracer().trace(m)
        except Exception:  # noqa: BLE001  (a module that cannot be traced is kept as it is)
            continue
        if _simplify_graph(graph, dict(m.named_modules())):
            graph.lint()
            gm = torch.fx.GraphModule(m, graph, class_name=type(m).__name__)
            _set_submodule(qmodel, name, gm.train(m.training))


def quantize(
    model: nn.Module,
    calibration: Iterable,
    *,
    scale_groups: int = 1,
    fold: bool = True,
    simplify: bool = False,
    max_images: int = 128,
    candidates: int = 24,
) -> nn.Module:
    """A copy of ``model`` (in eval mode, on the CPU) with every :class:`AdderConv2d` replaced by
    a :class:`QuantizedAdderConv2d`.

    ``calibration`` is an iterable of input batches (tensors, or tuples whose first element is
    the input); the float model runs on all of them, and each layer's scale is the clip level
    minimising its output error on the first ``max_images`` inputs it saw (``candidates`` clip
    levels, geometric from 2% to 100% of the largest weight or input magnitude, then refined).
    ``scale_groups`` > 1 gives every group of ``Co / scale_groups`` output channels a scale of
    its own (layers whose channel count it does not divide, or with ``groups`` > 1, keep one).
    With ``fold``, an eval-mode ``BatchNorm2d`` that alone reads an adder layer's output folds
    into it (the BatchNorm becomes ``nn.Identity``) and a ReLU after it runs fused as well (the
    ReLU module stays: applying it twice changes nothing). With ``simplify`` (for deployment,
    off by default), every submodule but the model itself whose forward FX-traces (a residual
    block, not a container), takes no argument with a default and has no hooks, and does float
    work the quantized layers make redundant, is rewritten into a ``torch.fx.GraphModule``
    without it, outputs identical bit for bit: the folded BatchNorms' ``nn.Identity`` calls and
    the ReLU after a fused layer go, and a residual addition (with its ReLU) is written into the
    quantized layer's output instead of a new tensor. A rewritten block keeps its class name and
    ``state_dict`` keys but is no longer an instance of its class, keeps only the attributes its
    forward uses, and a forward hook added later to a quantized layer inside it sees the layer's
    output after the residual addition was written into it. The copy is for inference: its
    parameters do not require gradients (the int8 op has none). The copy's
    ``quantization_errors`` maps each layer name to its calibration relative L2 errors (one per
    scale group). Multiplicative layers, pooling and residual additions stay float32. On the
    CPU a channels-last input is the quantized layers' fast path (no transposition in or out;
    their output is then channels-last too, except after the explicit padding of a non-zero
    ``padding_mode``, which is NCHW), so feed the copy
    ``x.contiguous(memory_format=torch.channels_last)`` where speed matters.
    """
    convs = [n for n, m in model.named_modules() if isinstance(m, AdderConv2d)]
    if not convs:
        raise ValueError("quantize: the model has no AdderConv2d layer to quantize")
    unsupported = [
        n for n, m in model.named_modules() if type(m).__name__ == "QuantizedAdderConv2d"
    ]
    if unsupported:
        raise ValueError(f"quantize: the model is already quantized ({unsupported})")
    qmodel = copy.deepcopy(model).cpu().eval().requires_grad_(False)
    folds = _find_folds(qmodel) if fold else {}
    inputs, seen = _capture(qmodel, convs, calibration, max_images)
    if seen == 0:
        raise ValueError("quantize: the calibration set is empty (no input batch)")
    errors = {}
    for name in convs:
        if name not in inputs:
            raise ValueError(f"quantize: the calibration batches never reached layer {name!r}")
        conv = qmodel.get_submodule(name)
        bn_name, relu = folds.get(name, (None, False))
        bn = qmodel.get_submodule(bn_name) if bn_name else None
        groups = scale_groups if conv.groups == 1 and conv.out_channels % scale_groups == 0 else 1
        layer, errors[name] = _quantize_layer(conv, bn, relu, inputs.pop(name), groups, candidates)
        _set_submodule(qmodel, name, layer)
        if bn_name:
            _set_submodule(qmodel, bn_name, nn.Identity())
    if simplify:
        _simplify(qmodel)
    qmodel.quantization_errors = errors
    return qmodel


def recalibrate_batchnorm(model: nn.Module, batches) -> nn.Module:
    """Sets every BatchNorm's running statistics to the exact averages over ``batches`` (an
    iterable of input batches; momentum ``None``) and returns the model in eval mode.

    For a model that has not been trained on the data it will see (a randomly initialised
    network in a test or benchmark), so that the BatchNorm layers :func:`quantize` folds hold
    statistics of that data. The model's momentum settings are replaced.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    return model.eval()
