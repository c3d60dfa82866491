"""Models for AdderNet experiments, each with a choice of classifier head and a CNN twin.

==============  ===============  ==============  ===========================================
name            input            natural d       paper
==============  ===============  ==============  ===========================================
``lenet5``      1 x 28 x 28      84              SLAC Fig. 3 (MNIST)
``resnet20``    3 x 32 x 32      64              SLAC Tables 1, 3, 4 (CIFAR)
``resnet32``    3 x 32 x 32      64              SLAC Table 1
``vgg_small``   3 x 32 x 32      8192            SLAC Table 1
``resnet18``    3 x 224 x 224    512             SLAC Table 2 (ImageNet)
``resnet50``    3 x 224 x 224    2048            SLAC Table 2
==============  ===============  ==============  ===========================================

``build_model(name, num_classes, head=..., feat_dim=..., cnn=...)``; ``count_ops(model)`` counts
multiplications and additions per image (the papers' #Mul./#Add.). Heads and their losses:
:mod:`addernet_cuda.models.heads`.
"""

from .base import Classifier, conv_layer
from .counting import OpCount, count_ops, head_ops
from .heads import (
    HEAD_REGISTRY,
    HEADS,
    HeadLoss,
    LinearHead,
    head_kind,
    head_logits,
    head_param_groups,
    make_head,
)
from .lenet import LeNet5, lenet5
from .resnet import CifarResNet, ImageNetResNet, resnet18, resnet20, resnet32, resnet50
from .vgg import VGGSmall, vgg_small

MODELS = {
    "lenet5": lenet5,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "vgg_small": vgg_small,
    "resnet18": resnet18,
    "resnet50": resnet50,
}


_INPUT_SIZES = {
    "lenet5": LeNet5.input_size,
    "resnet20": CifarResNet.input_size,
    "resnet32": CifarResNet.input_size,
    "vgg_small": VGGSmall.input_size,
    "resnet18": ImageNetResNet.input_size,
    "resnet50": ImageNetResNet.input_size,
}


def model_input_size(name: str):
    """The image size ``(C, H, W)`` the model ``name`` is built for, without building it."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    return _INPUT_SIZES[name]


def build_model(name: str, num_classes: int, **options) -> Classifier:
    """The model ``name`` (one of :data:`MODELS`); ``options`` (``head``, ``feat_dim``, ``cnn``,
    ``eta``, ``input_grad``, ``head_kwargs``, and ``stride_in_1x1`` for the ImageNet ResNets) as
    :class:`~addernet_cuda.models.base.Classifier` documents them."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name](num_classes, **options)


__all__ = [
    "MODELS",
    "HEADS",
    "HEAD_REGISTRY",
    "head_kind",
    "build_model",
    "model_input_size",
    "Classifier",
    "conv_layer",
    "count_ops",
    "head_ops",
    "OpCount",
    "HeadLoss",
    "LinearHead",
    "head_logits",
    "head_param_groups",
    "make_head",
    "LeNet5",
    "lenet5",
    "CifarResNet",
    "ImageNetResNet",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet50",
    "VGGSmall",
    "vgg_small",
]
