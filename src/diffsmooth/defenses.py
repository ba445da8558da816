"""Every method of the brief as a base classifier ``h`` for the same certifier.

Each defense is an ``nn.Module`` that maps noisy images ``(B, C, H, W)`` (pixels
in [0,1] plus the outer smoothing noise, so values may leave [0,1]) to scores
``(B, num_classes)``, and says what it is through ``describe()`` for the
results manifest.

- ``Gaussian``: Cohen et al.'s randomized smoothing, ``h = f``.
- ``DenoisedSmoothing``: ``h = f(D(x))`` with a purifier ``D`` (DDS, Carlini et al. 2023).
- ``DiffSmooth``: ``h = vote_j f(D(x) + e_j)`` with ``m`` local noises
  ``e_j ~ N(0, local_sigma^2 I)`` (Zhang et al. 2023).
- ``DensePure``: ``h = vote_k f(D_k(x))`` over K stochastic reverse-diffusion runs (Xiao et al. 2023).

Denoised Smoothing with a trained DnCNN (Salman et al. 2020) is ``DenoisedSmoothing`` with a
``diffsmooth.denoisers.DnCNN`` as the denoiser.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffsmooth.errors import InputError


def _info(module: nn.Module) -> dict[str, Any]:
    """JSON-able description of a denoiser or classifier, as much as it tells."""
    if hasattr(module, "describe"):
        return dict(module.describe())
    info: dict[str, Any] = {"type": type(module).__name__}
    config = getattr(module, "config", None)
    if config is not None:
        info.update(config.to_dict() if hasattr(config, "to_dict") else dict(vars(config)))
    sha = getattr(module, "checkpoint_sha256", None) or getattr(module, "sha256", None)
    if sha:
        info["sha256"] = sha
    return info


def _expected(module: nn.Module, name: str) -> int | None:
    """``in_channels`` or ``image_size`` a module declares (itself or via its config), else None."""
    for owner in (module, getattr(module, "config", None)):
        value = getattr(owner, name, None)
        if isinstance(value, int):
            return value
    return None


def _fit_classifier_input(x: Tensor, classifier: nn.Module, source: str) -> Tensor:
    """Check channels and resize ``x`` (B, C, H, W) to the classifier's input size.

    Resizing is bicubic with antialiasing, as the reference DDS code does for
    ImageNet classifiers that expect another resolution than the denoiser's.
    """
    channels = _expected(classifier, "in_channels")
    if channels is not None and x.shape[1] != channels:
        raise InputError(
            f"the classifier expects {channels}-channel images but the {source} gives {x.shape[1]} channels;"
            " use a classifier and denoiser trained on the same kind of images"
        )
    size = _expected(classifier, "image_size")
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return x


def _check_noisy(x: Tensor) -> None:
    if x.dim() != 4:
        raise InputError(f"expected a batch of noisy images (B, C, H, W), got shape {tuple(x.shape)}")


class Gaussian(nn.Module):
    """Randomized smoothing of Cohen et al.: the base classifier is ``f`` itself,
    trained with Gaussian noise (or SmoothAdv, Consistency, MACER) at the smoothing sigma."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        _check_noisy(x)
        return self.classifier(_fit_classifier_input(x, self.classifier, "input"))

    def describe(self) -> dict[str, Any]:
        return {"method": "rs", "classifier": _info(self.classifier)}


class DenoisedSmoothing(nn.Module):
    """Denoised smoothing: ``h(x) = f(D(x))`` with ``D`` a purifier from noisy images in [0,1]
    to purified images in [0,1]: a diffusion model in one shot (``OneShotDenoiser``; DDS,
    ``method="dds"``) or a trained DnCNN (Salman et al. 2020, ``method="denoised"``).
    ``method`` is the name recorded by ``describe()``."""

    def __init__(self, denoiser: nn.Module, classifier: nn.Module, method: str = "dds") -> None:
        super().__init__()
        self.denoiser = denoiser
        self.classifier = classifier
        self.method = method

    def forward(self, x: Tensor) -> Tensor:
        _check_noisy(x)
        purified = self.denoiser(x)
        return self.classifier(_fit_classifier_input(purified, self.classifier, "denoiser"))

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "denoiser": _info(self.denoiser), "classifier": _info(self.classifier)}


class DiffSmooth(nn.Module):
    """DiffSmooth: purify once, then a locally smoothed classifier on the result.

    ``h(x) = aggregate_j f(D(x) + e_j)``, ``e_j ~ N(0, local_sigma^2 I)`` in [0,1]
    pixel space, ``j = 1..m``; all ``m`` copies are classified in one batched call.

    Args:
        denoiser: purifier, noisy images in [0,1] -> purified images in [0,1].
        classifier: ``f``, images in [0,1] -> logits; trained for noise ``local_sigma``.
        m: number of local noise samples.
        local_sigma: their standard deviation (0 turns DiffSmooth into DDS).
        vote: ``"soft"`` averages the softmax over the m copies (the reference
            code); ``"hard"`` takes the fraction of copies voting each class (the
            paper's text).  Either way the output is ``(B, num_classes)`` scores
            whose argmax is ``h``'s label; ties go to the lower class index.
        local_noise: ``"fixed"`` draws the m noises once from ``seed`` and reuses
            them for every input (the reference code, seed 42); ``"fresh"`` draws
            new ones on every call from a generator seeded with ``seed``.
        seed: seed of the local noise.
    """

    def __init__(
        self,
        denoiser: nn.Module,
        classifier: nn.Module,
        m: int = 5,
        local_sigma: float = 0.25,
        vote: Literal["soft", "hard"] = "soft",
        local_noise: Literal["fixed", "fresh"] = "fixed",
        seed: int = 42,
    ) -> None:
        super().__init__()
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise InputError(f"m (the number of local noise samples) must be a whole number >= 1, got {m!r}")
        if not isinstance(local_sigma, (int, float)) or not 0.0 <= local_sigma < float("inf"):
            raise InputError(f"local_sigma must be a finite number >= 0, got {local_sigma!r}")
        if vote not in ("soft", "hard"):
            raise InputError(f"vote must be 'soft' or 'hard', got {vote!r}")
        if local_noise not in ("fixed", "fresh"):
            raise InputError(f"local_noise must be 'fixed' or 'fresh', got {local_noise!r}")
        self.denoiser = denoiser
        self.classifier = classifier
        self.m = m
        self.local_sigma = float(local_sigma)
        self.vote = vote
        self.local_noise = local_noise
        self.seed = int(seed)
        self._fixed: Tensor | None = None
        self._fresh: torch.Generator | None = None

    def local_noises(self, like: Tensor) -> Tensor:
        """The m local noises ``(m, C, H, W)`` for purified images shaped like ``like`` (B, C, H, W),
        on ``like``'s device and dtype."""
        shape = (self.m, *like.shape[1:])
        if self.local_noise == "fixed":
            # Drawn once on the CPU so that every device and run sees the same noises; kept
            # scaled on the device, so that the hot path re-creates nothing.
            cached = self._fixed
            if cached is None or cached.shape != shape or cached.device != like.device or cached.dtype != like.dtype:
                noise = torch.randn(shape, generator=torch.Generator().manual_seed(self.seed))
                self._fixed = (self.local_sigma * noise).to(device=like.device, dtype=like.dtype)
            return self._fixed
        if self._fresh is None or self._fresh.device != like.device:
            self._fresh = torch.Generator(device=like.device).manual_seed(self.seed)
        return self.local_sigma * torch.randn(shape, generator=self._fresh, device=like.device, dtype=like.dtype)

    def forward(self, x: Tensor) -> Tensor:
        _check_noisy(x)
        purified = _fit_classifier_input(self.denoiser(x), self.classifier, "denoiser")
        b = purified.shape[0]
        copies = (purified[:, None] + self.local_noises(purified)[None]).flatten(0, 1)
        logits = self.classifier(copies).view(b, self.m, -1)
        if self.vote == "soft":
            return logits.float().softmax(dim=-1).mean(dim=1)
        return F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).float().mean(dim=1)

    def describe(self) -> dict[str, Any]:
        return {
            "method": "diffsmooth",
            "m": self.m,
            "local_sigma": self.local_sigma,
            "vote": self.vote,
            "local_noise": self.local_noise,
            "local_noise_seed": self.seed,
            "denoiser": _info(self.denoiser),
            "classifier": _info(self.classifier),
        }


class DensePure(nn.Module):
    """DensePure (Xiao et al., ICLR 2023): a majority vote over several reverse-diffusion runs.

    ``h(x) = vote_k f(D_k(x))``, ``k = 1..runs``: each run is the reverse chain of ``denoiser``
    (a ``MultiStepDenoiser``) from t* down to 0 with its own noise, classified by ``f``. The
    base classifier is random; the certifier's guarantee holds for it as for any base (its
    randomness is part of each noise sample's draw). All runs go through the denoiser and the
    classifier in one batched call each.

    Args:
        denoiser: ``MultiStepDenoiser`` (``forward(x, generator)``; noisy [0,1] -> purified [0,1]).
        classifier: ``f``, images in [0,1] -> logits (a clean classifier, as for DDS).
        runs: number K of reverse runs voting.
        seed: seed of the generator the runs' reverse-step noise is drawn from, fresh on every
            call (created on the input's device at first use).
    Output: ``(B, num_classes)`` vote fractions over the K runs; ties go to the lower class index.
    """

    def __init__(self, denoiser: nn.Module, classifier: nn.Module, runs: int = 5, seed: int = 0) -> None:
        super().__init__()
        if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
            raise InputError(f"runs (the number of reverse-diffusion runs voting) must be a whole number >= 1, got {runs!r}")
        deterministic = getattr(denoiser, "method", "ddpm") == "ddim" or getattr(denoiser, "steps", 2) == 1
        if runs > 1 and deterministic:
            raise InputError(f"runs={runs} with a deterministic reverse chain (ddim or one step) repeats one run "
                             f"{runs} times; use method 'ddpm' with steps > 1, or runs=1")
        self.denoiser = denoiser
        self.classifier = classifier
        self.runs = runs
        self.seed = int(seed)
        self._generator: torch.Generator | None = None

    def forward(self, x: Tensor) -> Tensor:
        _check_noisy(x)
        b = x.shape[0]
        if self._generator is None or self._generator.device != x.device:
            self._generator = torch.Generator(device=x.device).manual_seed(self.seed)
        # Run k of image i sits at row k * B + i: the K runs differ only in their reverse-step noise.
        purified = self.denoiser(x.repeat(self.runs, 1, 1, 1), generator=self._generator)
        logits = self.classifier(_fit_classifier_input(purified, self.classifier, "denoiser"))
        votes = F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).view(self.runs, b, -1)
        return votes.float().mean(dim=0)

    def describe(self) -> dict[str, Any]:
        return {
            "method": "densepure",
            "runs": self.runs,
            "steps": getattr(self.denoiser, "steps", None),
            "reverse_chain": getattr(self.denoiser, "method", None),
            "seed": self.seed,
            "denoiser": _info(self.denoiser),
            "classifier": _info(self.classifier),
        }
