"""Small CNNs for 28x28 grayscale images (Fashion-MNIST).

``fmnist_cnn``: two conv-conv-pool stages (32 and 64 channels, BatchNorm) and a 128-unit MLP
head, about 0.47M parameters and 37 MFLOP per 28x28 image; the first shipped classifiers use it.

``fmnist_cnn_lite``: the same family sized for DiffSmooth's cost, where every noise sample
runs the classifier m times (m = 5 local copies): one conv at 28x28 (16 channels), two at
14x14 (32), one at 7x7 (64), then the 128-unit head; about 0.43M parameters and 8.2 MFLOP per
image (counted with ``torch.utils.flop_counter``), a 4.5x cut. Full-resolution convolutions
are what costs; after N(0, sigma^2) noise with sigma >= 0.12 the finest detail is gone anyway.
"""

from __future__ import annotations

import torch
from torch import nn

from diffsmooth.classifiers.registry import register_classifier
from diffsmooth.validate import InputError


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """Normalized images (B, in_channels, S, S), S divisible by 4 -> logits (B, num_classes)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
                 width: int = 32, hidden: int = 128, dropout: float = 0.3):
        super().__init__()
        if image_size % 4 != 0:
            raise InputError(f"fmnist_cnn needs an image size divisible by 4, got {image_size}")
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, width), *_conv_bn_relu(width, width), nn.MaxPool2d(2),
            *_conv_bn_relu(width, 2 * width), *_conv_bn_relu(2 * width, 2 * width), nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.hidden = nn.Linear(2 * width * side * side, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.features(x), 1)
        return self.fc(self.dropout(torch.relu(self.hidden(x))))


@register_classifier("fmnist_cnn", dataset="fashion-mnist")
def fmnist_cnn(num_classes: int, in_channels: int, image_size: int, **kwargs) -> SmallCNN:
    return SmallCNN(num_classes, in_channels, image_size, **kwargs)


class LiteCNN(nn.Module):
    """``fmnist_cnn_lite``: normalized images (B, in_channels, S, S), S divisible by 4 -> logits (B, num_classes).

    conv(16) @ S, pool, conv(32) conv(32) @ S/2, pool, conv(64) @ S/4, then a ``hidden``-unit
    MLP head (3x3 convs with BatchNorm and ReLU; widths scale with ``width``, default 16).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
                 width: int = 16, hidden: int = 128, dropout: float = 0.3):
        super().__init__()
        if image_size % 4 != 0:
            raise InputError(f"fmnist_cnn_lite needs an image size divisible by 4, got {image_size}")
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, width), nn.MaxPool2d(2),
            *_conv_bn_relu(width, 2 * width), *_conv_bn_relu(2 * width, 2 * width), nn.MaxPool2d(2),
            *_conv_bn_relu(2 * width, 4 * width),
        )
        side = image_size // 4
        self.hidden = nn.Linear(4 * width * side * side, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.features(x), 1)
        return self.fc(self.dropout(torch.relu(self.hidden(x))))


@register_classifier("fmnist_cnn_lite", dataset="fashion-mnist")
def fmnist_cnn_lite(num_classes: int, in_channels: int, image_size: int, **kwargs) -> LiteCNN:
    return LiteCNN(num_classes, in_channels, image_size, **kwargs)
