"""AdderConv2d, a drop-in replacement for nn.Conv2d computing ``Y = -sum |X - W| (+ b)``, and
``adderize``, which swaps the convolutions of an existing model for it.

The module has nn.Conv2d's constructor, defaults, attributes and state_dict layout (``weight``
[out, in/groups, kH, kW] and ``bias`` [out]); it is not a subclass of nn.Conv2d, so code that
assumes a multiplicative convolution (Conv-BN folding, quantisation) does not take it for one.
"""

from __future__ import annotations

import warnings
from typing import Iterable, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.utils import _pair

from ..ops import adder2d, check_input_grad_mode
from .adaptive_lr import check_eta, register_adaptive_module

_NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
)


class AdderConv2d(_ConvNd):
    r"""2-D adder convolution: ``out[n, co] = bias[co] - sum_{ci,kh,kw} |x_pad - weight[co]|``.

    Arguments are those of :class:`torch.nn.Conv2d` (``padding`` may be an int, a pair,
    ``"same"`` or ``"valid"``; ``padding_mode`` one of ``"zeros"``, ``"reflect"``,
    ``"replicate"``, ``"circular"``), plus:

    Args:
        eta: AdderNet's adaptive learning rate. Before every ``optimizer.step()`` the weight
            gradient is rescaled to ``eta * sqrt(weight.numel()) * g / ||g||`` (see
            :mod:`addernet_cuda.nn.adaptive_lr`); this holds under gradient accumulation,
            DistributedDataParallel and ``GradScaler``, but not FSDP. ``None`` turns it off.
            Default 0.2, the official value.
        input_grad: ``"hardtanh"`` (AdderNet's ``dY * clamp(W - X, -1, 1)``, default) or
            ``"exact"`` (``dY * sign(W - X)``) for the gradient passed to earlier layers.

    With zero padding, padded taps count: each adds ``-|W|`` to the output, as in the official
    AdderNet code. Initialisation: weight ~ N(0, 1) as in the official code (adder outputs are
    large negative numbers, so follow an adder layer with a normalisation); bias = 0.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding: Union[str, int, tuple] = 0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        eta: Optional[float] = 0.2,
        input_grad: str = "hardtanh",
        device=None,
        dtype=None,
    ):
        check_input_grad_mode(input_grad, "AdderConv2d: input_grad")
        factory_kwargs = {"device": device, "dtype": dtype}
        kernel_size_ = _pair(kernel_size)
        stride_ = _pair(stride)
        padding_ = padding if isinstance(padding, str) else _pair(padding)
        dilation_ = _pair(dilation)
        super().__init__(
            in_channels,
            out_channels,
            kernel_size_,
            stride_,
            padding_,
            dilation_,
            False,
            _pair(0),
            groups,
            bias,
            padding_mode,
            **factory_kwargs,
        )
        self.input_grad = input_grad
        self.eta = eta

    # eta lives on the module only: the optimizer hook resolves it from the module's current
    # weight at step time, so no Parameter rebuild (to_empty, meta, swapped conversion,
    # load_state_dict(assign=True), copy, unpickling) can lose it.
    @property
    def eta(self) -> Optional[float]:
        return self._eta

    @eta.setter
    def eta(self, value: Optional[float]) -> None:
        self._eta = check_eta(value)
        register_adaptive_module(self)

    def __setstate__(self, state):
        super().__setstate__(state)
        register_adaptive_module(self)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, 0.0, 1.0)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _numeric_padding(self):
        """(padding for the op, explicit F.pad amounts or None)."""
        if self.padding_mode == "zeros":
            if not isinstance(self.padding, str):
                return self.padding, None
            left_right = self._reversed_padding_repeated_twice  # [left_w, right_w, top_h, bottom_h]
            if left_right[0] == left_right[1] and left_right[2] == left_right[3]:
                return (left_right[2], left_right[0]), None
        return (0, 0), list(self._reversed_padding_repeated_twice)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        padding, explicit = self._numeric_padding()
        if explicit is not None:
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            input = F.pad(input, explicit, mode=mode)
        return adder2d(
            input,
            self.weight,
            self.bias,
            self.stride,
            padding,
            self.dilation,
            self.groups,
            self.input_grad,
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", eta={self.eta}, input_grad={self.input_grad!r}"

    @classmethod
    def from_conv(
        cls,
        conv: nn.Conv2d,
        eta: Optional[float] = 0.2,
        input_grad: str = "hardtanh",
        copy_weights: bool = False,
    ) -> "AdderConv2d":
        """An AdderConv2d with ``conv``'s configuration (channels, kernel, stride, padding,
        dilation, groups, bias, padding mode, device, dtype). Weights are freshly initialised
        unless ``copy_weights`` (a multiplicative filter is rarely a good adder filter)."""
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            eta=eta,
            input_grad=input_grad,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        if copy_weights:
            with torch.no_grad():
                layer.weight.copy_(conv.weight)
                if conv.bias is not None:
                    layer.bias.copy_(conv.bias)
        layer.train(conv.training)
        return layer


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _kept_convs(leaves, exclude, keep_first, keep_classifier):
    """The ids of the nn.Conv2d modules ``adderize`` leaves multiplicative."""
    convs = [(n, m) for n, m in leaves if type(m) is nn.Conv2d]
    keep = {id(m) for n, m in leaves if n in exclude}
    if keep_first and convs:
        keep.add(id(convs[0][1]))
    if keep_classifier and convs:
        last = convs[-1][1]
        index = max(i for i, (_, m) in enumerate(leaves) if m is last)
        if not any(isinstance(m, nn.Linear) for _, m in leaves[index + 1 :]):
            keep.add(id(last))
    return keep


def _followed_by_norm(leaves, i: int) -> bool:
    skip = (nn.Identity, nn.Dropout)
    following = next((m for _, m in leaves[i + 1 :] if not isinstance(m, skip)), None)
    return isinstance(following, _NORM_TYPES)


def adderize(
    model: nn.Module,
    keep_first: bool = True,
    keep_classifier: bool = True,
    exclude: Iterable[str] = (),
    eta: Optional[float] = 0.2,
    input_grad: str = "hardtanh",
    copy_weights: bool = False,
) -> nn.Module:
    """Replaces ``nn.Conv2d`` layers of ``model`` (in place) by :class:`AdderConv2d` with the
    same configuration, bias setting included, and returns the model.

    As in the AdderNet papers, the first convolution (``keep_first``) and a convolutional
    classifier (``keep_classifier``: the last Conv2d, when no nn.Linear follows it) stay
    multiplicative; ``exclude`` names more modules to keep. Layers are visited in registration
    order, which is also how "first", "last" and "followed by" are judged: a warning names every
    adder layer whose next module is not a normalisation layer (adder outputs are large and
    negative, and train poorly without one).

    A convolution shared under several names becomes one AdderConv2d shared under all of them
    (naming one in ``exclude`` keeps it). ``nn.Conv2d`` subclasses may compute something else,
    so they are not converted: a warning names them unless ``exclude`` does.
    """
    check_eta(eta)
    exclude = set(exclude)
    leaves = [
        (n, m) for n, m in model.named_modules(remove_duplicate=False) if not any(m.children())
    ]
    missing = exclude - {n for n, _ in leaves}
    if missing:
        raise ValueError(
            f"adderize: exclude names modules that are not in the model: {sorted(missing)}"
        )
    keep = _kept_convs(leaves, exclude, keep_first, keep_classifier)
    adders, unnormalised = {}, []
    for i, (name, module) in enumerate(leaves):
        if type(module) is not nn.Conv2d or id(module) in keep:
            continue
        if id(module) not in adders:
            adders[id(module)] = AdderConv2d.from_conv(
                module, eta=eta, input_grad=input_grad, copy_weights=copy_weights
            )
        _set_submodule(model, name, adders[id(module)])
        if not _followed_by_norm(leaves, i):
            unnormalised.append(name)
    _warn(
        unnormalised,
        "adder layers not followed by a normalisation layer: {}. Adder outputs are large "
        "negative numbers; add BatchNorm after them.",
    )
    _warn(
        [
            n
            for n, m in leaves
            if isinstance(m, nn.Conv2d) and type(m) is not nn.Conv2d and id(m) not in keep
        ],
        "nn.Conv2d subclasses left unconverted (their forward may differ from a plain "
        "convolution; name them in exclude to silence this): {}",
    )
    return model


def _warn(names, message: str) -> None:
    if names:
        warnings.warn("adderize: " + message.format(names), stacklevel=3)
