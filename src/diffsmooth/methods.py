"""Build a method's base classifier from names and paths, as the command line gives them.

``MethodSpec`` is the data that says which ``h`` a run certifies; ``build_base``
turns it into a ready ``nn.Module`` in eval mode on the requested device.  Where
a dataset ships models (Fashion-MNIST), the denoiser and classifier default to
them: the Gaussian classifier for the smoothing sigma (RS), the clean one (DDS,
Denoised Smoothing, DensePure), the Gaussian classifier for ``local_sigma``
(DiffSmooth), and the DnCNN trained at sigma (Denoised Smoothing).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffsmooth.errors import InputError


@dataclass(frozen=True)
class MethodSpec:
    """What base classifier a run certifies.

    Attributes:
        method: "rs", "dds", "diffsmooth", "denoised" (a trained DnCNN, Salman et al. 2020) or
            "densepure" (a vote over reverse-diffusion runs, Xiao et al. 2023).
        dataset: dataset name (for defaults and input checks).
        sigma: outer smoothing noise in [0,1] pixel units (sets t* of the denoiser).
        denoiser: diffusion checkpoint path or shipped model name (dds, diffsmooth, densepure),
            or a DnCNN checkpoint (denoised: ours or Salman et al.'s torch file).
        denoiser_preset: preset for a bare OpenAI checkpoint (inferred when None).
        classifier: classifier checkpoint path or shipped model name.
        m, local_sigma, vote, local_noise, local_noise_seed: DiffSmooth's local smoothing.
        precision: "float32" (default), or "bfloat16"/"float16" autocast.
        channels_last, compile, cuda_graphs: the fast path of ``diffsmooth.fast.accelerate``
            (NHWC layout; a ``torch.compile`` mode or None; CUDA graph replay). Off by default.
        runs, steps, reverse_chain, run_seed: DensePure's K runs of ``steps`` respaced reverse
            steps from t* (``"ddpm"`` stochastic or ``"ddim"``), their noise seeded by ``run_seed``.
    """

    method: str
    dataset: str
    sigma: float
    denoiser: str | None = None
    denoiser_preset: str | None = None
    classifier: str | None = None
    m: int = 5
    local_sigma: float = 0.25
    vote: str = "soft"
    local_noise: str = "fixed"
    local_noise_seed: int = 42
    precision: str = "float32"
    channels_last: bool = False
    compile: str | None = None
    cuda_graphs: bool = False
    runs: int = 5
    steps: int = 10
    reverse_chain: str = "ddpm"
    run_seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _classifier(spec: MethodSpec, shipped_for: Callable[[], str]) -> nn.Module:
    from diffsmooth.classifiers import load_classifier

    source = spec.classifier or shipped_for()
    return load_classifier(_resolve(source, "classifier"))


def build_denoiser(spec: MethodSpec) -> nn.Module:
    """The one-shot purifier of ``spec`` for its sigma: noisy [0,1] images -> purified [0,1]."""
    from diffsmooth.diffusion import OneShotDenoiser, load_diffusion_model

    source = spec.denoiser
    if source is None:
        source = _shipped(spec, "denoiser", lambda s: s.shipped_diffusion())
    model = load_diffusion_model(_resolve(source, "denoiser"), preset=spec.denoiser_preset)
    return OneShotDenoiser(model, spec.sigma)


def _resolve(source: str, what: str) -> Path:
    """A path as given, or the path of a shipped model of that name."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    from diffsmooth import shipped

    if source in shipped.list_shipped():
        return shipped.shipped_path(source)
    raise InputError(
        f"{what} {source!r} is neither an existing path nor a shipped model "
        f"({', '.join(shipped.list_shipped())}); check the path"
    )


def _shipped(spec: MethodSpec, what: str, pick: Callable[[Any], Any]) -> str:
    from diffsmooth import shipped

    if spec.dataset != "fashion-mnist":
        raise InputError(f"--{what} is required for dataset {spec.dataset!r}: only fashion-mnist ships default models")
    return str(pick(shipped))


def _build_rs(spec: MethodSpec) -> nn.Module:
    from diffsmooth.defenses import Gaussian

    return Gaussian(_classifier(spec, lambda: _shipped(spec, "classifier", lambda s: s.shipped_classifier("gaussian", spec.sigma))))


def _build_dds(spec: MethodSpec) -> nn.Module:
    from diffsmooth.defenses import DenoisedSmoothing

    clean = _classifier(spec, lambda: _shipped(spec, "classifier", lambda s: s.shipped_classifier("clean", 0.0)))
    return DenoisedSmoothing(build_denoiser(spec), clean)


def _build_diffsmooth(spec: MethodSpec) -> nn.Module:
    from diffsmooth.defenses import DiffSmooth

    local = _classifier(
        spec, lambda: _shipped(spec, "classifier", lambda s: s.shipped_classifier("gaussian", spec.local_sigma))
    )
    return DiffSmooth(
        build_denoiser(spec),
        local,
        m=spec.m,
        local_sigma=spec.local_sigma,
        vote=spec.vote,
        local_noise=spec.local_noise,
        seed=spec.local_noise_seed,
    )


def _build_denoised(spec: MethodSpec) -> nn.Module:
    from diffsmooth.defenses import DenoisedSmoothing
    from diffsmooth.denoisers import load_denoiser

    source = spec.denoiser or _shipped(spec, "denoiser", lambda s: s.shipped_denoiser(spec.sigma))
    clean = _classifier(spec, lambda: _shipped(spec, "classifier", lambda s: s.shipped_classifier("clean", 0.0)))
    return DenoisedSmoothing(load_denoiser(_resolve(source, "denoiser")), clean, method="denoised")


def _build_densepure(spec: MethodSpec) -> nn.Module:
    from diffsmooth.defenses import DensePure
    from diffsmooth.diffusion import MultiStepDenoiser, load_diffusion_model

    source = spec.denoiser or _shipped(spec, "denoiser", lambda s: s.shipped_diffusion())
    model = load_diffusion_model(_resolve(source, "denoiser"), preset=spec.denoiser_preset)
    clean = _classifier(spec, lambda: _shipped(spec, "classifier", lambda s: s.shipped_classifier("clean", 0.0)))
    chain = MultiStepDenoiser(model, spec.sigma, steps=spec.steps, method=spec.reverse_chain)
    return DensePure(chain, clean, runs=spec.runs, seed=spec.run_seed)


METHODS: dict[str, Callable[[MethodSpec], nn.Module]] = {
    "rs": _build_rs,
    "dds": _build_dds,
    "diffsmooth": _build_diffsmooth,
    "denoised": _build_denoised,
    "densepure": _build_densepure,
}


def validate(spec: MethodSpec) -> None:
    """Check the numbers of a spec before anything is loaded."""
    if spec.method not in METHODS:
        raise InputError(f"unknown method {spec.method!r}; choose one of: {', '.join(METHODS)}")
    if not (spec.sigma > 0 and math.isfinite(spec.sigma)):
        raise InputError(f"--sigma must be a positive noise level in [0,1] pixel units (e.g. 0.25), got {spec.sigma}")
    if spec.m < 1:
        raise InputError(f"--m must be at least 1 local noise sample, got {spec.m}")
    if not (spec.local_sigma >= 0 and math.isfinite(spec.local_sigma)):
        raise InputError(f"--local-sigma must be >= 0, got {spec.local_sigma}")
    if spec.runs < 1 or spec.steps < 1:
        raise InputError(f"--runs and --steps must be at least 1, got {spec.runs} and {spec.steps}")
    if spec.reverse_chain not in ("ddpm", "ddim"):
        raise InputError(f"unknown reverse chain {spec.reverse_chain!r}; choose one of: ddpm, ddim")
    from diffsmooth.fast import COMPILE_MODES, PRECISIONS

    if spec.precision not in PRECISIONS:
        raise InputError(f"unknown precision {spec.precision!r}; choose one of: {', '.join(PRECISIONS)}")

    if spec.compile is not None and spec.compile not in COMPILE_MODES:
        raise InputError(f"unknown compile mode {spec.compile!r}; choose one of: {', '.join(COMPILE_MODES)}")


def build_base(spec: MethodSpec, device: torch.device | str = "cpu") -> nn.Module:
    """The base classifier ``h`` of ``spec`` in eval mode on ``device``: noisy images
    ``(B, C, H, W)`` in [0,1] pixel space -> scores ``(B, num_classes)``.

    Any precision other than float32 or any fast-path setting wraps it in
    ``diffsmooth.fast.accelerate``, whose ``describe()`` records the settings."""
    validate(spec)
    base = METHODS[spec.method](spec).eval().to(device)
    if spec.precision == "float32" and not (spec.channels_last or spec.compile or spec.cuda_graphs):
        return base
    from diffsmooth.fast import accelerate

    return accelerate(base, precision=spec.precision, channels_last=spec.channels_last,
                      compile=spec.compile or False, cuda_graphs=spec.cuda_graphs)
