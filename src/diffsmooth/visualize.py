"""Pictures: image grids with column titles, and the PSNR that goes with them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor

from diffsmooth import validate
from diffsmooth.diffusion.diagnostics import per_image_psnr
from diffsmooth.files import atomic_path
from diffsmooth.validate import InputError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIGURE_SUFFIXES = (".png", ".pdf", ".svg")


def check_figure_path(path: str | Path, option: str) -> Path:
    """Refuse, before any work, a figure path whose format or folder cannot be written (``path`` as
    the user typed it: a trailing separator says a folder)."""
    suffix = Path(path).suffix
    if suffix.lower() not in FIGURE_SUFFIXES:
        raise InputError(f"{option} {path}: unknown figure format {suffix or '(none)'!r}; "
                         f"use one of {', '.join(FIGURE_SUFFIXES)}")
    return validate.output_file(path, option)


def psnr(images: Tensor, reference: Tensor) -> float:
    """Mean PSNR in dB of ``images`` against ``reference``, both ``(B, C, H, W)`` in [0,1]."""
    return float(per_image_psnr(images, reference).mean())


def save_grid(columns: Sequence[Tensor], titles: Sequence[str], out: Path) -> None:
    """One row per image, one column per tensor ``(B, C, H, W)`` in [0,1]; PNG by ``out``'s suffix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = columns[0].shape[0]
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.6 * len(columns), 1.6 * rows), dpi=120, squeeze=False)
    for j, (images, title) in enumerate(zip(columns, titles)):
        for i in range(rows):
            image = images[i].detach().float().clamp(0, 1).cpu()
            ax = axes[i][j]
            if image.shape[0] == 1:
                ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(image.permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=7)
    fig.tight_layout()
    save_figure(fig, out)
    plt.close(fig)


def save_figure(fig: Figure, out: Path) -> None:
    """Save a matplotlib figure atomically (``files.atomic_path``), in the format ``out``'s suffix names."""
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=out.suffix.lstrip(".").lower() or None)
