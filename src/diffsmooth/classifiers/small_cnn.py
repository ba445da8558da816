"""``fmnist_cnn``: the small embedded default for 28x28 grayscale images.

Two conv-conv-pool stages (32 and 64 channels, BatchNorm) and a 128-unit MLP head,
about 0.47M parameters at 28x28; it trains to ~92% clean Fashion-MNIST accuracy in
a few CPU epochs and is small enough for Gaussian-noise-augmented training on CPU.
"""

from __future__ import annotations

import torch
from torch import nn

from diffsmooth.classifiers.registry import register_classifier
from diffsmooth.errors import InputError


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
