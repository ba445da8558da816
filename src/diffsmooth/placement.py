"""Which process takes which images or samples under torchrun, and how their files merge.

A run (``runner.run``) asks its ``Placement`` at fixed points; the placement never calls back up.
Three ways a process can sit:

* alone: one process, nothing left by an earlier multi-process run: it takes every image and
  writes ``OUT`` itself.
* images (default under torchrun, and a single process that finds part files of an interrupted
  one): rank ``r`` of ``K`` takes ``todo[r::K]`` into its own part file ``OUT.part<r>`` (same
  crash-safe format and manifest as ``OUT``); when all ranks finish, rank 0 merges every part
  into ``OUT`` sorted by idx and removes the parts.  Noise is seeded per (seed, idx), so the
  merged rows equal those of a single-process run whatever ``K``.
* samples (``--split-samples``): every rank runs every image, drawing its share of the ``n0``
  and ``n`` samples from a stream seeded by (seed, idx, rank); the counts are summed with an
  all-reduce before each decision.  Only rank 0 writes ``OUT``.

Resuming reads what is done from ``OUT`` and from every part file present (also those of a run
with another ``K``), so a dead rank loses only its image in flight.  Every file is read before
any is written, and the ranks agree by a collective on whether all checks passed: an error on one
rank ends all of them.  The part files must lie on a file system that all nodes share.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from diffsmooth.results import ResultsStore, Row, Sink, StoreSet, part_path, part_paths
from diffsmooth.smoothing import SmoothedClassifier
from diffsmooth.validate import InputError

# Ranks finish their shares at different times and wait for the slowest at the last
# agreement; a dead peer is not waited for, because torchrun stops the whole group
# when one process fails.  So the timeout only has to outlast honest imbalance.
TIMEOUT = timedelta(hours=24)

Store = ResultsStore | StoreSet
Sinks = Sink | dict[str, Sink] | None


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


def _files(store: Store) -> list[ResultsStore]:
    return list(store.stores.values()) if isinstance(store, StoreSet) else [store]


def _parts(store: Store) -> list[Path]:
    return [p for one in _files(store) for p in part_paths(one.out)]


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

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Run a block; if it fails here, tell the peers (they raise at this step) and re-raise."""
        try:
            yield
        except BaseException:
            self.step(failed=True)
            raise


def _sum_over_ranks(counts: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(counts)
    return counts


class Placement:
    """This process's place in a run: ``how`` ("alone", "images" or "samples"), its torchrun
    ``ctx`` and its (pinned) ``device``.  Build one with ``locate``."""

    def __init__(self, how: str, ctx: Context, device: torch.device) -> None:
        self.how, self.ctx, self.device = how, ctx, device
        # Images: one agreement after the checks, one after every part file is closed.  Samples:
        # one only; once sampling starts, count all-reduces are in flight and a failing rank
        # simply exits (torchrun then stops the others).
        self._agreement = _Agreement(ctx, {"alone": 0, "images": 2, "samples": 1}[how])

    @property
    def main(self) -> bool:
        """Whether this process reports (rank 0)."""
        return self.ctx.rank == 0

    @property
    def noise_rank(self) -> int | None:
        """The rank that seeds this process's noise streams (samples: each rank its own)."""
        return self.ctx.rank if self.how == "samples" else None

    def describe(self) -> dict[str, Any] | None:
        """The manifest's ``distributed`` entry (None alone)."""
        if self.how == "images":
            return {"split": "images", "rank": self.ctx.rank, "world_size": self.ctx.world_size}
        if self.how == "samples":
            return {"split": "samples", "world_size": self.ctx.world_size}
        return None

    @contextmanager
    def session(self) -> Iterator[None]:
        """The torchrun process group for the run (nothing alone)."""
        if self.ctx.world_size == 1:
            yield
            return
        # CPU flags always travel over gloo; count tensors on GPUs over NCCL.
        dist.init_process_group("cpu:gloo,cuda:nccl" if self.device.type == "cuda" else "gloo", timeout=TIMEOUT)
        try:
            yield
        finally:
            dist.destroy_process_group()

    @contextmanager
    def checks(self) -> Iterator[None]:
        """The run's checks (read only): a failure on any rank ends every rank, and no rank writes
        a file before all have passed."""
        with self._agreement.guard():
            yield
        self._agreement.step()

    def check_store(self, store: Store, shares_samples: bool) -> set[int]:
        """What is done already (reads ``OUT`` and, except when sharing samples, its part files)."""
        if self.how == "samples":
            if not shares_samples:
                raise InputError("--split-samples cannot share an attack's images across processes; "
                                 "drop it (the processes then share the images)")
            parts = _parts(store)
            if parts and not store.overwrite:
                raise InputError(
                    f"{store.out} has part files of an unfinished run that split images ({parts[0].name} ...); "
                    "finish it with the same command without --split-samples, or pass --overwrite"
                )
            return store.check(parts=False)
        return store.check()

    def take(self, todo: Sequence[int]) -> list[int]:
        """The images this process certifies of those still to do."""
        return list(todo[self.ctx.rank :: self.ctx.world_size]) if self.how == "images" else list(todo)

    def shard(self, smoothed: SmoothedClassifier) -> SmoothedClassifier:
        """Samples: this rank draws its share and the counts are summed over all ranks."""
        if self.how != "samples":
            return smoothed
        return smoothed.sharded(self.ctx.rank, self.ctx.world_size, _sum_over_ranks)

    @contextmanager
    def writing(self, store: Store, manifest: dict[str, Any]) -> Iterator[Sinks]:
        """Where this process's rows go: ``OUT`` (alone, or rank 0 sharing samples), its part file
        (images), or nowhere (other ranks sharing samples).  Stale part files that no rank of this
        run writes go when ``--overwrite`` replaces a run."""
        if self.how == "alone":
            with store.writing(manifest) as sinks:
                yield sinks
            return
        if self.how == "samples":
            if not self.main:
                yield None
                return
            with store.writing(manifest, clear_parts=self._stale(store, 0) or None) as sinks:
                yield sinks
            return
        stale = self._stale(store, self.ctx.world_size) if self.main and store.overwrite else None
        with self._agreement.guard():
            with store.writing(manifest, rank=self.ctx.rank, clear_parts=stale or None) as sinks:
                yield sinks
        self._agreement.step()  # every rank has finished its share and closed its part file

    @staticmethod
    def _stale(store: Store, world_size: int) -> Any:
        """Part files of an earlier run that no rank of a run with ``world_size`` part files writes."""
        def stale(one: ResultsStore) -> list[Path]:
            current = [part_path(one.out, r) for r in range(world_size)]
            return [p for p in part_paths(one.out) if p not in current]

        if isinstance(store, StoreSet):
            return {label: stale(one) for label, one in store.stores.items()}
        return stale(store)

    def merge(self, store: Store, indices: Sequence[int], wall_seconds: float) -> dict[str | None, list[Row]] | None:
        """Images, rank 0: merge every part file into ``OUT``; the merged rows by file (None: one
        file), or None where there is nothing to merge."""
        if self.how != "images" or not self.main:
            return None
        merged = store.merge(indices, self.ctx.world_size, wall_seconds)
        return merged if isinstance(merged, dict) else {None: merged}


def locate(store: Store, device: torch.device | str, split_samples: bool) -> Placement:
    """This process's placement: from torchrun's environment, ``--split-samples`` and whether
    ``store`` has part files of an interrupted multi-process run (a single process then resumes
    and merges them like a world of size 1)."""
    ctx = context()
    device = torch.device(device)
    if ctx.world_size > 1:
        device = pin_device(device, ctx.local_rank)
        return Placement("samples" if split_samples else "images", ctx, device)
    return Placement("images" if _parts(store) else "alone", ctx, device)
