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

from typing import Optional

import torch
import torch.nn as nn

from .base import Classifier, conv_layer

__all__ = ["VGGSmall", "vgg_small"]


class VGGSmall(Classifier):
    """Arguments as :class:`~addernet_cuda.models.resnet.CifarResNet`; natural feature size 8192."""

    input_size = (3, 32, 32)

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
        widths = [128, 128, 256, 256, 512, 512]
        pools = [False, True, False, True, False, True]
        self.conv0 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        for i in range(1, 6):
            setattr(
                self,
                f"conv{i}",
                conv_layer(cnn, widths[i - 1], widths[i], 3, 1, 1, eta=eta, input_grad=input_grad),
            )
        for i in range(6):
            setattr(self, f"bn{i}", nn.BatchNorm2d(widths[i]))
        self.pools = pools
        self.pool = nn.MaxPool2d(2, 2)
        self.relu = nn.ReLU(inplace=True)
        self._finish(
            num_classes=num_classes,
            natural_dim=512 * 4 * 4,
            feat_dim=feat_dim,
            head=head,
            cnn=cnn,
            head_kwargs=head_kwargs,
        )

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(6):
            x = getattr(self, f"conv{i}")(x)
            if self.pools[i]:
                x = self.pool(x)
            x = self.relu(getattr(self, f"bn{i}")(x))
        return x


def vgg_small(num_classes: int = 10, **kwargs) -> VGGSmall:
    return VGGSmall(num_classes, **kwargs)
