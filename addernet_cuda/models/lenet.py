"""LeNet-5 with adder layers, for 28x28 MNIST (the network of the SLAC paper's Figure 3):

    c1  conv 1->6, 5x5, padding 2 (multiplicative) -> BN -> ReLU -> maxpool   28 -> 28 -> 14
    c3  adder 6->16, 5x5                            -> BN -> ReLU -> maxpool   14 -> 10 -> 5
    c5  adder 16->120, 5x5                          -> BN -> ReLU              5 -> 1
    f6  adder 120->d, 1x1                           -> BN                      the features [B, d]
    head (linear: 1x1 conv d->K + BN; or slac, lgm, mom, lsoftmax)

LeCun et al.'s layers with BatchNorm after each (AdderNet's "LeNet-5-BN"); adder outputs are large
negative numbers and need it. As in the AdderNet papers the first layer stays multiplicative.
``d`` (``feat_dim``) defaults to LeNet-5's 84; ``feat_dim=2`` gives the 2-d features of the
Figure-3-style plots (no projection: f6 itself has ``d`` outputs). The features are the
BatchNorm output with no ReLU, so they can take any sign, as the distribution heads need.
``cnn=True`` makes c3, c5 and f6 ``nn.Conv2d``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from .base import Classifier, conv_layer

__all__ = ["LeNet5", "lenet5"]


class LeNet5(Classifier):
    """Arguments as :class:`~addernet_cuda.models.resnet.CifarResNet`; natural feature size 84."""

    input_size = (1, 28, 28)

    def __init__(
        self,
        num_classes: int = 10,
        head: str = "linear",
        feat_dim: Optional[int] = None,
        cnn: bool = False,
        eta: Optional[float] = 0.2,
        input_grad: str = "hardtanh",
        head_kwargs: Optional[dict] = None,
    ):
        super().__init__()
        d = 84 if feat_dim is None else int(feat_dim)
        opts = {"eta": eta, "input_grad": input_grad}
        self.c1 = nn.Conv2d(1, 6, 5, 1, 2, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.c3 = conv_layer(cnn, 6, 16, 5, **opts)
        self.bn3 = nn.BatchNorm2d(16)
        self.c5 = conv_layer(cnn, 16, 120, 5, **opts)
        self.bn5 = nn.BatchNorm2d(120)
        self.f6 = conv_layer(cnn, 120, d, 1, **opts)
        self.bn6 = nn.BatchNorm2d(d)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2, 2)
        self._finish(
            num_classes=num_classes,
            natural_dim=d,
            feat_dim=d,
            head=head,
            cnn=cnn,
            head_kwargs=head_kwargs,
        )

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.bn1(self.c1(x))))
        x = self.pool(self.relu(self.bn3(self.c3(x))))
        x = self.relu(self.bn5(self.c5(x)))
        return self.bn6(self.f6(x))


def lenet5(num_classes: int = 10, **kwargs) -> LeNet5:
    return LeNet5(num_classes, **kwargs)
