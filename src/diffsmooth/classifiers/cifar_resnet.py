"""The CIFAR ResNet of Cohen et al. (2019) / SmoothAdv: ``cifar_resnet20``, ``cifar_resnet110``.

He et al.'s CIFAR design: a 3x3 stem with 16 channels, three stages of basic blocks
with 16/32/64 channels (stride 2 at stages 2 and 3, 1x1 conv + BN shortcut when the
shape changes), global average pooling and a linear head. Depth = 6n + 2.
Attribute names (conv1, bn1, layerK.i.conv1/bn1/conv2/bn2/downsample, fc) follow
the released checkpoints so their state dicts load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from diffsmooth.classifiers.registry import register_classifier
from diffsmooth.validate import InputError


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class CifarResNet(nn.Module):
    """Normalized images (B, in_channels, H, W), H = W = 32 for CIFAR -> logits (B, num_classes)."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise InputError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._stage(16, 16, n, stride=1)
        self.layer2 = self._stage(16, 32, n, stride=2)
        self.layer3 = self._stage(32, 64, n, stride=2)
        # Adaptive pooling equals the original AvgPool2d(8) at 32x32 and also accepts other sizes.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_classifier("cifar_resnet20", dataset="cifar10")
def cifar_resnet20(num_classes: int, in_channels: int, image_size: int) -> CifarResNet:
    return CifarResNet(20, num_classes, in_channels)


@register_classifier("cifar_resnet110", dataset="cifar10")
def cifar_resnet110(num_classes: int, in_channels: int, image_size: int) -> CifarResNet:
    return CifarResNet(110, num_classes, in_channels)
