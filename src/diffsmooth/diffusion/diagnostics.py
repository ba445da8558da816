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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from diffsmooth import validate
from diffsmooth.diffusion.denoiser import MultiStepDenoiser, OneShotDenoiser
from diffsmooth.diffusion.presets import DiffusionModel
from diffsmooth.validate import InputError

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def per_image_psnr(images: Tensor, reference: Tensor) -> Tensor:
    """PSNR in dB (peak 1) per image, in float32: (B, C, H, W) in [0,1] vs (B, C, H, W) -> (B,);
    the MSE is floored at 1e-12 (120 dB for identical images)."""
    mse = (images.float() - reference.float()).pow(2).flatten(1).mean(dim=1).clamp_min(1e-12)
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
    validate.whole(batch_size, "batch_size")
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


@dataclass(frozen=True)
class DistanceSummary:
    """Distribution of an l2 distance ([0,1] pixel units) over images x noise draws.

    ``quantiles`` maps ``"q05"``, ``"q25"``, ``"q50"``, ``"q75"``, ``"q95"``, ``"q99"`` to values.
    """

    count: int
    mean: float
    std: float
    quantiles: dict[str, float]

    @classmethod
    def of(cls, values: Tensor) -> "DistanceSummary":
        v = values.detach().to("cpu", torch.float64).flatten()
        q = torch.quantile(v, torch.tensor(QUANTILES, dtype=torch.float64))
        return cls(len(v), float(v.mean()), float(v.std()) if len(v) > 1 else 0.0,
                   {f"q{round(100 * p):02d}": float(x) for p, x in zip(QUANTILES, q)})


@dataclass(frozen=True)
class PurificationDiagnostic:
    """What ``purification_diagnostic`` measured at one sigma ([0,1] pixel units throughout).

    Attributes:
        sigma: the smoothing noise; ``images``, ``draws``: images and noise draws per image.
        noise_norm: ``||d||_2`` of the draws (for scale: about sigma sqrt(C H W)).
        to_clean: ``||D(x + d) - x||_2`` (bounded neighbourhood).
        to_reverse_mean: ``||D(x + d) - mean_k R_k(x + d)||_2`` over ``reverse_runs`` stochastic
            reverse runs R_k (one-shot approximates the mean); None when not measured.
        local_sigma: ``sqrt(mean ||D(x + d) - x||^2 / (C H W))``, the per-pixel rms deviation of
            the purified image from the clean one: the local smoothing noise that covers it.
        mse, psnr: mean squared error and mean per-image PSNR (dB, peak 1) of D(x + d).
        describe: the purifier's ``describe()`` when it has one (t*, model ...), else {}.
    """

    sigma: float
    images: int
    draws: int
    reverse_runs: int
    noise_norm: DistanceSummary
    to_clean: DistanceSummary
    to_reverse_mean: DistanceSummary | None
    local_sigma: float
    mse: float
    psnr: float
    describe: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def purification_diagnostic(purify: Callable[[Tensor], Tensor], images: Tensor, sigma: float,
                            generator: torch.Generator, *, draws: int = 16,
                            reverse: Callable[[Tensor, torch.Generator], Tensor] | None = None,
                            reverse_runs: int = 8, batch_size: int = 250) -> PurificationDiagnostic:
    """Measure a purifier over ``draws`` noises per image (see the module docstring).

    Args:
        purify: noisy images (B, C, H, W) in [0,1] + noise -> purified (B, C, H, W) in [0,1],
            e.g. ``OneShotDenoiser(model, sigma)`` (its ``describe()`` is recorded).
        images: (N, C, H, W) clean images in [0,1], on the device the purifier runs on.
        sigma: smoothing noise std in [0,1] pixel units, > 0.
        generator: draws every noise d (and is passed to ``reverse``), on the images' device.
        draws: noise draws per image.
        reverse: a stochastic reverse run (noisy (B, C, H, W), generator) -> (B, C, H, W) in
            [0,1], e.g. ``MultiStepDenoiser(model, sigma, steps, "ddpm")``; None skips the
            one-shot-vs-mean measurement (it costs ``reverse_runs`` reverse runs per draw).
        reverse_runs: K, reverse runs averaged per noisy input.
        batch_size: images per purifier call.
    """
    if images.dim() != 4 or images.shape[0] == 0:
        raise InputError(f"expected clean images (N, C, H, W) in [0,1] with N >= 1, got shape {tuple(images.shape)}")
    sigma = validate.sigma(sigma)
    validate.whole(draws, "draws")
    validate.whole(batch_size, "batch_size")
    if reverse is not None:
        validate.whole(reverse_runs, "reverse_runs")
    noise_norms, to_clean, to_mean, psnrs, sq_err = [], [], [], [], 0.0
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        for _ in range(draws):
            d = sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            purified = purify(x + d)
            noise_norms.append(d.flatten(1).norm(dim=1))
            to_clean.append((purified - x).flatten(1).norm(dim=1))
            sq_err += float(((purified - x).double() ** 2).sum())
            psnrs.append(per_image_psnr(purified, x))
            if reverse is not None:
                mean = sum(reverse(x + d, generator) for _ in range(reverse_runs)) / reverse_runs
                to_mean.append((purified - mean).flatten(1).norm(dim=1))
    per_image = images[0].numel()
    count = len(images) * draws
    describe = purify.describe() if hasattr(purify, "describe") else {}
    return PurificationDiagnostic(
        sigma=float(sigma), images=len(images), draws=draws, reverse_runs=reverse_runs if reverse is not None else 0,
        noise_norm=DistanceSummary.of(torch.cat(noise_norms)), to_clean=DistanceSummary.of(torch.cat(to_clean)),
        to_reverse_mean=DistanceSummary.of(torch.cat(to_mean)) if to_mean else None,
        local_sigma=math.sqrt(sq_err / (count * per_image)), mse=sq_err / (count * per_image),
        psnr=float(torch.cat(psnrs).mean()), describe=describe)


def diagnose_model(model: DiffusionModel, images: Tensor, sigma: float, generator: torch.Generator, *,
                   draws: int = 16, reverse_steps: int = 10, reverse_runs: int = 8,
                   batch_size: int = 250) -> PurificationDiagnostic:
    """``purification_diagnostic`` for a DDPM: D = ``OneShotDenoiser(model, sigma)``; the mean is
    over ``reverse_runs`` stochastic DDPM reverse chains from t* in ``reverse_steps`` respaced
    steps (``MultiStepDenoiser(..., method="ddpm")``); ``reverse_runs=0`` skips it."""
    _check_images(images, model)
    one_shot = OneShotDenoiser(model, sigma).eval()
    reverse = MultiStepDenoiser(model, sigma, reverse_steps, "ddpm").eval() if reverse_runs > 0 else None
    return purification_diagnostic(one_shot, images, sigma, generator, draws=draws, reverse=reverse,
                                   reverse_runs=reverse_runs, batch_size=batch_size)
