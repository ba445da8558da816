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


def write_fmnist(folder: Path) -> Path:
    """A Fashion-MNIST folder with 40 train and 12 test images: class k is a bright
    block at a class-specific place, so even tiny models can tell classes apart."""
    folder.mkdir(parents=True, exist_ok=True)
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
def fmnist_dir(tmp_path_factory) -> Path:
    """The synthetic Fashion-MNIST folder of ``write_fmnist``."""
    return write_fmnist(tmp_path_factory.mktemp("fashion-mnist"))


@pytest.fixture(scope="session")
def classifier_path(tmp_path_factory) -> Path:
    """A randomly initialised fmnist_cnn saved in our safetensors + JSON format."""
    from diffsmooth.classifiers import create_classifier, save_classifier

    torch.manual_seed(0)
    model = create_classifier("fmnist_cnn", 10).eval()
    return save_classifier(tmp_path_factory.mktemp("clf") / "tiny_cnn", model, {"note": "random weights"})


TINY_UNET_FLAGS = dict(image_size=28, in_channels=1, num_channels=32, num_res_blocks=1, channel_mult="1,1",
                       attention_resolutions="14", num_heads=2, dropout=0.0, learn_sigma=False,
                       use_scale_shift_norm=True)


@pytest.fixture(scope="session")
def denoiser_path(tmp_path_factory) -> Path:
    """A randomly initialised 1-channel 28x28 ADM UNet in our diffusion format (linear, 1000 steps)."""
    from diffsmooth.diffusion import NoiseSchedule, adm_unet, save_diffusion_model

    torch.manual_seed(0)
    unet = adm_unet("improved", **TINY_UNET_FLAGS)
    return save_diffusion_model(tmp_path_factory.mktemp("ddpm") / "tiny_ddpm", unet, "improved", TINY_UNET_FLAGS,
                                NoiseSchedule("linear", 1000), rescale_timesteps=False)
