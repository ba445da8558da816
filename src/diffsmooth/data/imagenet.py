"""ImageNet validation images as class folders, decoded lazily.

Layout: ``<root>/val/<wnid>/*.JPEG`` or ``<root>/<wnid>/*.JPEG``. Labels are the
indices of the sorted wnid folders, which is the standard ImageNet class order when
all 1000 folders are present. Each image goes through Resize(256) + CenterCrop(224),
as in the reference evaluation code.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import torch

from diffsmooth.data.dataset import FileImageDataset
from diffsmooth.data.info import DatasetInfo
from diffsmooth.data.locate import find_dir, search_dirs
from diffsmooth.data.registry import register_dataset
from diffsmooth.validate import InputError

_EXTENSIONS = {".jpeg", ".jpg", ".png"}
_HOW_TO_GET = (
    "pass data_dir= the ImageNet root whose val/ folder holds one sub-folder per wnid "
    "(e.g. val/n01440764/*.JPEG), or set DIFFSMOOTH_DATA"
)


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _holds_class_folders(folder: Path) -> bool:
    return any(
        any(f.suffix.lower() in _EXTENSIONS for f in d.iterdir()) for d in _class_dirs(folder)
    )


def _load_image(path: Path) -> torch.Tensor:
    """Decode, Resize(256) (shorter side), CenterCrop(224): (3, 224, 224) float32 in [0,1]."""
    from PIL import Image
    from torchvision.transforms import functional as TF

    with Image.open(path) as img:
        img = img.convert("RGB")
        img = TF.center_crop(TF.resize(img, 256), 224)
        return TF.to_tensor(img)


# mean/std: the values of Cohen et al.'s released checkpoints (their NormalizeLayer); class names
# are the wnids of the folders found.
@register_dataset(DatasetInfo("imagenet", 1000, 3, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
def _imagenet(info: DatasetInfo, split: str, data_dir: Path | None) -> FileImageDataset:
    sub = "val" if split == "test" else "train"
    candidates: list[Path] = []
    for d in search_dirs("imagenet", data_dir):
        candidates += [d / sub, d]
    folder = find_dir("imagenet", candidates, _holds_class_folders, _HOW_TO_GET)
    wnids = _class_dirs(folder)
    if len(wnids) != 1000:
        warnings.warn(
            f"{folder} has {len(wnids)} class folders, not 1000: labels are indices of the folders "
            "found and do not match ImageNet class ids",
            stacklevel=2,
        )
    files, labels = [], []
    for label, d in enumerate(wnids):
        for f in sorted(d.iterdir()):
            if f.suffix.lower() in _EXTENSIONS:
                files.append(f)
                labels.append(label)
    if not files:
        raise InputError(f"no images in {folder}; {_HOW_TO_GET}")
    info = replace(info, class_names=tuple(d.name for d in wnids))
    return FileImageDataset(info, files, labels, split, _load_image)
