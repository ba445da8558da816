"""Datasets by name: ``load_dataset("fashion-mnist", split="test")``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from diffsmooth.data.dataset import ImageDataset
from diffsmooth.data.info import dataset_info, known_datasets
from diffsmooth.data.locate import check_split
from diffsmooth.errors import InputError

Loader = Callable[[str, "Path | None"], ImageDataset]
_LOADERS: dict[str, Loader] = {}


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Register ``loader(split, data_dir) -> ImageDataset`` under ``name``.

    ``name`` must have a ``DatasetInfo`` (see ``diffsmooth.data.info``).
    """
    dataset_info(name)  # fail at import time, not at first use, if the info is missing

    def decorate(loader: Loader) -> Loader:
        _LOADERS[name] = loader
        return loader

    return decorate


def list_datasets() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(_LOADERS)


def load_dataset(
    name: str, split: str = "test", data_dir: str | Path | None = None
) -> ImageDataset:
    """Load dataset ``name``'s ``split`` ("train" or "test").

    Returns an ``ImageDataset`` of (image (C,H,W) float32 in [0,1], label int) with
    ``.info`` a ``DatasetInfo``. Files are searched in ``data_dir``, ``$DIFFSMOOTH_DATA``,
    the user cache and known system folders; a missing dataset raises ``InputError``
    saying where it looked and how to get it.
    """
    if name not in _LOADERS:
        raise InputError(f"unknown dataset {name!r}; choose one of: {', '.join(list_datasets())}")
    check_split(split)
    return _LOADERS[name](split, Path(data_dir) if data_dir is not None else None)


__all__ = ["register_dataset", "list_datasets", "load_dataset", "dataset_info", "known_datasets"]
