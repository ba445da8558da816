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

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffsmooth import validate
from diffsmooth.validate import InputError

VOTES = ("soft", "hard")
"""DiffSmooth's aggregations of the m local copies: mean softmax, or majority of labels."""
LOCAL_NOISES = ("fixed", "fresh")
"""DiffSmooth's local noises: drawn once from the seed and reused, or fresh on every call."""


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
        self.denoiser = denoiser
        self.classifier = classifier
        self.m = validate.whole(m, "m")
        self.local_sigma = validate.sigma(local_sigma, "local_sigma", zero_ok=True)
        self.vote = validate.choice(vote, "vote", VOTES)
        self.local_noise = validate.choice(local_noise, "local_noise", LOCAL_NOISES)
        self.seed = validate.seed(seed)
        self._fixed: Tensor | None = None
        self._fresh: torch.Generator | None = None

    def local_noises(self, like: Tensor, count: int | None = None) -> Tensor:
        """The local noises ``(count, C, H, W)`` (default m) for purified images shaped like ``like``
        (B, C, H, W), on ``like``'s device and dtype.

        Fixed noises are drawn one copy at a time from one generator seeded with ``seed``, so the
        noises of a smaller m are a prefix of a larger m's (a grid shares their classifier calls).
        """
        count = self.m if count is None else count
        shape = like.shape[1:]
        if self.local_noise == "fixed":
            # Drawn on the CPU so that every device and run sees the same noises; kept scaled on
            # the device, so that the hot path re-creates nothing.
            cached = self._fixed
            if (cached is None or cached.shape[0] < count or cached.shape[1:] != shape or cached.device != like.device
                    or cached.dtype != like.dtype):
                generator = torch.Generator().manual_seed(self.seed)
                noise = torch.stack([torch.randn(tuple(shape), generator=generator) for _ in range(max(count, self.m))])
                self._fixed = (self.local_sigma * noise).to(device=like.device, dtype=like.dtype)
            return self._fixed[:count]
        if self._fresh is None or self._fresh.device != like.device:
            self._fresh = torch.Generator(device=like.device).manual_seed(self.seed)
        return self.local_sigma * torch.randn((count, *shape), generator=self._fresh, device=like.device,
                                              dtype=like.dtype)

    def copy_logits(self, purified: Tensor, noises: Tensor) -> Tensor:
        """Classifier logits ``(B, len(noises), K)`` of the copies ``purified + noises[j]``; one call of
        batch B per copy, so that a copy's logits do not depend on how many copies are made."""
        return torch.stack([self.classifier(purified + noise) for noise in noises], dim=1)

    def aggregate(self, logits: Tensor) -> Tensor:
        """The vote over copies: logits ``(B, m, K)`` -> scores ``(B, K)``."""
        if self.vote == "soft":
            return logits.float().softmax(dim=-1).mean(dim=1)
        return F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).float().mean(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        _check_noisy(x)
        purified = _fit_classifier_input(self.denoiser(x), self.classifier, "denoiser")
        return self.aggregate(self.copy_logits(purified, self.local_noises(purified)))

    @property
    def rows_independent(self) -> bool:
        """Whether a row's scores depend on that row alone (no local noise drawn per call)."""
        return self.local_noise == "fixed"

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


class Grid(nn.Module):
    """Many base classifiers that share the work of each noisy batch (one purification, shared
    classifier copies), evaluated together: noisy images ``(B, C, H, W)`` in [0,1] pixel space
    plus noise -> scores ``(B, len(members), num_classes)``.

    ``members`` are ``Gaussian``, ``DenoisedSmoothing`` and ``DiffSmooth`` defenses; all that purify
    must hold the same denoiser object.  The denoiser runs once per batch; DiffSmooth members
    with fixed local noise that share classifier, local sigma and seed share their copies (the
    noises of a smaller m are a prefix of a larger m's), so members that differ only in vote or m
    cost one set of classifier calls.  Row k of the output equals, bit for bit, what
    ``members[k](x)`` returns alone: the same calls on the same batches.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise InputError("a grid needs at least one configuration")
        denoisers = {id(m.denoiser) for m in members if isinstance(m, (DiffSmooth, DenoisedSmoothing))}
        if len(denoisers) > 1:
            raise InputError("the configurations of a grid must share one denoiser (one sigma, one model)")
        self.members = nn.ModuleList(members)
        self.active: tuple[int, ...] | None = None  # see ``only``

    @property
    def num_configurations(self) -> int:
        return len(self.members)

    @property
    def rows_independent(self) -> bool:
        """Whether a row's scores depend on that row alone: every member's are."""
        return all(getattr(m, "rows_independent", True) for m in self.members)

    @contextlib.contextmanager
    def only(self, active: Sequence[int]) -> Iterator[None]:
        """Within the block, compute only the members ``active`` (indices); the others' rows of the
        output are zeros, for a caller that ignores them (sequential certification of a grid, whose
        stopped configurations ignore later samples).  No purification when no active member needs it."""
        chosen = tuple(sorted(set(active)))
        if not chosen or not all(0 <= k < len(self.members) for k in chosen):
            raise InputError(f"a grid of {len(self.members)} configurations cannot compute only {list(active)}")
        before, self.active = self.active, chosen
        try:
            yield
        finally:
            self.active = before

    def forward(self, x: Tensor) -> Tensor:
        _check_noisy(x)
        active = range(len(self.members)) if self.active is None else self.active
        # One purification for the members that classify the purified batch; the others (RS,
        # DensePure's own reverse runs) are called as they are.
        purifying = [m for k, m in enumerate(self.members)
                     if k in active and isinstance(m, (DiffSmooth, DenoisedSmoothing))]
        purified = purifying[0].denoiser(x) if purifying else None
        shared: dict[tuple, Tensor] = {}  # (classifier, local sigma, seed) -> logits of the copies made so far
        scores: list[Tensor | None] = []
        for k, member in enumerate(self.members):
            if k not in active:
                scores.append(None)
                continue
            if isinstance(member, DiffSmooth):
                fitted = _fit_classifier_input(purified, member.classifier, "denoiser")
                if member.local_noise == "fixed":
                    key = (id(member.classifier), member.local_sigma, member.seed)
                    have = shared.get(key)
                    done = 0 if have is None else have.shape[1]
                    if done < member.m:
                        noises = member.local_noises(fitted, member.m)[done:]
                        more = member.copy_logits(fitted, noises)
                        have = more if have is None else torch.cat([have, more], dim=1)
                        shared[key] = have
                    logits = have[:, : member.m].contiguous()  # the layout a lone member's stack has
                else:
                    logits = member.copy_logits(fitted, member.local_noises(fitted))
                scores.append(member.aggregate(logits))
            elif isinstance(member, DenoisedSmoothing):
                scores.append(member.classifier(_fit_classifier_input(purified, member.classifier, "denoiser")))
            else:
                scores.append(member(x))
        widths = {s.shape[-1] for s in scores if s is not None}
        if len(widths) != 1:
            raise InputError(f"the configurations of a grid give different numbers of classes {sorted(widths)}; "
                             "use classifiers of one dataset")
        zeros = x.new_zeros(x.shape[0], widths.pop())
        return torch.stack([zeros if s is None else s.float() for s in scores], dim=1)

    def describe(self) -> dict[str, Any]:
        return {"method": "grid", "configurations": [m.describe() for m in self.members]}


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
        validate.whole(runs, "runs")
        deterministic = getattr(denoiser, "method", "ddpm") == "ddim" or getattr(denoiser, "steps", 2) == 1
        if runs > 1 and deterministic:
            raise InputError(f"runs={runs} with a deterministic reverse chain (ddim or one step) repeats one run "
                             f"{runs} times; use method 'ddpm' with steps > 1, or runs=1")
        self.denoiser = denoiser
        self.classifier = classifier
        self.runs = runs
        self.seed = validate.seed(seed)
        self._generator: torch.Generator | None = None

    @property
    def rows_independent(self) -> bool:
        """False: a row's scores depend on the noise the call drew for the rows before it."""
        return False

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
