"""Small files in the layouts the reference code uses, for tests that run on a CPU in seconds:
CIFAR-10 pickles, an improved-diffusion UNet with the CIFAR-10 model's schedule, transformers folders."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

FIXTURES = Path(__file__).parent / "fixtures"
COHEN_R20 = FIXTURES / "classifiers" / "cohen_cifar_resnet20_checkpoint.pth.tar"
"""A real Cohen-format checkpoint (``arch``, ``state_dict`` with ``1.`` keys) of a random cifar_resnet20."""


def write_cifar(root: Path, test_images: int = 201) -> Path:
    """``root/cifar-10-batches-py`` as the official pickles lay it out, ``test_images`` random test images."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, count in [(f"data_batch_{k}", 2) for k in range(1, 6)] + [("test_batch", test_images)]:
        batch = {b"batch_label": b"batch", b"labels": [i % 10 for i in range(count)],
                 b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8), b"filenames": [b"x.png"] * count}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return root


def improved_ddpm(directory: Path) -> Path:
    """The conformance improved-diffusion UNet (32 channels, 1 res block) with the CIFAR-10 model's
    4000-step cosine schedule and timestep rescaling, saved in our format (t* as the reference's)."""
    from diffsmooth.diffusion import NoiseSchedule, adm_unet, save_diffusion_model

    config = json.loads((FIXTURES / "diffusion" / "improved_small_config.json").read_text())["config"]
    unet = adm_unet("improved", **config)
    unet.load_state_dict(load_file(FIXTURES / "diffusion" / "improved_small_weights.safetensors"))
    return save_diffusion_model(directory, unet, "improved", config, NoiseSchedule("cosine", 4000),
                                rescale_timesteps=True)


def transformers_folder(folder: Path, config, mean: list[float], std: list[float], size: dict) -> Path:
    """A randomly initialised transformers image classifier of ``config`` as ``save_pretrained`` writes it,
    with the ``preprocessor_config.json`` of its image processor (ViT's, or ConvNeXt's for convnext)."""
    import transformers

    torch.manual_seed(0)
    transformers.AutoModelForImageClassification.from_config(config).save_pretrained(folder)
    convnext = config.model_type == "convnext"
    processor = transformers.ConvNextImageProcessor if convnext else transformers.ViTImageProcessor
    processor(size=size, image_mean=mean, image_std=std).save_pretrained(folder)
    return folder


def tiny_vit(channels: int, labels: int = 10, image_size: int = 32):
    """A 2-layer ViT config (width 32, patches of 8) with named labels."""
    import transformers

    names = [f"class{k}" for k in range(labels)]
    return transformers.ViTConfig(image_size=image_size, patch_size=8, num_channels=channels, hidden_size=32,
                                  num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                  id2label=dict(enumerate(names)), label2id={c: k for k, c in enumerate(names)})


def tiny_convnext(channels: int, labels: int = 10):
    """A 2-stage ConvNeXt config (widths 8, 16) for 24 px inputs."""
    import transformers

    return transformers.ConvNextConfig(num_channels=channels, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1],
                                       image_size=24, num_labels=labels)
