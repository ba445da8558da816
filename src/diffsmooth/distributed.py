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
from diffsmooth.methods import MethodSpec
from diffsmooth.results import ResultsStore, StoreSet, part_path, part_paths
from diffsmooth.runner import RunReport, RunSpec, execute, make_store, prepare, run_into

# Ranks finish their shares at different times and wait for the slowest at the last
# agreement; a dead peer is not waited for, because torchrun stops the whole group
# when one process fails.  So the timeout only has to outlast honest imbalance.
TIMEOUT = timedelta(hours=24)

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
    grid: Sequence[MethodSpec] | None = None,
) -> RunReport | None:
    """``runner.run`` (or ``runner.run_grid`` when ``grid`` lists configurations; ``out`` is then
    the output folder) in one process, or this rank's part of it under torchrun.

    Returns the run's report on rank 0 and None on the other ranks.  A single
    process that finds part files of an interrupted torchrun run resumes and
    merges them like a world of size 1.
    """
    out = Path(out)
    ctx = context()
    spec.validate()
    store = make_store(spec, out, grid=grid, resume=resume, overwrite=overwrite)
    if ctx.world_size == 1 and not _parts(store):
        return run_into(store, spec, images, indices, num_classes=num_classes, device=device,
                        manifest_extra=manifest_extra, progress=progress, grid=grid)
    if ctx.world_size > 1:
        device = pin_device(torch.device(device), ctx.local_rank)
    job = _Job(spec, images, grid, num_classes, device, manifest_extra or {}, progress and ctx.rank == 0)
    with _process_group(ctx, device):
        if split_samples and ctx.world_size > 1:
            return _run_split_samples(job, indices, store, ctx)
        return _run_split_images(job, indices, store, ctx)


@dataclass
class _Job:
    """What every rank runs: the spec, the images, the grid (if any) and where."""

    spec: RunSpec
    images: Images
    grid: Sequence[MethodSpec] | None
    num_classes: int
    device: torch.device
    extra: dict[str, Any]
    progress: bool

    def prepare(self, probe: int | None, distributed: dict[str, Any]):
        return prepare(self.spec, self.images, probe, num_classes=self.num_classes, device=self.device,
                       manifest_extra={**self.extra, "distributed": distributed}, grid=self.grid)


Store = ResultsStore | StoreSet


def _files(store: Store) -> list[ResultsStore]:
    return list(store.stores.values()) if isinstance(store, StoreSet) else [store]


def _parts(store: Store) -> list[Path]:
    return [p for one in _files(store) for p in part_paths(one.out)]


def _stale_parts(store: Store, world_size: int) -> Any:
    """Part files of an earlier run with more processes, which no rank of this one writes."""
    def stale(one: ResultsStore) -> list[Path]:
        current = [part_path(one.out, r) for r in range(world_size)]
        return [p for p in part_paths(one.out) if p not in current]

    if isinstance(store, StoreSet):
        return {label: stale(one) for label, one in store.stores.items()}
    return stale(store)


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


def _run_split_images(job: _Job, indices: Sequence[int], store: Store, ctx: Context) -> RunReport | None:
    agreement = _Agreement(ctx, steps=2)
    try:
        done = store.check()  # reads OUT and the part files of any earlier world size
        todo = [i for i in indices if i not in done]
        share = todo[ctx.rank :: ctx.world_size]
        prepared = job.prepare(share[0] if share else (todo[0] if todo else None),
                               {"split": "images", "rank": ctx.rank, "world_size": ctx.world_size})
    except BaseException:
        agreement.fail()
        raise
    agreement.step()  # every rank has passed its checks: only now are files written
    started = time.perf_counter()
    stale = _stale_parts(store, ctx.world_size) if ctx.rank == 0 and store.overwrite else None
    try:
        with store.writing(prepared.manifest, rank=ctx.rank, clear_parts=stale or None) as sink:
            execute(prepared, share, sink, job.progress)
    except BaseException:
        agreement.fail()
        raise
    agreement.step()  # every rank has finished its share and closed its part file
    if ctx.rank != 0:
        return None
    merged = store.merge(indices, ctx.world_size, time.perf_counter() - started)
    fresh = set(todo)
    report = RunReport(skipped=len(indices) - len(todo), seconds=time.perf_counter() - started,
                       noise_samples=len(todo) * job.spec.samples_per_image)
    if isinstance(merged, dict):
        report.by_configuration = {k: [r for r in rows if r.idx in fresh] for k, rows in merged.items()}
    else:
        report.rows = [row for row in merged if row.idx in fresh]
    return report


def _sum_over_ranks(counts: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(counts)
    return counts


def _run_split_samples(job: _Job, indices: Sequence[int], store: Store, ctx: Context) -> RunReport | None:
    # One agreement only: once sampling starts, count all-reduces are in flight and a
    # failing rank simply exits (torchrun then stops the others).
    agreement = _Agreement(ctx, steps=1)
    try:
        if job.spec.attack is not None:
            raise InputError("--split-samples cannot share an attack's images across processes; "
                             "drop it (the processes then share the images)")
        parts = _parts(store)
        if parts and not store.overwrite:
            raise InputError(
                f"{store.out} has part files of an unfinished run that split images ({parts[0].name} ...); finish it "
                "with the same command without --split-samples, or pass --overwrite"
            )
        done = store.check(parts=False)
        todo = [i for i in indices if i not in done]
        prepared = job.prepare(todo[0] if todo else None, {"split": "samples", "world_size": ctx.world_size})
        prepared.smoothed = prepared.smoothed.sharded(ctx.rank, ctx.world_size, _sum_over_ranks)
        prepared.rank = ctx.rank
    except BaseException:
        agreement.fail()
        raise
    agreement.step()
    if ctx.rank != 0:
        execute(prepared, todo, None, progress=False)
        return None
    clear = ({label: part_paths(one.out) for label, one in store.stores.items()} if isinstance(store, StoreSet)
             else parts)
    with store.writing(prepared.manifest, clear_parts=clear or None) as sink:
        report = execute(prepared, todo, sink, job.progress)
    report.skipped = len(indices) - len(todo)
    return report
