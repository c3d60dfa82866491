"""addernet_cuda: adder neural networks for PyTorch.

Adder convolutions measure similarity with the negative L1 distance, ``-sum |x - w|``, instead
of a dot product. This package provides the op as compiled C++ (CPU) and CUDA kernels registered
with the dispatcher (``torch.ops.addernet.adder2d``, ``adder2d_input_grad``,
``adder2d_weight_grad``), the functional :func:`adder2d`, the module :class:`AdderConv2d` with
AdderNet's adaptive learning rate, :func:`adderize` to convert existing models, and an unfused
reference (:mod:`addernet_cuda.reference`). For inference, :func:`quantize` turns a trained model's
adder layers into 8-bit ones (:class:`QuantizedAdderConv2d`, the op :func:`adder2d_int8`: byte
SAD on int8 codes). For classification it provides the skew Laplace mixture
head and the SLAC loss (:class:`SkewLaplaceMixture`, :class:`SLACLoss`) and the baseline losses
:class:`LGMLoss`, :class:`MoMLoss`, :class:`LSoftmaxLoss` and :class:`SoftmaxLoss`.
"""

from . import nn, reference
from ._extension import build_info
from .nn import *  # noqa: F403  (the modules and losses, listed once in nn.__all__)
from .ops import adder2d, adder2d_int8
from .version import __version__

__all__ = ["adder2d", "adder2d_int8", "build_info", "reference", "__version__", *nn.__all__]
