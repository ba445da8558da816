"""What a purifier-aware classifier trains on: purified noisy images, computed once and cached.

At certification DiffSmooth's local classifier sees ``purify(x + d) + e``, ``d ~ N(0, sigma^2)``
the smoothing noise and ``e ~ N(0, local_sigma^2)`` the local noise; DDS's clean classifier sees
``purify(x + d)``.  Training on the same inputs (Carlini et al.'s "+finetune" for DDS; for
DiffSmooth the local noise is the training method's own noise on top) needs the frozen purifier's
output for each training image.  Purifying every batch again costs the purifier's forward pass
(~12x the classifier's for the shipped models) each epoch; ``purified_draws`` computes ``K`` draws
of ``d`` per image once, and a training batch takes one of the K per image.  With ``cache`` the
draws are kept on disk (safetensors, float16) and reused by every run with the same purifier,
sigma, seed, images and K.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from diffsmooth import validate
from diffsmooth.files import save_safetensors, write_json
from diffsmooth.modelfile import read_safetensors

CACHE_FORMAT = "diffsmooth-purified-draws"


def _draw_generator(seed: int, draw: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), 0x5E1F, int(draw)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


def _fingerprint(images: Tensor) -> str:
    return hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()


BATCH = 500
"""Images purified per forward pass (the noise is drawn chunk by chunk of this size)."""


def purified_draws(purifier: torch.nn.Module, images: Tensor, sigma: float, draws: int, seed: int,
                   device: torch.device, cache: Path | None = None, purifier_id: str = "") -> Tensor:
    """``(draws, N, C, H, W)`` float16 CPU tensor of ``purify(x_i + d)``, ``d ~ N(0, sigma^2 I)``.

    Args:
        purifier: noisy images in [0,1] -> purified images in [0,1] (e.g. ``OneShotDenoiser``), frozen.
        images: ``(N, C, H, W)`` training images in [0,1] (CPU).
        sigma: the smoothing noise in [0,1] pixel units; draws: K; seed: the noise of draw k comes from
            a generator seeded by ``(seed, k)``, drawn on the CPU in chunks of ``BATCH`` images (the same
            draws on any device).
        cache: a folder for the draws (one file per draw and ``cache.json``); reused when its record
            matches (``purifier_id``, sigma, seed, the images' SHA-256), rewritten otherwise.
    """
    sigma = validate.sigma(sigma)
    draws = validate.whole(draws, "--purify-draws")
    record = {"format": CACHE_FORMAT, "purifier": purifier_id, "sigma": sigma, "seed": int(seed),
              "images": _fingerprint(images), "shape": list(images.shape)}
    out = torch.empty((draws, *images.shape), dtype=torch.float16)
    done = _cached(cache, record)
    purifier = purifier.to(device).eval()
    for k in range(draws):
        if k in done:
            out[k] = read_safetensors(cache / f"draw{k}.safetensors")["images"]
            continue
        generator = _draw_generator(seed, k)
        with torch.inference_mode():
            for i in range(0, len(images), BATCH):
                x = images[i:i + BATCH]
                noisy = x + sigma * torch.randn(x.shape, generator=generator)
                out[k, i:i + BATCH] = purifier(noisy.to(device)).float().clamp(0, 1).cpu().half()
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            save_safetensors(cache / f"draw{k}.safetensors", {"images": out[k]})
            write_json(cache / "cache.json", {**record, "draws": sorted({*done, *range(k + 1)})})
    return out


def _cached(cache: Path | None, record: dict) -> set[int]:
    """The draws ``cache`` holds for ``record`` (none when it holds another purifier's, sigma's ...)."""
    if cache is None or not (cache / "cache.json").is_file():
        return set()
    try:
        doc = json.loads((cache / "cache.json").read_text())
    except (OSError, ValueError):
        return set()
    if {k: doc.get(k) for k in record} != record:
        return set()
    return {int(k) for k in doc.get("draws", []) if (cache / f"draw{int(k)}.safetensors").is_file()}


def pick_draws(draws: Tensor, idx: Tensor, generator: torch.Generator) -> Tensor:
    """One of the K purified draws per image of the batch ``idx`` (long ``(B,)``), chosen uniformly
    by ``generator``: ``(B, C, H, W)`` float32 in [0,1]."""
    which = torch.randint(draws.shape[0], (len(idx),), generator=generator)
    return draws[which, idx].float()
