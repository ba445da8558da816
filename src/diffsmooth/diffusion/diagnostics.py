"""How well a DDPM purifies: one-shot PSNR/MSE, and DiffSmooth's two purification results measured.

``purification_quality`` is the model-card number: for each smoothing sigma, one-shot purify
``x + d`` and compare with ``x`` (MSE and mean per-image PSNR, peak 1, [0,1] pixels).

``purification_diagnostic`` draws many noises per image and measures what DiffSmooth's
analysis (Zhang et al. 2023, Sec. 4) rests on:
  - bounded neighbourhood: the l2 distance ``||D(x + d) - x||_2`` stays small with high
    probability (its mean and quantiles over draws and images);
  - one-shot approximates the mean: ``||D(x + d) - mean_k R_k(x + d)||_2``, R_k independent
    stochastic multi-step reverse runs (``MultiStepDenoiser`` with ``method="ddpm"``), i.e. the
    one-shot output is close to the mean of the reverse-process posterior;
  - the local sigma the spread suggests: the per-pixel rms of ``D(x + d) - x`` over draws,
    images and pixels, ``sqrt(mean ||D(x + d) - x||^2 / (C H W))``. Local smoothing with a
    Gaussian of that std covers a purified point's typical per-pixel deviation from x.
All noise comes from the generator passed in, drawn on the images' device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from diffsmooth.diffusion.denoiser import MultiStepDenoiser, OneShotDenoiser
from diffsmooth.diffusion.presets import DiffusionModel
from diffsmooth.errors import InputError

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def per_image_psnr(images: Tensor, reference: Tensor) -> Tensor:
    """PSNR in dB (peak 1) per image: (B, C, H, W) in [0,1] vs (B, C, H, W) -> (B,); MSE floored at 1e-10."""
    mse = ((images - reference) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return -10.0 * torch.log10(mse)


def _check_images(images: Tensor, model: DiffusionModel) -> None:
    if images.dim() != 4 or images.shape[1] != model.in_channels or images.shape[0] == 0:
        raise InputError(f"expected clean images (N, {model.in_channels}, H, W) in [0,1] with N >= 1, got shape "
                         f"{tuple(images.shape)}; pass a batch of images from the model's dataset")


@dataclass(frozen=True)
class PurificationQuality:
    """One-shot purification at one sigma over ``images`` images (one noise draw each).

    ``mse``: mean over images and pixels of (D(x + d) - x)^2 in [0,1] units; ``psnr``: mean
    per-image PSNR (dB, peak 1) of D(x + d); ``psnr_noisy``: the same for x + d clipped to [0,1].
    """

    sigma: float
    t_star: int
    images: int
    mse: float
    psnr: float
    psnr_noisy: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def purification_quality(model: DiffusionModel, images: Tensor, sigmas: Sequence[float],
                         generator: torch.Generator, batch_size: int = 500) -> list[PurificationQuality]:
    """One-shot purification quality at each sigma.

    Args:
        model: the DDPM (``load_diffusion_model``); put it on the images' device first.
        images: (N, C, H, W) clean images in [0,1].
        sigmas: smoothing sigmas in [0,1] pixel units.
        generator: draws d ~ N(0, sigma^2 I) on the images' device, one draw per image and sigma.
        batch_size: images per network call.

    Returns:
        one ``PurificationQuality`` per sigma, in the given order.
    """
    _check_images(images, model)
    rows = []
    for sigma in sigmas:
        denoiser = OneShotDenoiser(model, sigma).eval()
        sq_err, psnrs, psnrs_noisy = 0.0, [], []
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size]
            noisy = x + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            purified = denoiser(noisy)
            sq_err += float(((purified - x) ** 2).sum())
            psnrs.append(per_image_psnr(purified, x))
            psnrs_noisy.append(per_image_psnr(noisy.clamp(0, 1), x))
        rows.append(PurificationQuality(float(sigma), denoiser.t_star, len(images), sq_err / images.numel(),
                                        float(torch.cat(psnrs).mean()), float(torch.cat(psnrs_noisy).mean())))
    return rows
