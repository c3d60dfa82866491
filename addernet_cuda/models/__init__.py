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

from typing import Optional

from .base import Classifier, conv_layer
from .counting import OpCount, count_ops, head_ops
from .heads import HEADS, HeadLoss, LinearHead, head_logits, head_param_groups, make_head
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


def build_model(
    name: str,
    num_classes: int,
    *,
    head: str = "linear",
    feat_dim: Optional[int] = None,
    cnn: bool = False,
    eta: Optional[float] = 0.2,
    input_grad: str = "hardtanh",
    head_kwargs: Optional[dict] = None,
) -> Classifier:
    """The model ``name`` (one of :data:`MODELS`); see the classes for the arguments."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name](
        num_classes,
        head=head,
        feat_dim=feat_dim,
        cnn=cnn,
        eta=eta,
        input_grad=input_grad,
        head_kwargs=head_kwargs,
    )


__all__ = [
    "MODELS",
    "HEADS",
    "build_model",
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
