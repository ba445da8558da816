"""Purification diagnostics: closed forms on stand-in purifiers, then the tiny random UNet."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import chi

from diffsmooth.diffusion import OneShotDenoiser, load_diffusion_model
from diffsmooth.diffusion.diagnostics import (
    diagnose_model,
    per_image_psnr,
    purification_diagnostic,
    purification_quality,
)
from diffsmooth.validate import InputError

D = 28 * 28


def _images(n: int = 8) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def test_identity_purifier_gives_the_noise_norm_and_local_sigma_equal_to_sigma():
    sigma, draws, x = 0.5, 50, _images()
    report = purification_diagnostic(lambda z: z, x, sigma, torch.Generator().manual_seed(1), draws=draws,
                                     reverse=lambda z, g: z, reverse_runs=3)
    # (x + d) - x = d up to float32 rounding
    assert report.to_clean.count == report.noise_norm.count == 8 * draws
    assert math.isclose(report.to_clean.mean, report.noise_norm.mean, rel_tol=1e-6)
    assert math.isclose(report.to_clean.quantiles["q95"], report.noise_norm.quantiles["q95"], rel_tol=1e-6)
    # the mean of 3 identical copies is the input up to float32 rounding
    assert report.to_reverse_mean is not None and report.to_reverse_mean.quantiles["q99"] < 1e-5
    # ||d|| / sigma ~ chi with D degrees of freedom; sd about 1/sqrt(2), 400 draws
    se = (1 / math.sqrt(2)) / math.sqrt(8 * draws)
    assert abs(report.to_clean.mean / sigma - chi.mean(D)) < 5 * se
    for key, q in (("q05", 0.05), ("q50", 0.5), ("q95", 0.95)):
        assert abs(report.to_clean.quantiles[key] / sigma - chi.ppf(q, D)) < 0.25, key
    # local sigma^2 is a mean of 313,600 squared N(0, sigma^2) pixels: relative sd sqrt(2 / 313600)
    assert abs(report.local_sigma ** 2 / sigma ** 2 - 1) < 5 * math.sqrt(2 / (8 * draws * D))
    assert math.isclose(report.mse, report.local_sigma ** 2)
    assert report.describe == {} and report.reverse_runs == 3


def test_reverse_runs_with_known_noise_give_the_chi_distribution_of_their_mean():
    sigma, tau, runs, draws = 0.25, 0.3, 4, 50

    def noisy_run(z: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return z + tau * torch.randn(z.shape, generator=g)

    report = purification_diagnostic(lambda z: z, _images(), sigma, torch.Generator().manual_seed(2), draws=draws,
                                     reverse=noisy_run, reverse_runs=runs)
    # mean of K runs = z + N(0, tau^2 / K): the distance is (tau / sqrt(K)) chi_D
    scale = tau / math.sqrt(runs)
    se = (1 / math.sqrt(2)) / math.sqrt(8 * draws)
    assert abs(report.to_reverse_mean.mean / scale - chi.mean(D)) < 5 * se
    assert abs(report.to_reverse_mean.std / scale - chi.std(D)) < 0.1


def test_constant_purifier_distance_is_the_image_norm():
    x = _images(4)
    report = purification_diagnostic(torch.zeros_like, x, 0.5, torch.Generator().manual_seed(3), draws=3)
    norms = x.flatten(1).norm(dim=1).double()
    assert math.isclose(report.to_clean.mean, float(norms.mean()), rel_tol=1e-6)
    assert math.isclose(report.to_clean.quantiles["q99"], float(torch.quantile(norms.repeat(3), 0.99)), rel_tol=1e-6)
    assert math.isclose(report.mse, float((x.double() ** 2).mean()), rel_tol=1e-6)
    assert math.isclose(report.psnr, float(per_image_psnr(torch.zeros_like(x), x).mean()), rel_tol=1e-6)
    assert report.to_reverse_mean is None and report.reverse_runs == 0


def test_per_image_psnr_hand_value():
    ref = torch.zeros(2, 1, 2, 2)
    img = torch.stack([torch.full((1, 2, 2), 0.1), torch.zeros(1, 2, 2)])
    assert torch.allclose(per_image_psnr(img, ref), torch.tensor([20.0, 120.0]))


def test_quality_matches_the_one_shot_denoiser_by_hand(denoiser_path):
    model = load_diffusion_model(denoiser_path)
    x = _images(6)
    rows = purification_quality(model, x, (0.25, 0.5), torch.Generator().manual_seed(4), batch_size=4)
    gen = torch.Generator().manual_seed(4)
    for row, sigma in zip(rows, (0.25, 0.5)):
        den = OneShotDenoiser(model, sigma).eval()
        noisy = [b + sigma * torch.randn(b.shape, generator=gen) for b in (x[:4], x[4:])]
        with torch.no_grad():
            pur = torch.cat([den(n) for n in noisy])
        assert (row.sigma, row.t_star, row.images) == (sigma, den.t_star, 6)
        assert math.isclose(row.mse, float(((pur - x) ** 2).mean()), rel_tol=1e-5)
        assert math.isclose(row.psnr, float(per_image_psnr(pur, x).mean()), rel_tol=1e-5)
        assert math.isclose(row.psnr_noisy, float(per_image_psnr(torch.cat(noisy).clamp(0, 1), x).mean()),
                            rel_tol=1e-5)


def test_diagnose_model_on_tiny_unet_is_reproducible_and_records_t_star(denoiser_path):
    model = load_diffusion_model(denoiser_path)
    x = _images(3)
    runs = [diagnose_model(model, x, 0.5, torch.Generator().manual_seed(5), draws=2, reverse_steps=3,
                           reverse_runs=2).to_dict() for _ in range(2)]
    assert runs[0] == runs[1]
    report = runs[0]
    assert report["describe"]["t_star"] == OneShotDenoiser(model, 0.5).t_star
    assert report["to_clean"]["count"] == 6 and report["to_reverse_mean"]["count"] == 6
    assert 0 < report["to_reverse_mean"]["mean"] and 0 < report["local_sigma"] <= 1
    # purified images lie in [0,1]: no distance to a [0,1] image can exceed sqrt(D)
    assert report["to_clean"]["quantiles"]["q99"] <= math.sqrt(D)


@pytest.mark.parametrize("kwargs,match", [
    ({"sigma": 0.0}, "sigma must be a finite noise level > 0"),
    ({"draws": 0}, "draws must be a whole number >= 1"),
    ({"images": torch.rand(0, 1, 28, 28)}, r"expected clean images \(N, C, H, W\)"),
])
def test_bad_arguments(kwargs, match):
    args = {"images": _images(2), "sigma": 0.5, "draws": 2, **kwargs}
    with pytest.raises(InputError, match=match):
        purification_diagnostic(lambda z: z, args["images"], args["sigma"], torch.Generator(), draws=args["draws"])
