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
from .adaptive_lr import adaptive_lr_eta, set_adaptive_lr

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

    # eta lives on the module and is mirrored as a tag on the weight, which the optimizer hook
    # reads. The tag is renewed whenever the weight Parameter is replaced (assignment,
    # load_state_dict(assign=True)) or the module is copied or unpickled.
    @property
    def eta(self) -> Optional[float]:
        return self._eta

    @eta.setter
    def eta(self, value: Optional[float]) -> None:
        set_adaptive_lr(self.weight, value)
        self._eta = adaptive_lr_eta(self.weight)

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name == "weight" and isinstance(value, nn.Parameter) and "_eta" in self.__dict__:
            set_adaptive_lr(value, self._eta)

    def __setstate__(self, state):
        super().__setstate__(state)
        set_adaptive_lr(self.weight, self.__dict__.get("_eta"))

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
    """
    exclude = set(exclude)
    leaves = [(n, m) for n, m in model.named_modules() if len(list(m.children())) == 0]
    convs = [n for n, m in leaves if type(m) is nn.Conv2d]
    keep = set(exclude)
    if keep_first and convs:
        keep.add(convs[0])
    if keep_classifier and convs:
        last = convs[-1]
        index = [n for n, _ in leaves].index(last)
        if not any(isinstance(m, nn.Linear) for _, m in leaves[index + 1 :]):
            keep.add(last)
    missing = exclude - {n for n, _ in leaves}
    if missing:
        raise ValueError(
            f"adderize: exclude names modules that are not in the model: {sorted(missing)}"
        )
    unnormalised = []
    for i, (name, module) in enumerate(leaves):
        if type(module) is not nn.Conv2d or name in keep:
            continue
        _set_submodule(
            model,
            name,
            AdderConv2d.from_conv(
                module, eta=eta, input_grad=input_grad, copy_weights=copy_weights
            ),
        )
        following = next(
            (m for _, m in leaves[i + 1 :] if not isinstance(m, (nn.Identity, nn.Dropout))), None
        )
        if not isinstance(following, _NORM_TYPES):
            unnormalised.append(name)
    if unnormalised:
        warnings.warn(
            f"adderize: adder layers not followed by a normalisation layer: {unnormalised}. Adder "
            "outputs are large negative numbers; add BatchNorm after them.",
            stacklevel=2,
        )
    return model
