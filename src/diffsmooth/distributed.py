"""Certification across processes launched by torchrun (one process per GPU).

Single-process runs go straight to ``runner.run``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from diffsmooth.runner import RunReport, RunSpec, run


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def run_maybe_distributed(
    spec: RunSpec,
    images: Callable[[int], tuple[torch.Tensor, int]],
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
    """``runner.run`` in one process, or this rank's share of it under torchrun."""
    if world_size() == 1:
        return run(spec, images, indices, out, num_classes=num_classes, device=device, resume=resume,
                   overwrite=overwrite, manifest_extra=manifest_extra, progress=progress)
    raise NotImplementedError("torchrun support is being built")
