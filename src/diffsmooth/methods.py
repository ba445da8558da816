"""Build a method's base classifier from names and paths, as the command line gives them.

``MethodSpec`` is the data that says which ``h`` a run certifies; ``build_base``
turns it into a ready ``nn.Module`` in eval mode on the requested device.  Where
a dataset ships models (Fashion-MNIST), the denoiser and classifier default to
them: the Gaussian classifier for the smoothing sigma (RS), the clean one (DDS,
Denoised Smoothing, DensePure), the Gaussian classifier for ``local_sigma``
(DiffSmooth), and the DnCNN trained at sigma (Denoised Smoothing).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from diffsmooth import validate
from diffsmooth.shipped import resolve_model
from diffsmooth.validate import InputError


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

    def validate(self) -> None:
        """The one check of a method's settings, worded with the command line's option names;
        the choices come from the registries (``METHODS``, ``VOTES``, ``LOCAL_NOISES``,
        ``fast.PRECISIONS``, ``fast.COMPILE_MODES``)."""
        from diffsmooth.defenses import LOCAL_NOISES, VOTES
        from diffsmooth.diffusion.denoiser import REVERSE_CHAINS
        from diffsmooth.fast import COMPILE_MODES, PRECISIONS

        validate.choice(self.method, "--method", METHODS)
        validate.sigma(self.sigma, "--sigma")
        validate.whole(self.m, "--m")
        validate.sigma(self.local_sigma, "--local-sigma", zero_ok=True)
        validate.choice(self.vote, "--vote", VOTES)
        validate.choice(self.local_noise, "--local-noise", LOCAL_NOISES)
        validate.seed(self.local_noise_seed, "--local-noise-seed")
        validate.whole(self.runs, "--runs")
        validate.whole(self.steps, "--steps")
        validate.choice(self.reverse_chain, "--reverse-chain", REVERSE_CHAINS)
        validate.seed(self.run_seed, "--run-seed")
        validate.choice(self.precision, "--precision", PRECISIONS)
        if self.compile is not None:
            validate.choice(self.compile, "--compile", COMPILE_MODES)


class _Models:
    """Loads each model file once: the configurations of a grid share denoiser and classifiers."""

    def __init__(self) -> None:
        self._cache: dict[tuple, nn.Module] = {}

    def classifier(self, spec: MethodSpec, shipped_for: Callable[[], str]) -> nn.Module:
        from diffsmooth.classifiers import load_classifier

        path = resolve_model(spec.classifier or shipped_for(), "classifier")
        key = ("classifier", str(path.resolve()))
        if key not in self._cache:
            self._cache[key] = load_classifier(path)
        return self._cache[key]

    def denoiser(self, spec: MethodSpec) -> nn.Module:
        from diffsmooth.diffusion import OneShotDenoiser, load_diffusion_model

        source = spec.denoiser
        if source is None:
            source = _shipped(spec, "denoiser", lambda s: s.shipped_diffusion())
        path = resolve_model(source, "denoiser")
        key = ("denoiser", str(path.resolve()), spec.denoiser_preset, spec.sigma)
        if key not in self._cache:
            self._cache[key] = OneShotDenoiser(load_diffusion_model(path, preset=spec.denoiser_preset), spec.sigma)
        return self._cache[key]


def build_denoiser(spec: MethodSpec) -> nn.Module:
    """The one-shot purifier of ``spec`` for its sigma: noisy [0,1] images -> purified [0,1]."""
    return _Models().denoiser(spec)


def _shipped(spec: MethodSpec, what: str, pick: Callable[[Any], Any]) -> str:
    from diffsmooth import shipped

    if spec.dataset != "fashion-mnist":
        raise InputError(f"--{what} is required for dataset {spec.dataset!r}: only fashion-mnist ships default models")
    return str(pick(shipped))


def _build_rs(spec: MethodSpec, models: _Models) -> nn.Module:
    from diffsmooth.defenses import Gaussian

    return Gaussian(models.classifier(
        spec, lambda: _shipped(spec, "classifier", lambda s: s.shipped_classifier("gaussian", spec.sigma))))


def _build_dds(spec: MethodSpec, models: _Models) -> nn.Module:
    from diffsmooth.defenses import DenoisedSmoothing

    clean = models.classifier(spec, lambda: _shipped(spec, "classifier", lambda s: s.shipped_classifier("clean", 0.0)))
    return DenoisedSmoothing(models.denoiser(spec), clean)


def _build_diffsmooth(spec: MethodSpec, models: _Models) -> nn.Module:
    from diffsmooth.defenses import DiffSmooth

    local = models.classifier(
        spec, lambda: _shipped(spec, "classifier", lambda s: s.shipped_classifier("gaussian", spec.local_sigma))
    )
    return DiffSmooth(
        models.denoiser(spec),
        local,
        m=spec.m,
        local_sigma=spec.local_sigma,
        vote=spec.vote,
        local_noise=spec.local_noise,
        seed=spec.local_noise_seed,
    )


def _build_denoised(spec: MethodSpec, models: _Models) -> nn.Module:
    from diffsmooth.defenses import DenoisedSmoothing
    from diffsmooth.denoisers import load_denoiser

    source = spec.denoiser or _shipped(spec, "denoiser", lambda s: s.shipped_denoiser(spec.sigma))
    clean = models.classifier(spec, lambda: _shipped(spec, "classifier", lambda s: s.shipped_classifier("clean", 0.0)))
    return DenoisedSmoothing(load_denoiser(resolve_model(source, "denoiser")), clean, method="denoised")


def _build_densepure(spec: MethodSpec, models: _Models) -> nn.Module:
    from diffsmooth.defenses import DensePure
    from diffsmooth.diffusion import MultiStepDenoiser, load_diffusion_model

    source = spec.denoiser or _shipped(spec, "denoiser", lambda s: s.shipped_diffusion())
    model = load_diffusion_model(resolve_model(source, "denoiser"), preset=spec.denoiser_preset)
    clean = models.classifier(spec, lambda: _shipped(spec, "classifier", lambda s: s.shipped_classifier("clean", 0.0)))
    chain = MultiStepDenoiser(model, spec.sigma, steps=spec.steps, method=spec.reverse_chain)
    return DensePure(chain, clean, runs=spec.runs, seed=spec.run_seed)


METHODS: dict[str, Callable[[MethodSpec, _Models], nn.Module]] = {
    "rs": _build_rs,
    "dds": _build_dds,
    "diffsmooth": _build_diffsmooth,
    "denoised": _build_denoised,
    "densepure": _build_densepure,
}


def build_base(spec: MethodSpec, device: torch.device | str = "cpu", static_batch: int | None = None,
               workers: int | None = 1) -> nn.Module:
    """The base classifier ``h`` of ``spec`` in eval mode on ``device``: noisy images
    ``(B, C, H, W)`` in [0,1] pixel space -> scores ``(B, num_classes)``.

    Any precision other than float32 or any fast-path setting wraps it in
    ``diffsmooth.fast.accelerate``, whose ``describe()`` records the settings; ``static_batch``
    is the batch size it compiles for (a run's ``batch_size``), so it compiles once.  ``workers``:
    CPU row-block workers (``diffsmooth.workers``; the scores are unchanged), None for
    ``default_workers``."""
    spec.validate()
    return _fast(METHODS[spec.method](spec, _Models()).eval().to(device), spec, static_batch, workers)


def build_grid(specs: Sequence[MethodSpec], device: torch.device | str = "cpu", static_batch: int | None = None,
               workers: int | None = 1):
    """One ``defenses.Grid`` base for several configurations that share sigma, dataset, denoiser and
    fast-path settings: each model file is loaded once and purification runs once per batch.
    Its scores are ``(B, len(specs), num_classes)``; configuration k's equal ``build_base(specs[k])``'s.
    ``workers`` as for ``build_base``."""
    from diffsmooth.defenses import Grid

    for spec in specs:
        spec.validate()
    shared = ("dataset", "sigma", "denoiser", "denoiser_preset", "precision", "channels_last", "compile", "cuda_graphs")
    for name in shared:
        values = {getattr(spec, name) for spec in specs}
        if len(values) > 1:
            raise InputError(f"the configurations of one run must share --{name.replace('_', '-')}, got {sorted(map(str, values))}")
    models = _Models()
    grid = Grid([METHODS[spec.method](spec, models) for spec in specs]).eval().to(device)
    return _fast(grid, specs[0], static_batch, workers)


def default_workers(base: nn.Module, spec: MethodSpec, device: torch.device) -> int:
    """CPU row-block workers for ``base`` when the user chose none: one per intra-op thread
    (``torch.get_num_threads()``) on the CPU for an eager base whose rows are independent, else 1."""
    if (device.type != "cpu" or spec.compile or spec.cuda_graphs
            or getattr(base, "rows_independent", True) is False):
        return 1
    return torch.get_num_threads()


def _fast(base: nn.Module, spec: MethodSpec, static_batch: int | None, workers: int | None = 1) -> nn.Module:
    device = next(base.parameters(), torch.empty(0)).device
    workers = default_workers(base, spec, device) if workers is None else workers
    if spec.precision == "float32" and not (spec.channels_last or spec.compile or spec.cuda_graphs or workers > 1):
        return base
    if spec.cuda_graphs and device.type != "cuda":
        raise InputError(f"--cuda-graphs replays CUDA graphs and needs a CUDA device, not {device}; drop it")
    if workers > 1 and device.type != "cpu":
        raise InputError(f"--cpu-workers splits calls on the CPU; drop it for {device}")
    from diffsmooth.fast import accelerate

    return accelerate(base, precision=spec.precision, channels_last=spec.channels_last,
                      compile=spec.compile or False, cuda_graphs=spec.cuda_graphs,
                      static_batch=static_batch if spec.compile or spec.cuda_graphs else None, workers=workers)


def build_smoothed(spec: MethodSpec, device: torch.device | str = "cpu", static_batch: int | None = None):
    """The smoothed classifier ``g`` of ``spec``: its base (``build_base``), its sigma and the class
    count of its dataset, each given once."""
    from diffsmooth.data import dataset_info
    from diffsmooth.smoothing import SmoothedClassifier

    base = build_base(spec, device, static_batch)
    return SmoothedClassifier(base, dataset_info(spec.dataset).num_classes, spec.sigma)
