"""Datasets by name, the one registry: ``load_dataset("fashion-mnist", split="test")``.

Each dataset is registered once, by decorating its loader with its ``DatasetInfo``::

    @register_dataset(DatasetInfo("digits", 10, 1, 8, (0.3053,), (0.3760,)))
    def _digits(info, split, data_dir): ...

so that ``dataset_info(name)`` answers without touching any file and ``load_dataset(name)``
hands the same info to the loader.  Unknown names raise ``InputError`` listing the known ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from diffsmooth import validate
from diffsmooth.data.dataset import ImageDataset
from diffsmooth.data.info import DatasetInfo
from diffsmooth.data.locate import check_split

Loader = Callable[[DatasetInfo, str, "Path | None"], ImageDataset]
"""``loader(info, split, data_dir)``: ``split`` is "train" or "test", ``data_dir`` a folder or None (searched)."""


@dataclass(frozen=True)
class _Entry:
    info: DatasetInfo
    loader: Loader


_DATASETS: dict[str, _Entry] = {}


def register_dataset(info: DatasetInfo) -> Callable[[Loader], Loader]:
    """Register ``loader(info, split, data_dir) -> ImageDataset`` as dataset ``info.name``.

    One loader may serve several datasets (stack the decorators); each call gets its own ``info``.
    """

    def decorate(loader: Loader) -> Loader:
        _DATASETS[info.name] = _Entry(info, loader)
        return loader

    return decorate


def list_datasets() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(_DATASETS)


def _entry(name: str) -> _Entry:
    return _DATASETS[validate.choice(name, "dataset", list_datasets())]


def dataset_info(name: str) -> DatasetInfo:
    """The ``DatasetInfo`` of a registered dataset, without touching any file."""
    return _entry(name).info


def load_dataset(
    name: str, split: str = "test", data_dir: str | Path | None = None
) -> ImageDataset:
    """Load dataset ``name``'s ``split`` ("train" or "test").

    Returns an ``ImageDataset`` of (image (C,H,W) float32 in [0,1], label int) with
    ``.info`` a ``DatasetInfo``. Files are searched in ``data_dir``, ``$DIFFSMOOTH_DATA``,
    the user cache and known system folders; a missing dataset raises ``InputError``
    saying where it looked and how to get it.
    """
    entry = _entry(name)
    check_split(split)
    return entry.loader(entry.info, split, Path(data_dir) if data_dir is not None else None)


__all__ = ["DatasetInfo", "dataset_info", "list_datasets", "load_dataset", "register_dataset"]
