"""Measure the shipped Fashion-MNIST models for MODEL_CARD.md (CPU is enough).

- test accuracy of every shipped classifier, clean and under N(0, sigma^2) pixel noise
  (one noise draw per image, seed 1234), for sigma in {0.25, 0.5};
- one-shot purification of the shipped DDPM at sigma 0.25 / 0.5 / 1.0: mean per-image PSNR
  (peak 1) of the noisy image (clipped to [0,1]) and of the purified one, on the first
  --psnr-images test images, plus the clean classifier's accuracy on the purified images.

Usage: .venv/bin/python scripts/evaluate_shipped.py [--psnr-images 2000] [--json out.json]
Certified accuracy is not computed here: it comes from `diffsmooth certify`.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from diffsmooth.classifiers import load_classifier
from diffsmooth.data import load_dataset
from diffsmooth.diffusion import OneShotDenoiser, load_diffusion_model
from diffsmooth.shipped import list_shipped, shipped_diffusion, shipped_path

SIGMAS_ACC = (0.25, 0.5)
SIGMAS_PSNR = (0.25, 0.5, 1.0)


def psnr(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB (peak 1) of images (B, C, H, W) in [0,1] against ``ref``."""
    mse = ((x - ref) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return -10 * torch.log10(mse)


@torch.no_grad()
def predict(model, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])


def noisy(x: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    return x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--psnr-images", type=int, default=2000, help="test images for the PSNR rows")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    parser.add_argument("--classifiers-only", action="store_true", help="skip the purification rows")
    args = parser.parse_args()
    test = load_dataset("fashion-mnist", split="test")
    x, y = test.tensors()
    report: dict = {"test_images": len(x), "classifiers": {}, "purification": {}}
    for name in [n for n in list_shipped() if n.startswith("fmnist_cnn")]:
        model = load_classifier(shipped_path(name)).eval()
        row = {"clean": float((predict(model, x) == y).float().mean())}
        for s in SIGMAS_ACC:
            row[f"noise_{s:g}"] = float((predict(model, noisy(x, s, 1234)) == y).float().mean())
        report["classifiers"][name] = row
        print(name, {k: round(v, 4) for k, v in row.items()}, flush=True)
    if args.classifiers_only:
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=2)
        return
    dm = load_diffusion_model(shipped_diffusion())
    clean_clf = load_classifier(shipped_path("fmnist_cnn_clean")).eval()
    xp, yp = x[:args.psnr_images], y[:args.psnr_images]
    for s in SIGMAS_PSNR:
        den = OneShotDenoiser(dm, s).eval()
        xn = noisy(xp, s, 4321)
        t0 = time.time()
        with torch.no_grad():
            pur = torch.cat([den(xn[i:i + 250]) for i in range(0, len(xn), 250)])
        row = {"t_star": den.t_star, "psnr_noisy": float(psnr(xn.clamp(0, 1), xp).mean()),
               "psnr_purified": float(psnr(pur, xp).mean()),
               "clean_clf_acc_noisy": float((predict(clean_clf, xn) == yp).float().mean()),
               "clean_clf_acc_purified": float((predict(clean_clf, pur) == yp).float().mean()),
               "seconds": round(time.time() - t0, 1)}
        report["purification"][f"{s:g}"] = row
        print(f"sigma {s:g}", {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    report["psnr_images"] = len(xp)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    assert all(math.isfinite(r["psnr_purified"]) for r in report["purification"].values())


if __name__ == "__main__":
    main()
