"""Modules: AdderConv2d (and adderize), AdderNet's adaptive learning rate, the skew Laplace
mixture head with the SLAC loss, the baseline losses it is compared with, and 8-bit adder
inference (QuantizedAdderConv2d, quantize)."""

from .adaptive_lr import rescale_adder_grads, set_adaptive_lr
from .adder_conv import AdderConv2d, adderize
from .losses import LGMLoss, LSoftmaxLoss, MoMLoss, SoftmaxLoss
from .quantized import QuantizedAdderConv2d, quantize
from .slac import SkewLaplaceMixture, SLACLoss

__all__ = [
    "AdderConv2d",
    "adderize",
    "QuantizedAdderConv2d",
    "quantize",
    "rescale_adder_grads",
    "set_adaptive_lr",
    "SkewLaplaceMixture",
    "SLACLoss",
    "LGMLoss",
    "MoMLoss",
    "LSoftmaxLoss",
    "SoftmaxLoss",
]
