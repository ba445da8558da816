"""Certification across processes launched by torchrun (one process per GPU, any number of nodes).

Two ways to share the work:

* images (default): rank ``r`` of ``K`` certifies ``todo[r::K]`` into its own part
  file ``OUT.part<r>`` (same crash-safe format and manifest as ``OUT``); when all
  ranks finish, rank 0 merges every part into ``OUT`` sorted by idx and removes
  the parts.  Noise is seeded per (seed, idx), so the merged rows equal those of a
  single-process run whatever ``K``.
* samples (``--split-samples``): every rank runs every image, drawing its share of
  the ``n0`` and ``n`` samples from a stream seeded by (seed, idx, rank); the counts
  are summed with an all-reduce before each decision.  Only rank 0 writes ``OUT``.

Resuming reads what is done from ``OUT`` and from every part file present (also
those of a run with another ``K``), so a dead rank loses only its image in
flight.  Every file is read before any is written, and the ranks agree by a
collective on whether all checks passed: an error on one rank ends all of them.
The part files must lie on a file system that all nodes share.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from diffsmooth.errors import InputError
from diffsmooth.results import Row, manifest_path, read_manifest, read_rows, write_manifest, write_results
from diffsmooth.runner import RunReport, RunSpec, prepare_output, run

# Ranks finish their shares at different times and wait for the slowest at the last
# agreement; a dead peer is not waited for, because torchrun stops the whole group
# when one process fails.  So the timeout only has to outlast honest imbalance.
TIMEOUT = timedelta(hours=24)

# Test-only hook: "RANK:K" makes that rank exit abruptly (as if killed) once it has
# written K rows.  Used by tests/test_distributed.py to check crash recovery.
TEST_CRASH_ENV = "DIFFSMOOTH_TEST_CRASH_AFTER"

Images = Callable[[int], tuple[torch.Tensor, int]]


@dataclass(frozen=True)
class Context:
    """Where this process sits in a torchrun launch (rank 0 of 1 outside torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def context() -> Context:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK)."""
    try:
        ctx = Context(
            rank=int(os.environ.get("RANK", "0")),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )
    except ValueError:
        raise InputError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers; launch with torchrun") from None
    if not 0 <= ctx.rank < ctx.world_size:
        raise InputError(f"RANK={ctx.rank} outside 0..WORLD_SIZE-1={ctx.world_size - 1}; launch with torchrun")
    return ctx


def part_path(out: Path, rank: int) -> Path:
    """The part file that rank ``rank`` writes for results file ``out``."""
    out = Path(out)
    return out.with_name(f"{out.name}.part{rank}")


def part_paths(out: Path) -> list[Path]:
    """Every part file of ``out`` present now (of any earlier world size), by rank."""
    out = Path(out)
    if not out.parent.is_dir():
        return []
    pattern = re.compile(re.escape(out.name) + r"\.part(\d+)")
    found = [(int(m.group(1)), p) for p in out.parent.iterdir() if (m := pattern.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def pin_device(device: torch.device, local_rank: int) -> torch.device:
    """``cuda`` without an index becomes ``cuda:LOCAL_RANK`` (one GPU per process); an
    explicit index is kept.  Makes it the current CUDA device."""
    if device.type == "cuda" and device.index is None:
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise InputError(
                f"LOCAL_RANK {local_rank} but only {count} GPU(s) visible; use --nproc-per-node {count} or less"
            )
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def run_maybe_distributed(
    spec: RunSpec,
    images: Images,
    indices: Sequence[int],
    out: Path,
    *,
    num_classes: int,
    device: torch.device,
    resume: bool,
    overwrite: bool,
    manifest_extra: dict[str, Any] | None,
    progress: bool,
    split_samples: bool = False,
) -> RunReport | None:
    """``runner.run`` in one process, or this rank's part of it under torchrun.

    Returns the run's report on rank 0 and None on the other ranks.  A single
    process that finds part files of an interrupted torchrun run resumes and
    merges them like a world of size 1.
    """
    out = Path(out)
    ctx = context()
    if ctx.world_size == 1 and not part_paths(out):
        return run(spec, images, indices, out, num_classes=num_classes, device=device, resume=resume,
                   overwrite=overwrite, manifest_extra=manifest_extra, progress=progress)
    if ctx.world_size > 1:
        device = pin_device(torch.device(device), ctx.local_rank)
    kwargs = dict(num_classes=num_classes, device=device, resume=resume, overwrite=overwrite,
                  manifest_extra=manifest_extra or {}, progress=progress and ctx.rank == 0)
    with _process_group(ctx, device):
        if split_samples and ctx.world_size > 1:
            return _run_split_samples(spec, images, indices, out, ctx, **kwargs)
        return _run_split_images(spec, images, indices, out, ctx, **kwargs)


@contextmanager
def _process_group(ctx: Context, device: torch.device) -> Iterator[None]:
    if ctx.world_size == 1:
        yield
        return
    # CPU flags always travel over gloo; count tensors on GPUs over NCCL.
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()


class _Agreement:
    """Fixed points where all ranks tell each other whether they failed.

    A rank that fails completes the pending step with its failure flag instead of
    leaving its peers waiting; the peers then raise too.  After a step with a
    failure (or the last step) no rank takes part in another.
    """

    def __init__(self, ctx: Context, steps: int) -> None:
        self.ctx = ctx
        self.steps_left = steps

    def step(self, failed: bool = False) -> None:
        if self.steps_left == 0:
            return
        ctx = self.ctx
        self.steps_left -= 1
        flags = torch.zeros(ctx.world_size, dtype=torch.int32)
        flags[ctx.rank] = int(failed)
        if ctx.world_size > 1:
            try:
                dist.all_reduce(flags)
            except BaseException:
                self.steps_left = 0
                raise
        failed_ranks = flags.nonzero().flatten().tolist()
        if failed_ranks:
            self.steps_left = 0
        if failed_ranks and not failed:
            raise InputError(
                f"process(es) {failed_ranks} of {ctx.world_size} failed (their error is printed above); "
                "fix the cause and rerun the same command (with --resume if results were being written)"
            )

    def fail(self) -> None:
        self.step(failed=True)


def _crash_hook(images: Images, rank: int) -> Images:
    """``images``, or (test hook, see ``TEST_CRASH_ENV``) a version that exits the
    process when asked for an image after K rows of this rank were written."""
    value = os.environ.get(TEST_CRASH_ENV)
    if not value:
        return images
    crash_rank, after = (int(v) for v in value.split(":"))
    if crash_rank != rank:
        return images
    calls = 0

    def load(idx: int) -> tuple[torch.Tensor, int]:
        nonlocal calls
        calls += 1
        # The runner loads its first image once more to probe the models; with one image
        # per group, call K + 2 comes right after the K-th row was flushed.
        if calls > after + 1:
            os._exit(1)
        return images(idx)

    return load


def done_indices(out: Path, spec: RunSpec, resume: bool, overwrite: bool) -> set[int]:
    """Indices already in ``out`` or in any of its part files; checks resume/overwrite
    and that every file was written with ``spec``.  Reads only."""
    out = Path(out)
    done = prepare_output(out, spec, resume, overwrite)
    parts = part_paths(out)
    if parts and not (resume or overwrite):
        raise InputError(
            f"{out} has part files of an unfinished multi-process run ({parts[0].name} ...); "
            "pass --resume to continue it or --overwrite to start afresh"
        )
    if resume:
        for part in parts:
            done |= prepare_output(part, spec, resume=True, overwrite=False)
    return done


def _remove(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
        manifest_path(path).unlink(missing_ok=True)


def _run_split_images(
    spec: RunSpec,
    images: Images,
    indices: Sequence[int],
    out: Path,
    ctx: Context,
    *,
    overwrite: bool,
    resume: bool,
    manifest_extra: dict[str, Any],
    **kwargs: Any,
) -> RunReport | None:
    agreement = _Agreement(ctx, steps=2)
    started = [time.perf_counter()]

    def ready() -> None:
        agreement.step()
        started[0] = time.perf_counter()
        if ctx.rank == 0 and overwrite:
            # Only files no rank of this run writes: each rank overwrites its own part.
            _remove([out, *(p for p in part_paths(out) if p not in _current_parts(out, ctx))])

    try:
        done = done_indices(out, spec, resume, overwrite)
        todo = [i for i in indices if i not in done]
        extra = {**manifest_extra, "distributed": {"split": "images", "rank": ctx.rank, "world_size": ctx.world_size}}
        run(spec, _crash_hook(images, ctx.rank), todo[ctx.rank :: ctx.world_size], part_path(out, ctx.rank),
            resume=resume, overwrite=overwrite, manifest_extra=extra, on_ready=ready, **kwargs)
    except BaseException:
        agreement.fail()
        raise
    agreement.step()  # every rank has finished its share and closed its part file
    if ctx.rank != 0:
        return None
    rows = merge_parts(out, spec, indices, ctx.world_size, time.perf_counter() - started[0])
    fresh = set(todo)
    new_rows = [row for row in rows if row.idx in fresh]
    return RunReport(rows=new_rows, skipped=len(indices) - len(todo), seconds=time.perf_counter() - started[0],
                     noise_samples=len(new_rows) * _samples_per_image(spec))


def _current_parts(out: Path, ctx: Context) -> list[Path]:
    return [part_path(out, r) for r in range(ctx.world_size)]


def _samples_per_image(spec: RunSpec) -> int:
    return spec.n + (spec.n0 if spec.mode == "certify" else 0)


def merge_parts(out: Path, spec: RunSpec, indices: Sequence[int], world_size: int, wall_seconds: float) -> list[Row]:
    """Merge ``out`` (if present) and all its part files into ``out`` sorted by idx, with
    one manifest; then remove the parts.  Returns the merged rows.

    The manifest is written first and the TSV replaced atomically, so a crash at any
    point leaves files that ``--resume`` accepts; parts go only after the TSV is in place.
    """
    out = Path(out)
    parts = part_paths(out)
    rows: dict[int, Row] = {}
    for path in ([out] if out.exists() else []) + parts:
        for row in read_rows(path)[1]:
            rows.setdefault(row.idx, row)  # seeding per index makes duplicates identical
    missing = [i for i in indices if i not in rows]
    if missing:
        raise InputError(
            f"merging into {out}: {len(missing)} image(s) have no row (e.g. {missing[:5]}); is --out on a file "
            "system that every node shares? The part files are kept; rerun with --resume"
        )
    merged = sorted(rows.values(), key=lambda row: row.idx)
    ranks = [read_manifest(manifest_path(part_path(out, r))) for r in range(world_size)]
    write_manifest(manifest_path(out), _merged_manifest(ranks, spec, world_size, wall_seconds))
    write_results(out, spec.mode, merged)
    _remove(parts)
    return merged


def _merged_manifest(ranks: list[dict[str, Any]], spec: RunSpec, world_size: int, wall: float) -> dict[str, Any]:
    first = {k: v for k, v in ranks[0].items() if k not in ("throughput", "distributed", "status")}
    per_rank = [m.get("throughput") or {} for m in ranks]
    images = sum(t.get("images", 0) for t in per_rank)
    seconds = sum(t.get("seconds", 0.0) for t in per_rank)
    throughput = {
        "images": images,
        "seconds": seconds,  # summed over processes
        "wall_seconds": wall,
        "images_per_second": images / wall if wall > 0 else None,
        "noise_samples_per_second": images * _samples_per_image(spec) / wall if wall > 0 else None,
        "seconds_per_image": seconds / images if images else None,
    }
    ranks_info = [
        {"rank": r, "device": m.get("environment", {}).get("device"), "throughput": t}
        for r, (m, t) in enumerate(zip(ranks, per_rank))
    ]
    return {
        **first,
        "status": "finished",
        "throughput": throughput,
        "distributed": {"split": "images", "world_size": world_size, "ranks": ranks_info},
    }


def _sum_over_ranks(counts: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(counts)
    return counts


def _run_split_samples(
    spec: RunSpec,
    images: Images,
    indices: Sequence[int],
    out: Path,
    ctx: Context,
    *,
    overwrite: bool,
    manifest_extra: dict[str, Any],
    **kwargs: Any,
) -> RunReport | None:
    # One agreement only: once sampling starts, count all-reduces are in flight and a
    # failing rank simply exits (torchrun then stops the others).
    agreement = _Agreement(ctx, steps=1)

    def ready() -> None:
        agreement.step()
        if ctx.rank == 0 and overwrite:
            _remove(part_paths(out))

    try:
        parts = part_paths(out)
        if parts and not overwrite:
            raise InputError(
                f"{out} has part files of an unfinished run that split images ({parts[0].name} ...); finish it "
                "with the same command without --split-samples, or pass --overwrite"
            )
        extra = {**manifest_extra, "distributed": {"split": "samples", "world_size": ctx.world_size}}
        report = run(spec, images, indices, out, overwrite=overwrite, manifest_extra=extra, on_ready=ready,
                     shard=(ctx.rank, ctx.world_size), reduce_counts=_sum_over_ranks, write=ctx.rank == 0, **kwargs)
    except BaseException:
        agreement.fail()
        raise
    return report if ctx.rank == 0 else None
