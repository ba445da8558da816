"""Certify or predict a dataset's images into a results store.

A run has three steps, each usable alone (torchrun ranks use them with their own share):

1. ``ResultsStore.check`` (in ``results``): what is done already; reads only.
2. ``prepare``: validate the spec, build and probe the base on a real image; writes nothing.
3. ``execute``: loop over images in groups, certify each group, hand the rows to a ``Sink``.

Each image's noise comes from a generator seeded by ``(seed, idx)``, so a run that is
interrupted and resumed, or split across processes, writes the same rows as one
uninterrupted run.  Everything is checked and loaded before any file is created.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffsmooth.errors import InputError
from diffsmooth.methods import MethodSpec, build_base, build_grid
from diffsmooth.results import ResultsStore, Row, Sink, StoreSet, environment, manifest_path, read_manifest
from diffsmooth.smoothing import SmoothedClassifier
from diffsmooth.stats import FIRST_LOOK

Images = Callable[[int], tuple[torch.Tensor, int]]
"""idx -> (image (C, H, W) with pixels in [0,1], label)."""

MODES = ("certify", "predict")
SAMPLINGS = ("fixed", "sequential")
SEQUENTIAL_COLUMNS = ("samples",)
"""Extra column of a sequential run's TSV: the estimation samples the image used (after Cohen's)."""


def _whole(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be a whole number >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class RunSpec:
    """Everything that decides a run's results (except which images it covers).

    ``mode`` is "certify" or "predict"; ``n0`` is unused by predict.  ``validate`` is the one
    check of these numbers, worded with the command line's option names.
    """

    mode: str
    method: MethodSpec
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    batch_size: int = 1000
    seed: int = 0
    split: str = "test"
    eps: tuple[float, ...] | None = None
    attack: dict[str, Any] | None = None
    bound: str = "cohen"
    sampling: str = "fixed"
    n_max: int | None = None
    radii: tuple[float, ...] | None = None
    max_radius: float | None = None
    min_radius: float = 0.0
    tolerance: float = 0.0

    def defaults(self) -> dict[str, Any]:
        """The settings' defaults, nested like ``to_dict``: a setting missing from a manifest written
        before it existed counts as its default when resuming."""
        from diffsmooth.methods import MethodSpec

        method = MethodSpec(self.method.method, self.method.dataset, self.method.sigma)
        return RunSpec(self.mode, method).to_dict()

    def to_dict(self) -> dict[str, Any]:
        out = {**asdict(self), "method": self.method.to_dict()}
        for name in ("eps", "radii"):
            if out[name] is not None:
                out[name] = list(out[name])
        return out

    def validate(self) -> None:
        self.method.validate()
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        _whole("--n0", self.n0, 1)
        _whole("--n", self.n, 1)
        _whole("--batch", self.batch_size, 1)
        _whole("--seed", self.seed, 0)
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 < self.alpha < 1:
            raise InputError(f"--alpha must lie strictly between 0 and 1 (e.g. 0.001), got {self.alpha}")
        from diffsmooth.smoothing import BOUNDS

        if self.bound not in BOUNDS:
            raise InputError(f"unknown --bound {self.bound!r}; choose one of: {', '.join(BOUNDS)}")
        if self.sampling not in SAMPLINGS:
            raise InputError(f"unknown --sampling {self.sampling!r}; choose one of: {', '.join(SAMPLINGS)}")
        if self.sampling == "sequential":
            if self.mode != "certify":
                raise InputError("--sampling sequential is for certify")
            if self.n_max is None:
                raise InputError("--sampling sequential needs --n-max, the most estimation samples an image may use")
            _whole("--n-max", self.n_max, 1)
            if self.bound != "cohen":
                raise InputError("--sampling sequential reads its own anytime-valid bound; use --bound cohen")
            from diffsmooth.smoothing import check_sequential_options

            check_sequential_options(self.method.sigma, self.radii, self.max_radius, self.min_radius, self.tolerance)
        elif any(v not in (None, 0.0) for v in (self.n_max, self.radii, self.max_radius, self.min_radius, self.tolerance)):
            raise InputError("--n-max, --radii, --max-radius, --min-radius and --tolerance need --sampling sequential")
        if (self.attack is None) != (self.eps is None):
            raise InputError("an attack run needs both eps and the attack settings")
        if self.attack is not None:
            from diffsmooth.attacks import AttackConfig
            from diffsmooth.attacks.empirical import check_eps_list

            if self.mode != "predict":
                raise InputError("an attack run predicts at the attacked points: mode must be 'predict'")
            check_eps_list(list(self.eps))
            AttackConfig(**self.attack)

    @property
    def samples_per_image(self) -> int:
        """Noise samples per image (at most, for sequential sampling)."""
        n = self.n_max if self.sampling == "sequential" else self.n
        return n + (self.n0 if self.mode == "certify" else 0)


def check_run(spec: RunSpec) -> None:
    """Validate a run spec (the model files are checked when loaded)."""
    spec.validate()


@dataclass
class RunReport:
    """What a run did in this process."""

    rows: list[Row] = field(default_factory=list)
    skipped: int = 0
    seconds: float = 0.0
    noise_samples: int = 0
    by_configuration: dict[str, list[Row]] = field(default_factory=dict)  # a grid's rows per configuration


@dataclass
class Prepared:
    """A run ready to execute: the smoothed classifier and the manifest's facts."""

    spec: RunSpec
    smoothed: SmoothedClassifier
    images: Images
    device: torch.device
    manifest: dict[str, Any]
    rank: int | None = None  # the noise stream's rank when processes share each image's samples
    labels: list[str] | None = None  # a grid's configurations, in the order of its scores


def generator_for(seed: int, idx: int, device: torch.device | str, rank: int | None = None) -> torch.Generator:
    """The noise generator of image ``idx`` under run seed ``seed``, on ``device``.

    ``rank``: the process's rank when several processes share each image's samples
    (``--split-samples``); each then draws from its own stream.
    """
    entropy = [int(seed), int(idx)] + ([] if rank is None else [int(rank)])
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state) & (2**63 - 1))


def select_indices(
    size: int, skip: int = 1, max_count: int | None = None, indices: Sequence[int] | None = None
) -> list[int]:
    """The dataset indices a run covers: every ``skip``-th (Cohen's ``--skip``), the first
    ``max_count`` of those (a count of images, unlike Cohen's ``--max``, which bounds the
    index), or the explicit ``indices``."""
    if indices:
        bad = [i for i in indices if not 0 <= i < size]
        if bad:
            raise InputError(f"--indices {bad[:5]} outside the dataset's 0..{size - 1}")
        return list(dict.fromkeys(indices))
    if skip < 1:
        raise InputError(f"--skip must be >= 1, got {skip}")
    chosen = list(range(0, size, skip))
    if max_count is not None:
        if max_count < 1:
            raise InputError(f"--max must be >= 1, got {max_count}")
        chosen = chosen[:max_count]
    return chosen


def resolve_batch_size(batch: int | str, method: MethodSpec, device: torch.device, image_shape: tuple[int, int, int],
                       resume_from: Path | None = None) -> int:
    """A number for ``--batch``: as given; for "auto" the one recorded by the run being resumed
    (``resume_from``, a results file), else the largest batch the base fits into free GPU memory."""
    if batch != "auto":
        return int(batch)
    if resume_from is not None and manifest_path(resume_from).is_file():
        return int(read_manifest(manifest_path(resume_from))["spec"]["batch_size"])
    from diffsmooth.fast import auto_batch_size

    # Probe an uncompiled base: compilation would specialise to every probed shape.
    probe = build_base(replace(method, compile=None, cuda_graphs=False), device)
    return auto_batch_size(probe, image_shape, device)


def prepare(
    spec: RunSpec,
    images: Images,
    probe_idx: int | None,
    *,
    num_classes: int,
    device: torch.device | str = "cpu",
    base: torch.nn.Module | None = None,
    manifest_extra: dict[str, Any] | None = None,
    grid: Sequence[MethodSpec] | None = None,
) -> Prepared:
    """Validate, build the base (from ``spec.method``, or a ``defenses.Grid`` of the ``grid``
    configurations, unless given) and run it once on image ``probe_idx``, so that models that do
    not fit the data fail before any file is written."""
    spec.validate()
    device = torch.device(device)
    labels = None if grid is None else [configuration_label(m) for m in grid]
    if base is None:
        base = (build_base(spec.method, device, static_batch=spec.batch_size) if grid is None
                else build_grid(grid, device, static_batch=spec.batch_size))
    if probe_idx is not None:
        from diffsmooth.fast import FastBase

        # The probe runs eagerly: a compiled base would specialise to its batch of one.
        _probe(base.base if isinstance(base, FastBase) else base, images(probe_idx)[0].to(device), num_classes)
    smoothed = SmoothedClassifier(base, num_classes, spec.method.sigma, bound=spec.bound)
    describe = base.describe() if hasattr(base, "describe") else {"type": type(base).__name__}
    if labels is not None:
        members = describe.pop("configurations")
        describe = {**describe, "configurations": dict(zip(labels, members))}
    manifest = {"base": describe, "environment": environment(device), **(manifest_extra or {})}
    return Prepared(spec, smoothed, images, device, manifest, labels=labels)


def configuration_label(method: MethodSpec) -> str:
    """A file-name-safe name that says a configuration's settings, e.g. ``diffsmooth_sigma0.5_m5_ls0.25_soft``."""
    label = f"{method.method}_sigma{method.sigma:g}"
    if method.method == "diffsmooth":
        label += f"_m{method.m}_ls{method.local_sigma:g}_{method.vote}"
        if method.local_noise != "fixed" or method.local_noise_seed != 42:
            label += f"_{method.local_noise}{method.local_noise_seed}"
    if method.classifier is not None:
        label += "_" + Path(method.classifier).name.split(".")[0]
    return label


def execute(prepared: Prepared, indices: Sequence[int], sink: Sink | dict[str, Sink] | None,
            progress: bool = True) -> RunReport:
    """Certify (or predict) ``indices`` in groups; each group's rows go to ``sink`` (a grid: one
    sink per configuration) as the group completes."""
    spec = prepared.spec
    report = RunReport()
    group = _group_size(spec)
    bar = _progress(len(indices), progress, spec.mode)
    try:
        for start in range(0, len(indices), group):
            chunk = indices[start : start + group]
            by_key = _run_group(prepared, chunk)
            for key, rows in by_key.items():
                if isinstance(sink, dict):
                    sink[key].write(rows)
                elif sink is not None:
                    sink.write(rows)
                if key is None:
                    report.rows += rows
                else:
                    report.by_configuration.setdefault(key, []).extend(rows)
            first = next(iter(by_key.values()))
            report.seconds += sum(r.seconds for r in first)
            if spec.sampling == "sequential":
                report.noise_samples += sum(spec.n0 + int(dict(r.extra)["samples"]) for r in first)
            else:
                report.noise_samples += len(chunk) * spec.samples_per_image
            if bar is not None:
                bar.update(len(chunk))
                bar.set_postfix(samples_per_s=f"{report.noise_samples / max(report.seconds, 1e-9):.0f}")
    finally:
        if bar is not None:
            bar.close()
    return report


def run_into(
    store: ResultsStore | StoreSet,
    spec: RunSpec,
    images: Images,
    indices: Sequence[int],
    *,
    num_classes: int,
    device: torch.device | str = "cpu",
    manifest_extra: dict[str, Any] | None = None,
    progress: bool = True,
    grid: Sequence[MethodSpec] | None = None,
    base: torch.nn.Module | None = None,
) -> RunReport:
    """The whole run in this process: check the store, prepare, execute into it."""
    done = store.check()
    todo = [i for i in indices if i not in done]
    prepared = prepare(spec, images, todo[0] if todo else None, num_classes=num_classes, device=device,
                       base=base, manifest_extra=manifest_extra, grid=grid)
    with store.writing(prepared.manifest) as sinks:
        report = execute(prepared, todo, sinks, progress)
    report.skipped = len(indices) - len(todo)
    return report


def run_grid(
    spec: RunSpec,
    methods: Sequence[MethodSpec],
    images: Images,
    indices: Sequence[int],
    out_dir: Path,
    *,
    num_classes: int,
    device: torch.device | str = "cpu",
    resume: bool = False,
    overwrite: bool = False,
    manifest_extra: dict[str, Any] | None = None,
    progress: bool = True,
) -> RunReport:
    """Certify ``indices`` under every configuration of ``methods`` from one noise stream into
    ``out_dir``: one results file + manifest per configuration (the ones a separate run with
    ``replace(spec, method=m)`` writes, row for row) and ``index.json``."""
    store = grid_store(spec, methods, out_dir, resume=resume, overwrite=overwrite)
    return run_into(store, spec, images, indices, num_classes=num_classes, device=device,
                    manifest_extra=manifest_extra, progress=progress, grid=methods)


def make_store(spec: RunSpec, out: Path, *, grid: Sequence[MethodSpec] | None = None, resume: bool = False,
               overwrite: bool = False) -> ResultsStore | StoreSet:
    """The files a run writes: one TSV, a grid's folder, or an attack's folder (one TSV per eps)."""
    if spec.attack is not None:
        return attack_store(spec, out, resume=resume, overwrite=overwrite)
    if grid is not None:
        return grid_store(spec, grid, out, resume=resume, overwrite=overwrite)
    columns = SEQUENTIAL_COLUMNS if spec.sampling == "sequential" else ()
    return ResultsStore(out, spec.to_dict(), resume=resume, overwrite=overwrite, columns=columns,
                        defaults=spec.defaults())


def grid_store(spec: RunSpec, methods: Sequence[MethodSpec], out_dir: Path, *, resume: bool,
               overwrite: bool) -> StoreSet:
    """The files of a grid run: per configuration, the spec a separate run would record."""
    if spec.mode != "certify":
        raise InputError("several configurations in one run are supported for certify only")
    if spec.sampling != "fixed":
        raise InputError("--sampling sequential certifies one configuration at a time; give one value per "
                         "method option with --out, or drop --sampling for the grid")
    specs = [replace(spec, method=m) for m in methods]
    for one in specs:
        one.validate()
    entries = {configuration_label(one.method): (configuration_label(one.method) + ".tsv", one.to_dict())
               for one in specs}
    if len(entries) != len(specs):
        raise InputError("two configurations of the grid are the same; give each setting once")
    return StoreSet(Path(out_dir), entries, resume=resume, overwrite=overwrite, defaults=spec.defaults())


ATTACK_COLUMNS = ("norm", "loss")
"""Extra columns of an attack's TSVs: the perturbation's l2 norm and the attack's final loss."""


def attack_label(eps: float) -> str:
    return f"eps{eps:g}"


def attack_store(spec: RunSpec, out_dir: Path, *, resume: bool, overwrite: bool) -> StoreSet:
    """An attack run's files: per eps, a PREDICT TSV (``idx label predict correct time norm loss``)
    of the attacked points; the spec records all radii (an image's radii share its generator)."""
    spec.validate()
    entries = {attack_label(e): (f"attack_{attack_label(e)}.tsv", {**spec.to_dict(), "file_eps": e})
               for e in spec.eps}
    return StoreSet(Path(out_dir), entries, resume=resume, overwrite=overwrite, columns=ATTACK_COLUMNS,
                    defaults=spec.defaults())


def run(
    spec: RunSpec,
    images: Images,
    indices: Sequence[int],
    out: Path,
    *,
    num_classes: int,
    device: torch.device | str = "cpu",
    resume: bool = False,
    overwrite: bool = False,
    base: torch.nn.Module | None = None,
    manifest_extra: dict[str, Any] | None = None,
    progress: bool = True,
) -> RunReport:
    """Certify (or predict, or attack) ``images(idx)`` for each of ``indices`` into ``out`` (a
    results file, or a folder for an attack); indices already there are skipped when resuming."""
    spec.validate()
    return run_into(make_store(spec, out, resume=resume, overwrite=overwrite), spec, images, indices,
                    num_classes=num_classes, device=device, manifest_extra=manifest_extra, progress=progress,
                    base=base)


def _probe(base: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, num_classes: int) -> None:
    try:
        with torch.inference_mode():
            out = base(x.unsqueeze(0))
    except InputError:
        raise
    except (RuntimeError, MemoryError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if isinstance(err, MemoryError) or "out of memory" in first.lower() or "can't allocate" in first.lower():
            raise InputError(f"out of memory running the models on one image ({first}); "
                             "use a smaller --m or a smaller model") from None
        raise InputError(
            f"the models do not fit the dataset's images {tuple(x.shape)}: {first}; "
            "check that the denoiser and classifier were trained for this dataset"
        ) from None
    if out.shape not in ((1, num_classes), (1,)) and not (out.dim() == 3 and out.shape[::2] == (1, num_classes)):
        raise InputError(
            f"the base classifier gives {tuple(out.shape[1:])} scores per image but the dataset has "
            f"{num_classes} classes; use a classifier trained on this dataset"
        )
    if out.is_floating_point() and not bool(torch.isfinite(out).all()):
        raise InputError("the base classifier returns NaN or infinite scores on a real image; its weights or "
                         "outputs are broken (check the checkpoints with torch.isfinite)")


def _group_size(spec: RunSpec) -> int:
    """Images certified together: enough to fill a batch when n is small, else one.  Sequential
    sampling takes as many as fill a batch at its first look, so that images that
    stop early leave batches the others keep full."""
    if spec.sampling == "sequential":
        return max(1, spec.batch_size // FIRST_LOOK)
    per_image = spec.n if spec.mode == "predict" else max(spec.n0, spec.n)
    return max(1, spec.batch_size // per_image)


def _run_group(prepared: Prepared, indices: Sequence[int]) -> dict[str | None, list[Row]]:
    spec, device = prepared.spec, prepared.device
    loaded = [prepared.images(i) for i in indices]
    xs = torch.stack([x for x, _ in loaded]).to(device)
    gens = [generator_for(spec.seed, i, device, prepared.rank) for i in indices]
    start = time.perf_counter()
    if spec.attack is not None:
        return _attack_rows(prepared, indices, loaded, xs, gens)
    if spec.sampling == "sequential":
        results = prepared.smoothed.certify_sequential_batch(
            xs, spec.n0, spec.n_max, spec.alpha, spec.batch_size, gens, radii=spec.radii, max_radius=spec.max_radius,
            min_radius=spec.min_radius, tolerance=spec.tolerance)
        rows = _rows(indices, loaded, results, (time.perf_counter() - start) / len(indices))
        return {None: [replace(row, extra=(("samples", str(res.n)),)) for row, res in zip(rows, results)]}
    if prepared.labels is not None:
        grid = prepared.smoothed.certify_grid_batch(xs, spec.n0, spec.n, spec.alpha, spec.batch_size, gens)
        seconds = (time.perf_counter() - start) / len(indices)
        return {label: _rows(indices, loaded, [per_image[k] for per_image in grid], seconds)
                for k, label in enumerate(prepared.labels)}
    if spec.mode == "certify":
        results = prepared.smoothed.certify_batch(xs, spec.n0, spec.n, spec.alpha, spec.batch_size, gens)
    else:
        results = prepared.smoothed.predict_batch(xs, spec.n, spec.alpha, spec.batch_size, gens)
    return {None: _rows(indices, loaded, results, (time.perf_counter() - start) / len(indices))}


def _rows(indices: Sequence[int], loaded: Sequence[tuple[torch.Tensor, int]], results: Sequence[Any],
          seconds: float) -> list[Row]:
    rows = []
    for idx, (_, label), res in zip(indices, loaded, results):
        predict = -1 if res.prediction is None else res.prediction
        radius = getattr(res, "radius", None)
        rows.append(Row(idx, int(label), predict, int(predict == int(label)), seconds, radius))
    return rows


def _attack_rows(prepared: Prepared, indices: Sequence[int], loaded: Sequence[tuple[torch.Tensor, int]],
                 xs: torch.Tensor, gens: list[torch.Generator]) -> dict[str | None, list[Row]]:
    from diffsmooth.attacks import AttackConfig, empirical_accuracy

    spec = prepared.spec
    records = empirical_accuracy(prepared.smoothed, xs, [int(y) for _, y in loaded], list(spec.eps),
                                 AttackConfig(**spec.attack), n=spec.n, alpha=spec.alpha, batch_size=spec.batch_size,
                                 generators=gens, indices=list(indices))
    rows: dict[str | None, list[Row]] = {attack_label(e): [] for e in spec.eps}
    for r in records:
        predict = -1 if r.predict is None else int(r.predict)
        rows[attack_label(r.eps)].append(Row(r.idx, r.label, predict, int(predict == r.label), r.seconds, None,
                                             (("norm", f"{r.perturbation_norm:.6g}"), ("loss", f"{r.loss:.6g}"))))
    return rows


def _progress(total: int, enabled: bool, mode: str):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc=mode, dynamic_ncols=True)
