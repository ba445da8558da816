"""timm vision transformers, as used by the ImageNet DiffSmooth / DDS reference code.

timm is optional (``pip install timm``) and imported only when such a model is built.
Weights are never downloaded (``pretrained=False``); load them with ``load_classifier``.
The reference code normalizes their inputs with mean 0.5 / std 0.5.
"""

from __future__ import annotations

from torch import nn

from diffsmooth.classifiers.registry import register_classifier
from diffsmooth.validate import InputError

TIMM_MODELS = ("beit_large_patch16_224", "vit_base_patch16_224")


def _timm():
    try:
        import timm
    except ImportError:
        raise InputError("timm models need the timm package; run `pip install timm` "
                         "(or `pip install diffsmooth[hub]`)") from None
    return timm


def _register(name: str) -> None:
    @register_classifier(name, dataset="imagenet", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                         head_key="head.weight")
    def build(num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
        return _timm().create_model(
            name, pretrained=False, num_classes=num_classes, in_chans=in_channels,
            img_size=image_size, **kwargs,
        )


for _name in TIMM_MODELS:
    _register(_name)
