"""Shared fixtures: tiny Fashion-MNIST files in the real IDX format and tiny models saved
in the formats the command line reads. Nothing here touches the network or the user's data."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@pytest.fixture(scope="session")
def fmnist_dir(tmp_path_factory) -> Path:
    """A Fashion-MNIST folder with 40 train and 12 test images: class k is a bright
    block at a class-specific place, so even tiny models can tell classes apart."""
    folder = tmp_path_factory.mktemp("fashion-mnist")
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 40), ("t10k", 12)):
        labels = np.arange(count) % 10
        images = rng.integers(0, 40, (count, 28, 28))
        for i, k in enumerate(labels):
            r, c = divmod(int(k), 5)
            images[i, 4 + 10 * r : 12 + 10 * r, 2 + 5 * c : 6 + 5 * c] = 230
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


@pytest.fixture(scope="session")
def classifier_path(tmp_path_factory) -> Path:
    """A randomly initialised fmnist_cnn saved in our safetensors + JSON format."""
    from diffsmooth.classifiers import create_classifier, save_classifier

    torch.manual_seed(0)
    model = create_classifier("fmnist_cnn", 10).eval()
    return save_classifier(tmp_path_factory.mktemp("clf") / "tiny_cnn", model, {"note": "random weights"})
