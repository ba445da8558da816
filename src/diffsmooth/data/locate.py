"""Where dataset files are looked for, in order, and the message when they are not found."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from diffsmooth.validate import InputError

ENV_VAR = "DIFFSMOOTH_DATA"


def cache_dir(name: str) -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/diffsmooth/datasets/<name>``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "diffsmooth" / "datasets" / name


def search_dirs(
    name: str, data_dir: str | Path | None = None, system_dirs: Sequence[str | Path] = ()
) -> list[Path]:
    """Candidate folders for dataset ``name``, most specific first.

    An explicit ``data_dir`` is the only place searched (``data_dir`` and ``data_dir/<name>``):
    a user who names a folder must not silently get another copy.  Otherwise:
    ``$DIFFSMOOTH_DATA`` and ``$DIFFSMOOTH_DATA/<name>``; the user cache; then ``system_dirs``
    (e.g. the folder a Debian package installs to).
    """
    if data_dir is not None:
        if not Path(data_dir).is_dir():
            raise InputError(f"--data-dir {data_dir} is not a folder; give the folder that holds the {name} files")
        return [Path(data_dir), Path(data_dir) / name]
    dirs: list[Path] = []
    env = os.environ.get(ENV_VAR)
    if env:
        dirs += [Path(env), Path(env) / name]
    dirs.append(cache_dir(name))
    dirs += [Path(d) for d in system_dirs]
    return dirs


def find_dir(
    name: str,
    candidates: Sequence[Path],
    holds_dataset: Callable[[Path], bool],
    how_to_get: str,
) -> Path:
    """The first candidate for which ``holds_dataset`` is true, else an ``InputError``
    naming every folder tried and how to obtain the data."""
    for folder in candidates:
        if folder.is_dir() and holds_dataset(folder):
            return folder
    tried = ", ".join(str(c) for c in candidates)
    raise InputError(f"dataset {name!r} not found (looked in: {tried}); {how_to_get}")


def check_split(split: str) -> str:
    if split not in ("train", "test"):
        raise InputError(f"unknown split {split!r}; use split='train' or split='test'")
    return split
