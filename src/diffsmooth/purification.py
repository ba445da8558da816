"""What the purifier does to noisy images: a picture and its numbers (``diffsmooth purify``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from diffsmooth import validate
from diffsmooth.methods import MethodSpec, build_denoiser
from diffsmooth.sampling import generator_for
from diffsmooth.validate import InputError


@dataclass(frozen=True)
class GridReport:
    """The purifier's settings and the mean PSNRs (dB) of the images shown."""

    t_star: int
    effective_sigma: float
    psnr_noisy: float
    psnr_purified: float


def purification_grid(
    spec: MethodSpec,
    images: Callable[[int], tuple[torch.Tensor, int]],
    indices: Sequence[int],
    seed: int,
    out: Path,
    device: torch.device | str = "cpu",
) -> GridReport:
    """Write a grid with one row per image: clean | noisy | purified | purified + DiffSmooth's first
    local noise (exactly the copy DiffSmooth classifies first, from ``spec``'s local-noise settings).

    Image idx's noise is seeded by (seed, idx), as in certify.  ``images``: idx -> (image (C, H, W)
    in [0,1], label).  Refuses (``InputError``) a purifier that returns NaN or infinite pixels.
    """
    from diffsmooth.defenses import DiffSmooth
    from diffsmooth.visualize import check_figure_path, psnr, save_grid

    spec.validate()
    check_figure_path(out, "--out")
    device = torch.device(device)
    denoiser = build_denoiser(spec).eval().to(device)
    # The local noises come from DiffSmooth itself; its classifier is not called here.
    local = DiffSmooth(denoiser, nn.Identity(), m=spec.m, local_sigma=spec.local_sigma, vote=spec.vote,
                       local_noise=spec.local_noise, seed=spec.local_noise_seed)
    clean = torch.stack([images(i)[0] for i in indices]).to(device)  # [0,1] pixels
    noise = torch.stack([torch.randn(clean.shape[1:], generator=generator_for(seed, i, device), device=device)
                         for i in indices])
    noisy = clean + spec.sigma * noise
    with torch.inference_mode():
        purified = denoiser(noisy)
    if not bool(torch.isfinite(purified).all()):
        raise InputError("the denoiser returned NaN or infinite pixels; its weights are broken "
                         "(check the checkpoint with torch.isfinite)")
    copy = purified + local.local_noises(purified)[0]
    save_grid([clean, noisy.clamp(0, 1), purified, copy.clamp(0, 1)],
              ["clean", f"noisy (sigma={spec.sigma:g})", f"purified (t*={denoiser.t_star})",
               f"+ local noise ({spec.local_sigma:g})"], out)
    return GridReport(denoiser.t_star, denoiser.effective_sigma, psnr(noisy.clamp(0, 1), clean), psnr(purified, clean))


def purification_stats(
    spec: MethodSpec,
    images: Callable[[int], tuple[torch.Tensor, int]],
    indices: Sequence[int],
    seed: int,
    device: torch.device | str = "cpu",
    *,
    draws: int = 16,
    reverse_runs: int = 8,
    reverse_steps: int = 10,
):
    """The purification diagnostic of ``spec``'s denoiser at its sigma over ``indices`` x ``draws``
    noise draws (``diffusion.diagnose_model``): the distribution of ``||D(x + d) - x||``, of the
    distance to the mean of ``reverse_runs`` stochastic reverse runs, and the local sigma it suggests.
    Randomness from one generator seeded by ``seed``; returns a ``PurificationDiagnostic``."""
    from diffsmooth.diffusion import diagnose_model

    spec.validate()
    for name, value, low in (("--draws", draws, 1), ("--runs", reverse_runs, 0), ("--steps", reverse_steps, 1)):
        validate.whole(value, name, low)
    device = torch.device(device)
    denoiser = build_denoiser(spec).eval().to(device)
    clean = torch.stack([images(i)[0] for i in indices]).to(device)
    generator = torch.Generator(device=device).manual_seed(int(seed))
    with torch.inference_mode():
        report = diagnose_model(denoiser.model, clean, spec.sigma, generator, draws=draws,
                                reverse_steps=reverse_steps, reverse_runs=reverse_runs)
    if not (torch.isfinite(torch.tensor([report.mse, report.local_sigma])).all()):
        raise InputError("the denoiser returned NaN or infinite pixels; its weights are broken "
                         "(check the checkpoint with torch.isfinite)")
    return report
