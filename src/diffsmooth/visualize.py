"""Pictures: image grids with column titles, and the PSNR that goes with them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from diffsmooth.diffusion.diagnostics import per_image_psnr
from diffsmooth.errors import InputError

FIGURE_SUFFIXES = (".png", ".pdf", ".svg")


def check_figure_path(path: Path, option: str) -> Path:
    """Refuse, before any work, a figure path whose format or folder cannot be written."""
    path = Path(path)
    if path.suffix.lower() not in FIGURE_SUFFIXES:
        raise InputError(f"{option} {path}: unknown figure format {path.suffix or '(none)'!r}; "
                         f"use one of {', '.join(FIGURE_SUFFIXES)}")
    if path.is_dir():
        raise InputError(f"{option} {path} is a folder; give a file name such as {path / ('figure' + FIGURE_SUFFIXES[0])}")
    if not path.parent.is_dir():
        raise InputError(f"folder {path.parent} for {option} does not exist; create it first")
    return path


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


def save_figure(fig, out: Path) -> None:
    """Save a matplotlib figure atomically (temp file + rename), format by ``out``'s suffix."""
    import os

    out = Path(out)
    tmp = out.with_name(out.name + ".tmp" + out.suffix)
    try:
        fig.savefig(tmp)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
