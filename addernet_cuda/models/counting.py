r"""Multiplications and additions of one forward pass of one image, as in the SLAC/AdderNet
papers' tables (#Mul., #Add.).

Convention (the papers' CNN rows have #Mul. = #Add., and their ANN rows have #Add. = 2 x the CNN
count minus the multiplicative layers' count):

- ``nn.Conv2d`` / ``nn.Linear``: one multiplication and one addition per multiply-accumulate,
  ``MACs = output elements x (in_channels / groups) x kH x kW`` (bias ignored);
- ``AdderConv2d``: two additions per tap (the subtraction ``x - w`` and the accumulation; the
  absolute value is a sign-bit operation), no multiplication;
- heads: the linear head is a 1x1 convolution (counted as above); a distribution head is counted
  per image from its formula with everything that depends on the parameters only precomputed:
  skew Laplace (``Q_k`` and the skew term over ``(x - mu_k)``): ``3Kd + K`` mul, ``3Kd + 2K`` add;
  Gaussian mixtures with ``C`` components per class: ``2KCd + KC`` mul, ``2KCd + KC + K(C-1)``
  add; L-Softmax at inference: ``Kd`` of each;
- BatchNorm (an affine map per element at inference), ReLU, pooling and the residual additions are
  not in the papers' counts. BatchNorm is reported separately (``bn_mul``, ``bn_add``: one of each
  per element); the others are not counted.

The pass runs under ``FakeTensorMode``: shapes only, no arithmetic, so ResNet-50 costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensorMode

from ..nn import AdderConv2d

__all__ = ["OpCount", "count_ops", "head_ops"]


@dataclass
class OpCount:
    """Totals (``mul``, ``add``), per-layer rows, and BatchNorm's elementwise work (not in the totals)."""

    mul: int = 0
    add: int = 0
    bn_mul: int = 0
    bn_add: int = 0
    layers: List[dict] = field(default_factory=list)

    def _row(self, name: str, kind: str, mul: int, add: int) -> None:
        self.layers.append({"name": name, "type": kind, "mul": int(mul), "add": int(add)})
        self.mul += int(mul)
        self.add += int(add)

    def __str__(self) -> str:
        return (
            f"{self.mul / 1e6:.2f}M mul, {self.add / 1e6:.2f}M add "
            f"(BatchNorm, not included: {self.bn_mul / 1e6:.2f}M mul, {self.bn_add / 1e6:.2f}M add)"
        )


def head_ops(head: nn.Module) -> Tuple[int, int]:
    """``(mul, add)`` per image of a head (``head.op_count()``, see the module docstring); (0, 0)
    for a module without it (the linear head's convolution is counted as a layer)."""
    op_count = getattr(head, "op_count", None)
    return op_count() if op_count is not None else (0, 0)


def count_ops(model: nn.Module, input_size: Optional[Tuple[int, ...]] = None) -> OpCount:
    """Counts one forward pass of one image of shape ``input_size`` (default
    ``model.input_size``) through ``model`` (``model(x)``: body and head). The model's mode
    and parameters are left as they were."""
    if input_size is None:
        input_size = getattr(model, "input_size", None)
        if input_size is None:
            raise ValueError("count_ops: pass input_size (the model has no input_size attribute)")
    result = OpCount()
    names = {m: n for n, m in model.named_modules()}
    handles = []

    def conv_hook(module, inputs, output):
        fan_in = (
            (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
        )
        taps = output.numel() * fan_in
        if isinstance(module, AdderConv2d):
            result._row(names[module], "adder", 0, 2 * taps)
        else:
            result._row(names[module], "conv", taps, taps)

    def linear_hook(module, inputs, output):
        macs = output.numel() * module.in_features
        result._row(names[module], "linear", macs, macs)

    def bn_hook(module, inputs, output):
        result.bn_mul += output.numel()
        result.bn_add += output.numel()

    for module in model.modules():
        if isinstance(module, (nn.Conv2d, AdderConv2d)):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            handles.append(module.register_forward_hook(bn_hook))
    was_training = model.training
    model.eval()
    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            param = next(model.parameters(), None)
            opts = {"dtype": param.dtype, "device": param.device} if param is not None else {}
            model(torch.empty((1, *input_size), **opts))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    head = getattr(model, "head", None)
    if head is not None:
        mul, add = head_ops(head)
        if mul or add:
            result._row(names.get(head, "head"), "head", mul, add)
    return result
