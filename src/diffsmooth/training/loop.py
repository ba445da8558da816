"""Pieces shared by the classifier and diffusion training loops."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import torch

from diffsmooth.data import load_dataset
from diffsmooth.data.info import DatasetInfo
from diffsmooth.files import resolve_device  # noqa: F401  (re-exported for the trainers)


def load_train_tensors(dataset: str, data_dir: str | Path | None, split: str = "train",
                       limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor, DatasetInfo]:
    """All images (N, C, H, W) float32 in [0,1], labels (N,) int64 and the dataset's info."""
    ds = load_dataset(dataset, split=split, data_dir=data_dir)
    if hasattr(ds, "tensors"):
        images, labels = ds.tensors()
    else:
        items = [ds[i] for i in range(len(ds) if limit is None else min(limit, len(ds)))]
        images = torch.stack([im for im, _ in items])
        labels = torch.tensor([lab for _, lab in items], dtype=torch.long)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels, ds.info


def batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches of one shuffled epoch (the last, smaller batch is dropped if n > batch)."""
    order = torch.randperm(n, generator=generator)
    full = n // batch_size if n >= batch_size else 1
    for i in range(full):
        yield order[i * batch_size:(i + 1) * batch_size]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return n // batch_size if n >= batch_size else 1


def cosine_lr(base_lr: float, step: int, total: int, warmup: int = 0) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay from ``base_lr`` to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    frac = (step - warmup) / max(total - warmup, 1)
    return base_lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@contextlib.contextmanager
def global_rng_from(generator: torch.Generator, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNG from ``generator`` for the block, restoring the caller's state after.

    Layers such as dropout draw from the global RNG; seeding it once per epoch/pass from our
    saved generator makes a resumed run replay exactly what the uninterrupted run did.
    """
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        yield
