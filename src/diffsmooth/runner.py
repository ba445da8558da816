"""Certify or predict a dataset's images into results files: one entry, ``run(job)``.

A run reads top-down, each step a call into a side room that does not call back:

1. ``placement.locate``: which process this is (torchrun) and which images or samples it takes;
2. the store (``results``): what is done already (read only), and later the files it writes;
3. ``prepare``: validate, build the base (``methods``) and probe it on a real image (writes nothing);
4. ``execute``: certify the images in groups (``smoothing``), each group's rows to the store as
   the group completes;
5. under torchrun, rank 0 merges the part files (``placement``).

Each image's noise comes from a generator seeded by ``(seed, idx)`` (``sampling.generator_for``),
so a run that is interrupted and resumed, or split across processes, writes the same rows as one
uninterrupted run.  Everything is checked and loaded before any file is created.  What is done to
each group of images is a ``Task``: CERTIFY / PREDICT of a ``RunSpec`` here, an attack in
``attacks.run``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch

from diffsmooth import placement, validate
from diffsmooth.methods import MethodSpec, build_base, build_grid
from diffsmooth.results import Row, configuration_label, environment, grid_store, radii_record, run_store
from diffsmooth.sampling import generator_for
from diffsmooth.sequential import SequentialOptions
from diffsmooth.smoothing import BOUNDS, SmoothedClassifier
from diffsmooth.stats import FIRST_LOOK, separate_pb_alphas
from diffsmooth.validate import InputError

Images = Callable[[int], tuple[torch.Tensor, int]]
"""idx -> (image (C, H, W) with pixels in [0,1], label)."""

MODES = ("certify", "predict")
SAMPLINGS = ("fixed", "sequential")


@dataclass(frozen=True)
class RunSpec:
    """Everything that decides a run's results (except which images it covers).

    ``mode`` is "certify" or "predict"; ``n0`` is unused by predict.  ``validate`` is the one
    check of these numbers, worded with the command line's option names; the command line
    takes its defaults from these fields.
    """

    mode: str
    method: MethodSpec
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    batch_size: int = 1000
    seed: int = 0
    split: str = "test"
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
        method = MethodSpec(self.method.method, self.method.dataset, self.method.sigma)
        return RunSpec(self.mode, method).to_dict()

    def to_dict(self) -> dict[str, Any]:
        out = {**asdict(self), "method": self.method.to_dict()}
        if out["radii"] is not None:
            out["radii"] = radii_record(out["radii"])
        return out

    def validate(self) -> None:
        self.method.validate()
        validate.choice(self.mode, "mode", MODES)
        validate.whole(self.n0, "--n0", 1, validate.MAX_SAMPLES)
        validate.whole(self.n, "--n", 1, validate.MAX_SAMPLES)
        validate.whole(self.batch_size, "--batch")
        validate.seed(self.seed, "--seed")
        validate.alpha(self.alpha, "--alpha")
        validate.choice(self.bound, "--bound", BOUNDS)
        validate.choice(self.sampling, "--sampling", SAMPLINGS)
        if self.sampling == "sequential":
            if self.mode != "certify":
                raise InputError("--sampling sequential is for certify")
            if self.n_max is None:
                raise InputError("--sampling sequential needs --n-max, the most estimation samples an image may use")
            validate.whole(self.n_max, "--n-max", 1, validate.MAX_SAMPLES)
            if self.bound != "cohen":
                raise InputError("--sampling sequential reads its own anytime-valid bound; use --bound cohen")
            self.sequential_options()
        elif (any(v is not None for v in (self.n_max, self.radii, self.max_radius))
              or self.min_radius != 0.0 or self.tolerance != 0.0):
            raise InputError("--n-max, --radii, --max-radius, --min-radius and --tolerance need --sampling sequential")

    def sequential_options(self) -> SequentialOptions:
        """The stopping options of a sequential run (checked)."""
        return SequentialOptions(radii=self.radii, max_radius=self.max_radius, min_radius=self.min_radius,
                                 tolerance=self.tolerance)

    @property
    def samples_per_image(self) -> int:
        """Noise samples per image (at most, for sequential sampling)."""
        n = self.n_max if self.sampling == "sequential" else self.n
        return n + (self.n0 if self.mode == "certify" else 0)

    @property
    def group_size(self) -> int:
        """Images certified together: enough to fill a batch when n is small, else one.  Sequential
        sampling takes as many as fill a batch at its first look, so that images that stop early
        leave batches the others keep full."""
        if self.sampling == "sequential":
            return max(1, self.batch_size // FIRST_LOOK)
        per_image = self.n if self.mode == "predict" else max(self.n0, self.n)
        return max(1, self.batch_size // per_image)


@dataclass
class Group:
    """Images certified together: dataset ``indices``, ``labels``, images ``xs`` (K, C, H, W) in
    [0,1] on the run's device, and each image's noise generator."""

    indices: list[int]
    labels: list[int]
    xs: torch.Tensor
    generators: list[torch.Generator]


class Task(Protocol):
    """What a run does with each group of images, and which files it writes."""

    spec: RunSpec  # the noise seed, batch, bound and method (the base) of the run
    grid: tuple[MethodSpec, ...] | None  # several configurations from one noise stream, or None
    shares_samples: bool  # whether processes may share each image's samples (--split-samples)

    def validate(self) -> None: ...

    def store(self, out: Path, *, resume: bool, overwrite: bool) -> placement.Store: ...

    def rows(self, smoothed: SmoothedClassifier, group: Group) -> dict[str | None, list[Row]]: ...


@dataclass(frozen=True)
class CertifyTask:
    """CERTIFY (fixed or sequential) or PREDICT of ``spec``; with ``grid``, CERTIFY of every
    configuration from one noise stream into one file each."""

    spec: RunSpec
    grid: tuple[MethodSpec, ...] | None = None
    shares_samples: bool = True

    def validate(self) -> None:
        self.spec.validate()
        if self.grid is None:
            return
        if self.spec.mode != "certify":
            raise InputError("several configurations in one run are supported for certify only")
        for method in self.grid:
            replace(self.spec, method=method).validate()
            if self.spec.sampling == "sequential" and (method.method == "densepure" or (
                    method.method == "diffsmooth" and method.local_noise == "fresh")):
                # Their noise is drawn per call: a configuration's rows would depend on which images
                # still run beside it, so they could not equal its own sequential run.
                raise InputError("--sampling sequential with several configurations needs bases whose scores depend "
                                 "on each noisy image alone: drop --method densepure and --local-noise fresh from "
                                 "the grid, or certify them with --out one at a time")

    def store(self, out: Path, *, resume: bool, overwrite: bool) -> placement.Store:
        if self.grid is None:
            return run_store(self.spec.to_dict(), out, resume=resume, overwrite=overwrite,
                             defaults=self.spec.defaults())
        return grid_store([replace(self.spec, method=m).to_dict() for m in self.grid], out, resume=resume,
                          overwrite=overwrite, defaults=self.spec.defaults())

    def rows(self, smoothed: SmoothedClassifier, group: Group) -> dict[str | None, list[Row]]:
        spec, g = self.spec, group
        start = time.perf_counter()
        if spec.sampling == "sequential":
            args = (g.xs, spec.n0, spec.n_max, spec.alpha, spec.batch_size, g.generators, spec.sequential_options())
            if self.grid is None:
                by_key = {None: smoothed.certify_sequential_batch(*args)}
            else:
                grid = smoothed.certify_sequential_grid_batch(*args)
                by_key = {label: [per_image[k] for per_image in grid] for k, label in enumerate(_labels(self.grid))}
            seconds = (time.perf_counter() - start) / len(g.indices)
            return {key: [replace(row, extra=(("samples", str(res.n)),))
                          for row, res in zip(_rows(g, results, seconds), results)]
                    for key, results in by_key.items()}
        if self.grid is not None:
            grid = smoothed.certify_grid_batch(g.xs, spec.n0, spec.n, spec.alpha, spec.batch_size, g.generators)
            seconds = (time.perf_counter() - start) / len(g.indices)
            return {label: _rows(g, [per_image[k] for per_image in grid], seconds)
                    for k, label in enumerate(_labels(self.grid))}
        if spec.mode == "certify":
            results = smoothed.certify_batch(g.xs, spec.n0, spec.n, spec.alpha, spec.batch_size, g.generators)
        else:
            results = smoothed.predict_batch(g.xs, spec.n, spec.alpha, spec.batch_size, g.generators)
        return {None: _rows(g, results, (time.perf_counter() - start) / len(g.indices))}


def _labels(grid: Sequence[MethodSpec]) -> list[str]:
    return [configuration_label(m.to_dict()) for m in grid]


def _rows(group: Group, results: Sequence[Any], seconds: float) -> list[Row]:
    rows = []
    for idx, label, res in zip(group.indices, group.labels, results):
        predict = -1 if res.prediction is None else res.prediction
        rows.append(Row(idx, label, predict, int(predict == label), seconds, getattr(res, "radius", None)))
    return rows


@dataclass(frozen=True)
class Job:
    """One run: what to compute (``spec``, with ``grid`` for several configurations written into the
    folder ``out``; or a ``Task`` such as an attack), on which images, into which files.

    ``images(idx)`` gives (image (C, H, W) in [0,1], label) for each of ``indices``; ``base``
    certifies a ready base classifier instead of building ``spec.method``'s (the manifest then
    records its ``describe()``); ``resume`` / ``overwrite`` continue or replace existing files;
    ``manifest_extra`` is added to every manifest; ``split_samples``: under torchrun, processes
    share each image's samples instead of the images; ``cpu_workers``: row-block workers of a built
    base on the CPU (``diffsmooth.workers``; None: ``methods.default_workers``).
    """

    spec: RunSpec | Task
    images: Images
    indices: Sequence[int]
    out: Path
    num_classes: int
    device: torch.device | str = "cpu"
    grid: Sequence[MethodSpec] | None = None
    base: Callable[[torch.Tensor], torch.Tensor] | None = None
    resume: bool = False
    overwrite: bool = False
    manifest_extra: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    split_samples: bool = False
    cpu_workers: int | None = None


@dataclass
class RunReport:
    """What a run did in this process."""

    rows: list[Row] = field(default_factory=list)
    skipped: int = 0
    seconds: float = 0.0
    noise_samples: int = 0
    by_configuration: dict[str, list[Row]] = field(default_factory=dict)  # a grid's (attack's) rows per file

    def add(self, key: str | None, rows: list[Row]) -> None:
        if key is None:
            self.rows += rows
        else:
            self.by_configuration.setdefault(key, []).extend(rows)


@dataclass
class Prepared:
    """A run ready to execute: its task, the smoothed classifier and the manifest's facts."""

    task: Task
    smoothed: SmoothedClassifier
    images: Images
    device: torch.device
    manifest: dict[str, Any]
    noise_rank: int | None = None  # the noise stream's rank when processes share each image's samples


def run(job: Job) -> RunReport | None:
    """Certify (or predict, or run the task of ``job`` on) the images of ``job`` into ``job.out``; images
    already there are skipped when resuming.  Returns this process's report (None on torchrun
    ranks other than 0)."""
    grid = None if job.grid is None else tuple(job.grid)
    task = CertifyTask(job.spec, grid) if isinstance(job.spec, RunSpec) else job.spec
    task.validate()
    store = task.store(Path(job.out), resume=job.resume, overwrite=job.overwrite)
    place = placement.locate(store, job.device, job.split_samples)
    with place.session():
        with place.checks():
            done = place.check_store(store, task.shares_samples)
            todo = [i for i in job.indices if i not in done]
            share = place.take(todo)
            probe = share[0] if share else (todo[0] if todo else None)
            extra = {**job.manifest_extra, **({"distributed": d} if (d := place.describe()) else {})}
            prepared = prepare(job, task, probe, place.device, extra)
            prepared.smoothed = place.shard(prepared.smoothed)
            prepared.noise_rank = place.noise_rank
        started = time.perf_counter()
        with place.writing(store, prepared.manifest) as sinks:
            report = execute(prepared, share, sinks, job.progress and place.main)
        if not place.main:
            return None
        merged = place.merge(store, job.indices, time.perf_counter() - started)
    if merged is not None:  # the report holds every fresh row, whichever rank certified it
        fresh = set(todo)
        report = RunReport(seconds=time.perf_counter() - started,
                           noise_samples=len(todo) * task.spec.samples_per_image)
        for key, rows in merged.items():
            report.add(key, [row for row in rows if row.idx in fresh])
    report.skipped = len(job.indices) - len(todo)
    return report


def prepare(job: Job, task: Task, probe_idx: int | None, device: torch.device,
            manifest_extra: dict[str, Any]) -> Prepared:
    """Build the base (``job.base``, or ``task.spec.method``'s, or a ``defenses.Grid`` of the
    grid's configurations) and run it once on image ``probe_idx``, so that models that do not fit
    the data fail before any file is written."""
    spec = task.spec
    grid = task.grid
    base = job.base
    if base is None:
        base = (build_base(spec.method, device, static_batch=spec.batch_size, workers=job.cpu_workers)
                if grid is None else build_grid(grid, device, static_batch=spec.batch_size, workers=job.cpu_workers))
    if probe_idx is not None:
        from diffsmooth.fast import FastBase

        # The probe runs eagerly: a compiled base would specialise to its batch of one.
        _probe(base.base if isinstance(base, FastBase) else base, job.images(probe_idx)[0].to(device), job.num_classes)
    smoothed = SmoothedClassifier(base, job.num_classes, spec.method.sigma, bound=spec.bound)
    if spec.bound == "separate-pb":
        separate_pb_alphas(spec.alpha, job.num_classes)  # a share that underflows is refused before any file
    describe = base.describe() if hasattr(base, "describe") else {"type": type(base).__name__}
    if grid is not None:
        describe = {**describe, "configurations": dict(zip(_labels(grid), describe.pop("configurations")))}
    manifest = {"base": describe, "environment": {**environment(device), "cpu_workers": getattr(base, "workers", 1)},
                **manifest_extra}
    return Prepared(task, smoothed, job.images, device, manifest)


def execute(prepared: Prepared, indices: Sequence[int], sinks: placement.Sinks, progress: bool = True) -> RunReport:
    """Run the task on ``indices`` in groups; each group's rows go to ``sinks`` (one sink per file
    of a grid or an attack) as the group completes."""
    spec = prepared.task.spec
    report = RunReport()
    group_size = spec.group_size
    bar = _progress(len(indices), progress, spec.mode)
    try:
        for start in range(0, len(indices), group_size):
            chunk = list(indices[start : start + group_size])
            by_key = prepared.task.rows(prepared.smoothed, _group(prepared, chunk))
            for key, rows in by_key.items():
                if sinks is not None:
                    (sinks[key] if isinstance(sinks, dict) else sinks).write(rows)
                report.add(key, rows)
            first = next(iter(by_key.values()))
            report.seconds += sum(r.seconds for r in first)
            if spec.sampling == "sequential":  # an image draws while any of its configurations runs
                used = zip(*([int(dict(r.extra)["samples"]) for r in rows] for rows in by_key.values()))
                report.noise_samples += sum(spec.n0 + max(per_image) for per_image in used)
            else:
                report.noise_samples += len(chunk) * spec.samples_per_image
            if bar is not None:
                bar.update(len(chunk))
                bar.set_postfix(samples_per_s=f"{report.noise_samples / max(report.seconds, 1e-9):.0f}")
    finally:
        if bar is not None:
            bar.close()
    return report


def _group(prepared: Prepared, indices: list[int]) -> Group:
    loaded = [prepared.images(i) for i in indices]
    xs = torch.stack([x for x, _ in loaded]).to(prepared.device)
    gens = [generator_for(prepared.task.spec.seed, i, prepared.device, prepared.noise_rank) for i in indices]
    return Group(indices, [int(y) for _, y in loaded], xs, gens)


def select_indices(size: int, skip: int = 1, max_count: int | None = None,
                   indices: Sequence[int] | None = None) -> list[int]:
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
                       recorded: dict[str, Any] | None = None) -> int:
    """A number for ``--batch``: as given; for "auto" the one ``recorded`` by the run being resumed
    (its manifest's spec), else the largest batch the base fits into free GPU memory."""
    if batch != "auto":
        return int(batch)
    if recorded is not None:
        return int(recorded["batch_size"])
    from diffsmooth.fast import auto_batch_size

    # Probe an uncompiled base: compilation would specialise to every probed shape.
    probe = build_base(replace(method, compile=None, cuda_graphs=False), device)
    return auto_batch_size(probe, image_shape, device)


def _probe(base: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, num_classes: int) -> None:
    try:
        with torch.inference_mode():
            out = base(x.unsqueeze(0))
    except InputError:
        raise
    except (RuntimeError, MemoryError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if validate.out_of_memory(err):
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
                         "outputs are broken (check the checkpoint with torch.isfinite)")


def _progress(total: int, enabled: bool, mode: str):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc=mode, dynamic_ncols=True)
