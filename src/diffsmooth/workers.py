"""Row blocks of a batch on single-threaded workers: a CPU forward without OpenMP barriers.

With N OpenMP threads, every operator of a forward is split N ways and ends at a barrier.  On
an idle CPU the threads wait for each other at hundreds of barriers per batch (the shipped
DiffSmooth certify kept 1.33 of 2 cores busy); on a CPU that other work shares, a descheduled
thread holds the others there too.  ``RowWorkers`` splits the batch into N contiguous row
blocks instead and runs each block's whole forward on its own thread with one OpenMP thread:
one join per batch, no barrier inside it.

Valid only for a base whose rows never interact and that draws no noise per call, so that a
row's scores depend on that row alone (``defenses.rows_independent``); a row's scores are then
those of the unsplit call on one thread (tested bit for bit on the shipped models), and those of
a multi-threaded unsplit call to float rounding: there the BLAS may split a long reduction
between threads, depending on the CPU's code path and MKL's dynamic thread count, so that call
is not reproducible bit for bit itself.  Calls made with autograd recording (attacks) run unsplit.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from diffsmooth import validate


def _one_thread() -> None:
    torch.set_num_threads(1)


class RowWorkers:
    """``workers`` threads, each running one row block of a batch with one OpenMP thread.

    Args:
        workers: number of row blocks (and threads); 1 runs every call unsplit on the caller.
        min_rows: calls with fewer rows than ``workers * min_rows`` run unsplit (too little work
            to share).
    """

    def __init__(self, workers: int, min_rows: int = 8) -> None:
        self.workers = validate.whole(workers, "workers")
        self.min_rows = min_rows
        self._pool: ThreadPoolExecutor | None = None

    def __call__(self, fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """``fn(x)`` for ``x`` (B, ...) on the CPU, computed as ``workers`` row blocks concatenated;
        ``fn`` maps (b, ...) -> (b, ...) row by row."""
        if (self.workers == 1 or x.device.type != "cpu" or x.shape[0] < self.workers * self.min_rows
                or torch.is_grad_enabled()):
            return fn(x)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="diffsmooth-rows",
                                            initializer=_one_thread)
        inference = torch.is_inference_mode_enabled()

        def block(rows: Tensor) -> Tensor:
            # Grad and inference modes are thread-local: the worker runs in the caller's.
            with torch.inference_mode(inference), torch.no_grad():
                return fn(rows)

        futures = [self._pool.submit(block, rows) for rows in x.tensor_split(self.workers)]
        return torch.cat([future.result() for future in futures])

    def close(self) -> None:
        """Stop the threads (a later call starts them again)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
