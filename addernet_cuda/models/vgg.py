"""VGG-small for CIFAR with adder layers (the model of the SLAC paper's Table 1, from the
binary-network literature: Cai et al., "half-wave Gaussian quantization", and LQ-Nets):

    conv0 3->128 (multiplicative) -> BN -> ReLU
    conv1 128->128 -> maxpool -> BN -> ReLU                 (32x32 -> 16x16)
    conv2 128->256 -> BN -> ReLU
    conv3 256->256 -> maxpool -> BN -> ReLU                 (-> 8x8)
    conv4 256->512 -> BN -> ReLU
    conv5 512->512 -> maxpool -> BN -> ReLU                 (-> 4x4)
    flatten: 512 * 4 * 4 = 8192 features -> head

conv1..conv5 are 3x3 adder layers (padding 1); ``cnn=True`` makes them ``nn.Conv2d``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .base import Classifier

__all__ = ["VGGSmall", "vgg_small"]


class VGGSmall(Classifier):
    """Options as :class:`~addernet_cuda.models.base.Classifier`; natural feature size 8192."""

    input_size = (3, 32, 32)

    def __init__(self, num_classes: int = 10, **options):
        super().__init__(num_classes, **options)
        widths = [128, 128, 256, 256, 512, 512]
        pools = [False, True, False, True, False, True]
        self.conv0 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        for i in range(1, 6):
            setattr(self, f"conv{i}", self.conv(widths[i - 1], widths[i], 3, 1, 1))
        for i in range(6):
            setattr(self, f"bn{i}", nn.BatchNorm2d(widths[i]))
        self.pools = pools
        self.pool = nn.MaxPool2d(2, 2)
        self.relu = nn.ReLU(inplace=True)
        self._finish(natural_dim=512 * 4 * 4)

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(6):
            x = getattr(self, f"conv{i}")(x)
            if self.pools[i]:
                x = self.pool(x)
            x = self.relu(getattr(self, f"bn{i}")(x))
        return x


def vgg_small(num_classes: int = 10, **kwargs) -> VGGSmall:
    return VGGSmall(num_classes, **kwargs)
