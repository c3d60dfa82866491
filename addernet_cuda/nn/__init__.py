"""Modules: AdderConv2d (and adderize), AdderNet's adaptive learning rate."""
from .adaptive_lr import rescale_adder_grads, set_adaptive_lr
from .adder_conv import AdderConv2d, adderize

__all__ = ["AdderConv2d", "adderize", "rescale_adder_grads", "set_adaptive_lr"]
