"""Per-channel normalization as the first layer of every classifier.

Keeping normalization inside the model means smoothing noise is added in [0,1]
pixel space, where the certified radius is measured (Cohen et al. 2019).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _per_channel(values: Sequence[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)


class NormalizeLayer(nn.Module):
    """``(x - mean) / std`` per channel.

    Input (B, C, H, W) in [0,1] pixels (noisy inputs may leave that range);
    output the same shape in normalized units. ``mean``/``std`` are non-persistent
    buffers: they follow ``.to(device)`` but stay out of the state dict, which keeps
    the key layout of Cohen et al.'s checkpoints (only ``1.*`` keys).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if len(mean) != len(std) or len(mean) == 0:
            raise ValueError(f"mean and std need one value per channel, got {len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std values must be positive, got {tuple(std)}")
        self.register_buffer("mean", _per_channel(mean), persistent=False)
        self.register_buffer("std", _per_channel(std), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Compute in the input's dtype so bf16/fp16 pipelines stay in their precision.
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
