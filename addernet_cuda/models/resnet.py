"""ResNets with adder layers: ResNet-20/32 for CIFAR and ResNet-18/50 for ImageNet.

The structure of the official AdderNet code (``resnet20.py``, ``resnet50.py``):

- the first convolution is multiplicative (``nn.Conv2d``), followed by BatchNorm and ReLU
  (ImageNet: 7x7 stride 2 and a 3x3 stride-2 max pool);
- every convolution inside the residual stages is an adder layer followed by BatchNorm:
  CIFAR basic blocks ``adder3x3 -> BN -> ReLU -> adder3x3 -> BN (+ shortcut) -> ReLU``, ImageNet
  basic blocks (ResNet-18) likewise and bottlenecks (ResNet-50) ``1x1 -> 3x3 (stride) -> 1x1``;
- where the shape changes, the shortcut is an adder 1x1 (stride 2) followed by BatchNorm;
- global average pooling gives the features (64 for CIFAR, 512 / 2048 for ImageNet), and the
  ``linear`` head is the official 1x1 conv classifier followed by BatchNorm.

``cnn=True`` gives the CNN twin: the same network with ``nn.Conv2d`` in place of every adder layer.
Initialisation: BatchNorm weight 1 and bias 0, adder weights N(0, 1) (``AdderConv2d``), the first
convolution PyTorch's default (CIFAR, as the official ResNet-20) or Kaiming-normal fan-out
(ImageNet, as the official ResNet-50, which applies it to every ``nn.Conv2d``: the 1x1 classifier
of the ``linear`` head and the twin's convolutions included).
"""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn

from .base import Classifier

__all__ = ["CifarResNet", "ImageNetResNet", "resnet20", "resnet32", "resnet18", "resnet50"]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int, downsample: Optional[nn.Module], layer
    ):
        super().__init__()
        self.conv1 = layer(inplanes, planes, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = layer(planes, planes, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4
    stride_in_1x1 = False  # set on a subclass for the original (Caffe) layout

    def __init__(
        self, inplanes: int, planes: int, stride: int, downsample: Optional[nn.Module], layer
    ):
        super().__init__()
        s1, s3 = (stride, 1) if self.stride_in_1x1 else (1, stride)
        self.conv1 = layer(inplanes, planes, 1, s1, 0)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = layer(planes, planes, 3, s3, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = layer(planes, planes * 4, 1, 1, 0)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def _make_stage(block, layer, inplanes: int, planes: int, blocks: int, stride: int):
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            layer(inplanes, planes * block.expansion, 1, stride, 0),
            nn.BatchNorm2d(planes * block.expansion),
        )
    layers: List[nn.Module] = [block(inplanes, planes, stride, downsample, layer)]
    for _ in range(1, blocks):
        layers.append(block(planes * block.expansion, planes, 1, None, layer))
    return nn.Sequential(*layers), planes * block.expansion


class CifarResNet(Classifier):
    """ResNet-(6n+2) for 32x32 inputs: 16-32-64 channels, ``n`` basic blocks per stage.

    Args:
        depth: 20 (n = 3) or 32 (n = 5), or any 6n + 2.
        num_classes: 10 or 100.
        options: as :class:`~addernet_cuda.models.base.Classifier` (natural feature size 64).
    """

    input_size = (3, 32, 32)

    def __init__(self, depth: int = 20, num_classes: int = 10, **options):
        super().__init__(num_classes, **options)
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        self.depth = depth
        layer = self.conv
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1, c = _make_stage(BasicBlock, layer, 16, 16, n, 1)
        self.layer2, c = _make_stage(BasicBlock, layer, c, 32, n, 2)
        self.layer3, c = _make_stage(BasicBlock, layer, c, 64, n, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self._finish(natural_dim=c)

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.avgpool(self.layer3(self.layer2(self.layer1(x))))


class _BottleneckStrideIn1x1(Bottleneck):
    stride_in_1x1 = True


class ImageNetResNet(Classifier):
    """ResNet-18 (basic blocks [2, 2, 2, 2]) or ResNet-50 (bottlenecks [3, 4, 6, 3]) for 224x224
    inputs; arguments as :class:`CifarResNet` (natural feature size 512 or 2048).

    ``stride_in_1x1``: put a bottleneck's stride on its first 1x1 layer (the original Caffe
    ResNet, 3.86 G multiply-accumulates for ResNet-50) rather than on the 3x3 (the official
    AdderNet code and torchvision, 4.09 G). Default False."""

    input_size = (3, 224, 224)

    def __init__(
        self, depth: int = 18, num_classes: int = 1000, stride_in_1x1: bool = False, **options
    ):
        super().__init__(num_classes, **options)
        configs = {
            18: (BasicBlock, [2, 2, 2, 2]),
            34: (BasicBlock, [3, 4, 6, 3]),
            50: (Bottleneck, [3, 4, 6, 3]),
            101: (Bottleneck, [3, 4, 23, 3]),
            152: (Bottleneck, [3, 8, 36, 3]),
        }
        if depth not in configs:
            raise ValueError(f"ImageNet ResNet depth must be one of {sorted(configs)}, got {depth}")
        block, blocks = configs[depth]
        if stride_in_1x1 and block is Bottleneck:
            block = _BottleneckStrideIn1x1
        self.depth = depth
        layer = self.conv
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c = 64
        stages = []
        for i, (planes, stride) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2))):
            stage, c = _make_stage(block, layer, c, planes, blocks[i], stride)
            stages.append(stage)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self._finish(natural_dim=c)
        for m in self.modules():
            if type(m) is nn.Conv2d:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x)


def resnet20(num_classes: int = 10, **kwargs) -> CifarResNet:
    return CifarResNet(20, num_classes, **kwargs)


def resnet32(num_classes: int = 10, **kwargs) -> CifarResNet:
    return CifarResNet(32, num_classes, **kwargs)


def resnet18(num_classes: int = 1000, **kwargs) -> ImageNetResNet:
    return ImageNetResNet(18, num_classes, **kwargs)


def resnet50(num_classes: int = 1000, **kwargs) -> ImageNetResNet:
    return ImageNetResNet(50, num_classes, **kwargs)
