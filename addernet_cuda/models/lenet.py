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

import torch
import torch.nn as nn

from .base import Classifier

__all__ = ["LeNet5", "lenet5"]


class LeNet5(Classifier):
    """Options as :class:`~addernet_cuda.models.base.Classifier`; natural feature size 84 (a
    ``feat_dim`` sets f6's outputs: no projection)."""

    input_size = (1, 28, 28)

    def __init__(self, num_classes: int = 10, **options):
        super().__init__(num_classes, **options)
        d = 84 if self._requested_feat_dim is None else int(self._requested_feat_dim)
        self.c1 = nn.Conv2d(1, 6, 5, 1, 2, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.c3 = self.conv(6, 16, 5)
        self.bn3 = nn.BatchNorm2d(16)
        self.c5 = self.conv(16, 120, 5)
        self.bn5 = nn.BatchNorm2d(120)
        self.f6 = self.conv(120, d, 1)
        self.bn6 = nn.BatchNorm2d(d)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2, 2)
        self._finish(natural_dim=d)

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.bn1(self.c1(x))))
        x = self.pool(self.relu(self.bn3(self.c3(x))))
        x = self.relu(self.bn5(self.c5(x)))
        return self.bn6(self.f6(x))


def lenet5(num_classes: int = 10, **kwargs) -> LeNet5:
    return LeNet5(num_classes, **kwargs)
