"""``ImageDataset``: a torch Dataset of (image (C,H,W) float32 in [0,1], label int)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from diffsmooth.data.info import DatasetInfo
from diffsmooth.validate import InputError


class ImageDataset(Dataset):
    """Images in [0,1] pixel space with integer labels and a ``DatasetInfo``.

    Subclasses decide where pixels come from (an in-memory array or files read
    lazily); every item is ``(image, label)`` with ``image`` a float32 tensor of
    shape ``(C, H, W)`` in [0,1] and ``label`` a Python int.
    """

    def __init__(self, info: DatasetInfo, labels: Sequence[int] | torch.Tensor, split: str,
                 source: str | Path | None = None):
        self.info = info
        self.split = split
        self.source = source
        self.labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        outside = (self.labels < 0) | (self.labels >= info.num_classes)
        if outside.any():
            i = int(outside.nonzero()[0])
            raise InputError(f"{self._where()}: image {i} has label {int(self.labels[i])}, outside the "
                             f"{info.num_classes} classes (0..{info.num_classes - 1}) of {info.name}; check the "
                             "label file (is it another dataset's?)")

    def _where(self) -> str:
        return f"{self.source} ({self.split} split)" if self.source is not None else f"{self.info.name} {self.split} split"

    def __len__(self) -> int:
        return int(self.labels.numel())

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        return self._image(index), int(self.labels[index])

    def _image(self, index: int) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.info.name!r}, split={self.split!r}, n={len(self)})"


class ArrayImageDataset(ImageDataset):
    """All images in memory as integer pixels; scaled to [0,1] per item.

    Args:
        images: (N, C, H, W) integer tensor of raw pixel levels (uint8 0..255,
            or 0..16 for scikit-learn digits).
        max_level: the raw level that means 1.0 (255, or 16 for digits); pixels are
            divided by it, as torchvision's ``to_tensor`` divides by 255.
    """

    def __init__(
        self,
        info: DatasetInfo,
        images: torch.Tensor,
        labels: Sequence[int] | torch.Tensor,
        split: str,
        max_level: float = 255.0,
        source: str | Path | None = None,
    ):
        super().__init__(info, labels, split, source)
        if images.ndim != 4 or images.shape[0] != len(self):
            raise InputError(f"{self._where()}: {len(self)} labels for images of shape {tuple(images.shape)} (needs "
                             "(N, C, H, W) with one label per image); check that the files belong together")
        self.images = images
        self.max_level = max_level

    def _image(self, index: int) -> torch.Tensor:
        return self.images[index].to(torch.float32) / self.max_level

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images (N, C, H, W) float32 in [0,1] and labels (N,) int64, for training loops."""
        return self.images.to(torch.float32) / self.max_level, self.labels.clone()


class FileImageDataset(ImageDataset):
    """Images decoded from files on access (ImageNet-sized data does not fit memory).

    Args:
        files: one path per image.
        load: maps a path to a (C, H, W) float32 tensor in [0,1] (decode + resize + crop).
    """

    def __init__(
        self,
        info: DatasetInfo,
        files: Sequence[Path],
        labels: Sequence[int] | torch.Tensor,
        split: str,
        load: Callable[[Path], torch.Tensor],
        source: str | Path | None = None,
    ):
        super().__init__(info, labels, split, source)
        self.files = list(files)
        self._load = load

    def _image(self, index: int) -> torch.Tensor:
        return self._load(self.files[index])
