"""torchvision ImageNet architectures (random init; weights come from checkpoints)."""

from __future__ import annotations

from torch import nn

from diffsmooth.classifiers.registry import register_classifier
from diffsmooth.validate import InputError


@register_classifier("resnet50", dataset="imagenet")
def resnet50(num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    from torchvision.models import resnet50 as tv_resnet50

    if in_channels != 3:
        raise InputError(f"resnet50 takes 3-channel images, not {in_channels}; use an RGB dataset")
    return tv_resnet50(weights=None, num_classes=num_classes, **kwargs)
