"""Datasets as [0,1] image tensors with integer labels, looked up by name.

``load_dataset(name, split, data_dir)`` returns an ``ImageDataset`` whose items are
``(image (C,H,W) float32 in [0,1], label int)`` and whose ``.info`` is a
``DatasetInfo`` (classes, geometry, normalization mean/std). Registered:
``fashion-mnist`` and ``mnist`` (IDX files), ``cifar10`` (``cifar-10-batches-py``),
``imagenet`` (val class folders, Resize(256)+CenterCrop(224)), ``digits`` (scikit-learn);
each with its ``DatasetInfo`` where its loader is (``register_dataset`` in ``registry``).
"""

from diffsmooth.data.dataset import ArrayImageDataset, FileImageDataset, ImageDataset
from diffsmooth.data.info import DatasetInfo
from diffsmooth.data.locate import search_dirs
from diffsmooth.data.registry import dataset_info, list_datasets, load_dataset, register_dataset

# Importing the loaders registers them.
from diffsmooth.data import cifar, digits, idx, imagenet  # noqa: E402,F401  isort: skip
from diffsmooth.data.cifar import load_pickle_batch
from diffsmooth.data.idx import read_idx

__all__ = [
    "ArrayImageDataset",
    "DatasetInfo",
    "FileImageDataset",
    "ImageDataset",
    "dataset_info",
    "list_datasets",
    "load_dataset",
    "load_pickle_batch",
    "read_idx",
    "register_dataset",
    "search_dirs",
]
