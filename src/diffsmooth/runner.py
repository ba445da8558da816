"""Certify or predict a dataset's images into a resumable results file.

Each image's noise comes from a generator seeded by ``(seed, idx)``, so a run
that is interrupted and resumed, or split across processes, writes the same
rows as one uninterrupted run.  Everything is checked and loaded before the
results file is created: bad input leaves no file behind.
"""

from __future__ import annotations

import contextlib
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffsmooth.errors import InputError
from diffsmooth.methods import MethodSpec, build_base, validate
from diffsmooth.results import ResultsWriter, Row, manifest_path, read_manifest, read_rows, write_manifest
from diffsmooth.smoothing import SmoothedClassifier


@dataclass(frozen=True)
class RunSpec:
    """Everything that decides a run's results (except which images it covers).

    ``mode`` is "certify" or "predict"; ``n0`` is unused by predict.
    """

    mode: str
    method: MethodSpec
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    batch_size: int = 1000
    seed: int = 0
    split: str = "test"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "method": self.method.to_dict()}


@dataclass
class RunReport:
    """What a finished run did."""

    rows: list[Row] = field(default_factory=list)
    skipped: int = 0
    seconds: float = 0.0
    noise_samples: int = 0


def generator_for(seed: int, idx: int, device: torch.device | str, rank: int | None = None) -> torch.Generator:
    """The noise generator of image ``idx`` under run seed ``seed``, on ``device``.

    ``rank``: the process's rank when several processes share each image's
    samples (``--split-samples``); each then draws from its own stream.
    """
    entropy = [int(seed), int(idx)] + ([] if rank is None else [int(rank)])
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state) & (2**63 - 1))


def check_run(spec: RunSpec) -> None:
    """Validate the numbers of a run spec (the model files are checked when loaded)."""
    validate(spec.method)
    if spec.mode not in ("certify", "predict"):
        raise InputError(f"mode must be 'certify' or 'predict', got {spec.mode!r}")
    for name in ("n0", "n", "batch_size"):
        value = getattr(spec, name)
        if value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be a whole number >= 1, got {value}")
    if not (0 < spec.alpha < 1):
        raise InputError(f"--alpha must lie strictly between 0 and 1 (e.g. 0.001), got {spec.alpha}")


def select_indices(
    size: int, skip: int = 1, max_count: int | None = None, indices: Sequence[int] | None = None
) -> list[int]:
    """The dataset indices a run covers: every ``skip``-th (Cohen's ``--skip``), the
    first ``max_count`` of those, or the explicit ``indices``."""
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


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, commit and device for the manifest."""
    import diffsmooth

    info: dict[str, Any] = {
        "diffsmooth": diffsmooth.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
    }
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


def prepare_output(out: Path, spec: RunSpec, resume: bool, overwrite: bool) -> set[int]:
    """Check the results file against resume/overwrite; returns the indices already done.

    Writes nothing: the caller creates the files only once everything is loaded.
    """
    out = Path(out)
    if resume and overwrite:
        raise InputError("--resume and --overwrite exclude each other; pick one")
    if not out.parent.is_dir():
        raise InputError(f"output folder {out.parent} does not exist; create it first")
    if not out.exists():
        return set()
    if overwrite:
        return set()
    if not resume:
        raise InputError(f"{out} exists; pass --resume to continue it or --overwrite to replace it")
    mode, rows = read_rows(out)
    old = read_manifest(manifest_path(out)).get("spec", {})
    new = spec.to_dict()
    differ = sorted(_diff(old, new))
    if mode != spec.mode or differ:
        raise InputError(
            f"cannot resume {out}: it was written with different settings ({', '.join(differ) or 'mode'}); "
            "use the same settings, a new --out, or --overwrite"
        )
    return {row.idx for row in rows}


def _diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Names of the settings that differ.  A setting absent from an older manifest was
    added later, switched off (False/None), so it matches a new run that leaves it off."""
    out = []
    for key in set(old) | set(new):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b and not (key not in old and b in (False, None)):
            out.append(f"{prefix}{key}")
    return out


def run(
    spec: RunSpec,
    images: Callable[[int], tuple[torch.Tensor, int]],
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
    reduce_counts: Callable[[torch.Tensor], torch.Tensor] | None = None,
    shard: tuple[int, int] | None = None,
    on_ready: Callable[[], None] | None = None,
    write: bool = True,
) -> RunReport:
    """Certify (or predict) ``images(idx)`` for each of ``indices`` into ``out``.

    Args:
        spec: the run's settings.
        images: idx -> (image (C, H, W) in [0,1], label).
        indices: dataset indices to cover, in order; those already in ``out`` are
            skipped when resuming.
        out: results TSV; its manifest is ``out`` + ".json".
        num_classes: classes of the base classifier.
        base: the base classifier, built from ``spec.method`` when None.
        manifest_extra: more JSON-able facts for the manifest (dataset, argv ...).
        reduce_counts, shard: see ``SmoothedClassifier``; make several processes
            share each image's samples (``shard`` = (rank, world size)); the
            rank also picks the noise stream (``generator_for``).
        on_ready: called once every check has passed and the models are loaded,
            just before any file is written (torchrun ranks agree there).
        write: False runs the images without touching ``out`` (the ranks other
            than 0 when they share samples); the checks still read it.
    """
    check_run(spec)
    device = torch.device(device)
    out = Path(out)
    done = prepare_output(out, spec, resume, overwrite)
    todo = [i for i in indices if i not in done]
    if base is None:
        base = build_base(spec.method, device)
    if todo:
        _probe(base, images(todo[0])[0].to(device), num_classes)
    smoothed = SmoothedClassifier(base, num_classes, spec.method.sigma, reduce_counts=reduce_counts, shard=shard)
    describe = base.describe() if hasattr(base, "describe") else {"type": type(base).__name__}
    manifest = {
        "spec": spec.to_dict(),
        "base": describe,
        "environment": environment(device),
        **(manifest_extra or {}),
    }
    if on_ready is not None:
        on_ready()
    # Every check has passed: only now are files created.
    mpath = manifest_path(out)
    if write:
        write_manifest(mpath, {**manifest, "status": "running"})
    report = RunReport(skipped=len(indices) - len(todo))
    group = _group_size(spec)
    bar = _progress(len(todo), progress, spec.mode)
    rank = None if shard is None else shard[0]
    writing = ResultsWriter(out, spec.mode, resume=resume and bool(done)) if write else contextlib.nullcontext()
    with writing as writer:
        for start in range(0, len(todo), group):
            batch_idx = todo[start : start + group]
            rows = _run_group(smoothed, spec, images, batch_idx, device, rank)
            if writer is not None:
                writer.write(rows)
            report.rows += rows
            report.seconds += sum(r.seconds for r in rows)
            report.noise_samples += len(rows) * (spec.n + (spec.n0 if spec.mode == "certify" else 0))
            if bar is not None:
                bar.update(len(rows))
                bar.set_postfix(samples_per_s=f"{report.noise_samples / max(report.seconds, 1e-9):.0f}")
    if bar is not None:
        bar.close()
    throughput = {
        "images": len(report.rows),
        "seconds": report.seconds,
        "noise_samples_per_second": report.noise_samples / report.seconds if report.seconds else None,
        "seconds_per_image": report.seconds / len(report.rows) if report.rows else None,
    }
    if write:
        write_manifest(mpath, {**manifest, "status": "finished", "throughput": throughput})
    return report


def _probe(base: torch.nn.Module, x: torch.Tensor, num_classes: int) -> None:
    """Run the base once on a real image, so that models that do not fit the data
    fail before any file is written."""
    try:
        with torch.inference_mode():
            out = base(x.unsqueeze(0))
    except InputError:
        raise
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise InputError(
            f"the models do not fit the dataset's images {tuple(x.shape)}: {first}; "
            "check that the denoiser and classifier were trained for this dataset"
        ) from None
    if out.shape not in ((1, num_classes), (1,)):
        raise InputError(
            f"the base classifier gives {tuple(out.shape[1:])} scores per image but the dataset has "
            f"{num_classes} classes; use a classifier trained on this dataset"
        )


def _group_size(spec: RunSpec) -> int:
    """Images certified together: enough to fill a batch when n is small, else one
    (so a crash loses at most the images of one group)."""
    per_image = spec.n if spec.mode == "predict" else max(spec.n0, spec.n)
    return max(1, spec.batch_size // per_image)


def _run_group(
    smoothed: SmoothedClassifier,
    spec: RunSpec,
    images: Callable[[int], tuple[torch.Tensor, int]],
    indices: Sequence[int],
    device: torch.device,
    rank: int | None = None,
) -> list[Row]:
    loaded = [images(i) for i in indices]
    xs = torch.stack([x for x, _ in loaded]).to(device)
    gens = [generator_for(spec.seed, i, device, rank) for i in indices]
    start = time.perf_counter()
    if spec.mode == "certify":
        results = smoothed.certify_batch(xs, spec.n0, spec.n, spec.alpha, spec.batch_size, gens)
    else:
        results = smoothed.predict_batch(xs, spec.n, spec.alpha, spec.batch_size, gens)
    seconds = (time.perf_counter() - start) / len(indices)
    rows = []
    for idx, (_, label), res in zip(indices, loaded, results):
        predict = -1 if res.prediction is None else res.prediction
        radius = getattr(res, "radius", None)
        rows.append(Row(idx, int(label), predict, int(predict == int(label)), seconds, radius))
    return rows


def _progress(total: int, enabled: bool, mode: str):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc=mode, dynamic_ncols=True)

