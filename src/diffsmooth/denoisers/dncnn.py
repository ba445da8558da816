"""DnCNN (Zhang et al. 2017) as used by Denoised Smoothing (Salman et al., NeurIPS 2020).

A plain stack of ``depth`` 3x3 convolutions that predicts the noise and subtracts it (residual
learning): conv(C -> width) + ReLU, then ``depth - 2`` times conv(width -> width, no bias) +
BatchNorm (eps 1e-4, momentum 0.95) + ReLU, then conv(width -> C, no bias); output ``x - stack(x)``.
Salman et al. use depth 17 with width 64 ("DnCNN") or 128 ("DnCNN-wide"). The layers live in
``self.dncnn`` (an ``nn.Sequential``) so that state-dict keys are ``dncnn.<index>.<name>``, the
layout of their checkpoints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from diffsmooth import validate
from diffsmooth.validate import InputError

PRESETS: dict[str, dict[str, int]] = {"dncnn": {"depth": 17, "width": 64}, "dncnn-wide": {"depth": 17, "width": 128}}
"""Our names for Salman et al.'s two denoisers; their ``arch`` names map onto them in ``checkpoint``."""


@dataclass(frozen=True)
class DnCNNConfig:
    """What rebuilds a DnCNN (saved as JSON beside its weights).

    Attributes:
        in_channels: image channels C (1 for Fashion-MNIST, 3 for CIFAR-10/ImageNet).
        depth: number of convolutions (>= 2); width: channels of the hidden convolutions.
        sigma: the noise level in [0,1] pixel units it was trained for (None: not recorded).
        dataset: the data it was trained on, if recorded.
    """

    in_channels: int = 3
    depth: int = 17
    width: int = 64
    sigma: float | None = None
    dataset: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DnCNNConfig":
        sigma = d.get("sigma")
        return cls(in_channels=int(d["in_channels"]), depth=int(d["depth"]), width=int(d["width"]),
                   sigma=None if sigma is None else float(sigma), dataset=d.get("dataset"))


class DnCNN(nn.Module):
    """Denoiser ``D``: noisy images (B, C, H, W) in [0,1] pixels plus noise -> denoised (B, C, H, W).

    The output is ``x - stack(x)``, not clipped (as in Salman et al.): roughly [0,1]. Device and
    dtype follow the module. ``generator`` seeds the initialization (orthogonal convolutions,
    zero biases, BatchNorm at identity, last convolution zero so that D starts as the identity).
    """

    def __init__(self, config: DnCNNConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        validate.whole(config.depth, "DnCNN depth", 2)
        validate.whole(config.width, "DnCNN width")
        validate.whole(config.in_channels, "DnCNN in_channels")
        c, w = config.in_channels, config.width
        layers: list[nn.Module] = [nn.Conv2d(c, w, 3, padding=1, bias=True), nn.ReLU(inplace=True)]
        for _ in range(config.depth - 2):
            layers += [nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w, eps=1e-4, momentum=0.95),
                       nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(w, c, 3, padding=1, bias=False))
        self.dncnn = nn.Sequential(*layers)
        self.config = config
        self.checkpoint_sha256: str | None = None
        self.checkpoint_path: str | None = None
        self.training_info: dict[str, Any] = {}
        self._initialize(generator)

    def _initialize(self, generator: torch.Generator | None) -> None:
        convs = [m for m in self.dncnn if isinstance(m, nn.Conv2d)]
        for conv in convs:
            nn.init.orthogonal_(conv.weight, generator=generator)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        for bn in (m for m in self.dncnn if isinstance(m, nn.BatchNorm2d)):
            nn.init.ones_(bn.weight)
            nn.init.zeros_(bn.bias)
        nn.init.zeros_(convs[-1].weight)

    @property
    def in_channels(self) -> int:
        return self.config.in_channels

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) noisy images in [0,1] pixels (values outside allowed) -> denoised (B, C, H, W)."""
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise InputError(f"the DnCNN expects noisy images (B, {self.config.in_channels}, H, W), "
                             f"got shape {tuple(x.shape)}; pass images with its channel count")
        return x - self.dncnn(x)

    def describe(self) -> dict[str, Any]:
        """JSON-able description recorded with results."""
        info: dict[str, Any] = {"type": "DnCNN", **self.config.to_dict(),
                                "pixel_range": "[0,1] plus noise in, roughly [0,1] out (not clipped)"}
        if self.checkpoint_sha256:
            info["sha256"] = self.checkpoint_sha256
        return info


def create_dncnn(name: str = "dncnn", in_channels: int = 3, generator: torch.Generator | None = None,
                 **overrides: Any) -> DnCNN:
    """A fresh DnCNN by preset name (``"dncnn"``: depth 17, width 64; ``"dncnn-wide"``: width 128);
    ``overrides`` (depth, width, sigma, dataset) replace preset fields."""
    validate.choice(name, "denoiser", PRESETS)
    fields = {**PRESETS[name], **overrides}
    unknown = set(fields) - {"depth", "width", "sigma", "dataset"}
    if unknown:
        raise InputError(f"create_dncnn got unknown setting(s) {', '.join(sorted(unknown))}; "
                         "it takes depth, width, sigma, dataset")
    return DnCNN(DnCNNConfig(in_channels=in_channels, **fields), generator=generator)
