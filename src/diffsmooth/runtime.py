"""Running well on a CPU that other work shares: ``configure_cpu()``.

Three settings, each only where the user has not chosen one:

- **Passive OpenMP waiting** (``OMP_WAIT_POLICY=PASSIVE``).  By default OpenMP threads spin at every
  barrier; when another process holds a core, the spinning thread burns its time slice while the
  thread it waits for cannot run (on a shared 2-core machine a certify ran 2.4-2.8x slower beside
  one other torch job).  The OpenMP runtime reads the variable when it loads, with torch: this call
  must come before ``import torch`` to take effect (the command line makes it first thing).
- **Threads from the CPUs this process may use**: ``OMP_NUM_THREADS`` = the CPUs of the process's
  affinity mask, capped by a cgroup CPU quota (containers), instead of every core of the machine.
- **No allocation storm** (glibc only): activations of a forward pass are freed and allocated again
  on every batch; above glibc's mmap threshold each allocation is a fresh ``mmap`` whose pages fault
  in one by one (~1,100-1,400 minor faults per noise sample of a DiffSmooth certify).  Serving every
  block from the heap (``M_MMAP_MAX`` 0) and keeping freed heap (``M_TRIM_THRESHOLD`` 2 GiB) lets
  the next batch reuse the pages: ~160-220 faults per sample, at the price of a larger resident
  size (the peak stays mapped).  One arena (``M_ARENA_MAX`` 1), so that threads of the CPU
  row-block workers (``diffsmooth.workers``) reuse that heap instead of faulting in arenas of
  their own (~500 faults per sample with them).

``DIFFSMOOTH_CPU_DEFAULTS=0`` in the environment turns all three off (for comparisons).
"""

from __future__ import annotations

import ctypes
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: keep up to 2 GiB of freed heap for reuse

_DONE: dict[str, Any] = {}


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def _tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds; False where the C library is not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # No mmap'ed blocks at all (large activations included: the 32 MiB ceiling of M_MMAP_THRESHOLD
    # is below a batch's convolution workspace), and freed heap kept for the next batch; one arena,
    # so that the row-block workers' threads (diffsmooth.workers) reuse that heap too instead of
    # growing and trimming arenas of their own.
    return (bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
            and bool(mallopt(M_ARENA_MAX, 1)))


def configure_cpu() -> dict[str, Any]:
    """Set passive OpenMP waiting, the thread count and glibc's malloc thresholds where the user has
    not (see the module docstring); idempotent.  Call it before ``import torch``.

    Returns what holds now: ``{"omp_wait_policy", "omp_num_threads", "malloc_tuned",
    "before_torch"}`` (the last False when torch was imported first, so that OpenMP settings made
    here could not take effect).  Recorded in results manifests.
    """
    if _DONE:
        return dict(_DONE)
    before_torch = "torch" not in sys.modules
    enabled = os.environ.get("DIFFSMOOTH_CPU_DEFAULTS", "1") != "0"
    if enabled and before_torch:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        os.environ.setdefault("OMP_NUM_THREADS", str(usable_cpus()))
    _DONE.update(
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
        omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
        malloc_tuned=_tune_malloc() if enabled else False,
        before_torch=before_torch,
    )
    return dict(_DONE)


def cpu_settings() -> dict[str, Any]:
    """What ``configure_cpu`` set in this process (empty if it was not called), for manifests."""
    return dict(_DONE)
