"""Bad input: the one exception type, and the one check of each rule.

Every check on user input (arguments, files, checkpoints, images) raises ``InputError`` with a
message that names the problem and the fix; the command line turns it into one line on stderr
and exit code 2.  The rules that many layers share (a noise level ``sigma``, a failure
probability ``alpha``, sample counts, seeds, output paths) are worded here once: each check
takes the value and the name to show (a command-line flag such as ``--sigma`` or a parameter
such as ``sigma``) and returns the value in its canonical type.

Leaf module: imports nothing of ours and no torch, so that ``stats`` may use it.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable
from pathlib import Path


class InputError(ValueError):
    """Bad input: a wrong argument, a missing or unfitting file, an invalid image.

    A ``ValueError``, so that library callers can catch the usual type."""


def _real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


SIGMA_MAX = 10.0
"""The largest smoothing noise a run takes: ten times the whole [0,1] pixel range (a sigma of 1000 is
a 0-255 scale, whose certified radii of hundreds would say nothing about [0,1] images)."""


def sigma(value: object, name: str = "sigma", *, zero_ok: bool = False, maximum: float | None = SIGMA_MAX) -> float:
    """A Gaussian noise level in [0,1] pixel units: finite and > 0 (>= 0 with ``zero_ok``, where 0
    means no noise), at most ``maximum`` (None: no upper bound, for formulas)."""
    if not (_real(value) and math.isfinite(value) and (value > 0 or (zero_ok and value == 0))):
        bound = ">= 0 (0: no noise)" if zero_ok else "> 0"
        raise InputError(f"{name} must be a finite noise level {bound} in [0,1] pixel units (e.g. 0.25), got {value!r}")
    if maximum is not None and value > maximum:
        raise InputError(f"{name} {value!r} is no noise level in [0,1] pixel units (at most {maximum:g}); "
                         "on a 0-255 scale divide it by 255")
    return float(value)


def alpha(value: object, name: str = "alpha") -> float:
    """A failure probability strictly between 0 and 1."""
    if not (_real(value) and 0.0 < value < 1.0):
        raise InputError(f"{name} must lie strictly between 0 and 1 (e.g. 0.001), got {value!r}")
    return float(value)


def whole(value: object, name: str, minimum: int = 1, maximum: int | None = None) -> int:
    """A whole number (a count, a size, a step) in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InputError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise InputError(f"{name} must be a whole number <= {maximum}, got {value!r}")
    return int(value)


MAX_SAMPLES = 10**12
"""The most noise samples a count may ask for (a trillion: beyond any run that ends, and within the
integer range of the binomial bounds)."""

SEED_MAX = 2**63 - 1
"""The largest seed a ``torch.Generator`` takes."""


def seed(value: object, name: str = "seed") -> int:
    """A random seed: a whole number in ``[0, 2^63 - 1]``."""
    return whole(value, name, 0, SEED_MAX)


def number(value: object, name: str, *, minimum: float | None = None, above: float | None = None,
           what: str = "number", hint: str = "") -> float:
    """A finite number, ``>= minimum`` or ``> above`` when given (``what`` says what it is, e.g. "radius";
    ``hint`` follows the bound in the message, e.g. " (the growth of the looks, e.g. 2)")."""
    ok = _real(value) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value >= minimum
    if ok and above is not None:
        ok = value > above
    if not ok:
        bound = f" >= {minimum:g}" if minimum is not None else f" > {above:g}" if above is not None else ""
        raise InputError(f"{name} must be a finite {what}{bound}{hint}, got {value!r}")
    return float(value)


def optimizer(lr: object, weight_decay: object, momentum: object | None = None) -> None:
    """A trainer's optimizer settings: learning rate finite and > 0, weight decay finite and >= 0,
    momentum (SGD) in [0, 1)."""
    number(lr, "--lr", above=0, what="learning rate")
    number(weight_decay, "--weight-decay", minimum=0, what="weight decay")
    if momentum is not None and not (_real(momentum) and 0 <= momentum < 1):
        raise InputError(f"--momentum must lie in [0, 1) (e.g. 0.9), got {momentum!r}")


def limit(value: object, name: str) -> int | None:
    """An image limit (``--train-limit``, ``--eval-limit``): None (all images) or a whole number >= 1."""
    return None if value is None else whole(value, name)


_OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory",
                  "bad_alloc", "failed to allocate")


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation failure (torch words it in several ways on CPU and GPU)."""
    text = str(err).lower()
    return isinstance(err, MemoryError) or any(words in text for words in _OUT_OF_MEMORY)


def choice(value: object, name: str, known: Iterable[str]) -> str:
    """One of the ``known`` names."""
    known = list(known)
    if value not in known:
        raise InputError(f"unknown {name} {value!r}; choose one of: {', '.join(known)}")
    return str(value)


# ---- paths -------------------------------------------------------------------------------------


def output_file(path: str | os.PathLike[str], name: str = "--out") -> Path:
    """A file a run may create: not a folder (nor written as one, with a trailing separator), in a
    folder that exists and is writable.  Whether an existing file may be replaced is the owner's
    decision (``--resume`` / ``--overwrite``), not checked here."""
    text = os.fspath(path)
    if not str(text).strip():
        raise InputError(f"{name} is empty; give a file name, e.g. {name} results.tsv")
    out = Path(text)
    _not_a_folder(text, out, name, out / "results.tsv", "a file name")
    writable_folder(out.parent, name)
    return out


def _not_a_folder(text: str, path: Path, name: str, example: Path, what: str) -> None:
    if path.is_dir():
        raise InputError(f"{name} {text} is a folder; give {what} inside it, e.g. {example}")
    if text.endswith(os.sep):
        raise InputError(f"{name} {text} ends with '{os.sep}' but is no folder; give {what}, not a folder, "
                         f"e.g. {example}")


def output_folder(path: str | os.PathLike[str], name: str = "--out-dir") -> Path:
    """A folder a run writes into: a folder if it exists (not a file), else one whose parent exists
    and is writable (the run creates it)."""
    text = os.fspath(path)
    if not str(text).strip():
        raise InputError(f"{name} is empty; give a folder (it is created if missing), e.g. {name} results")
    out = Path(text)
    if out.is_symlink() and not out.exists():
        raise InputError(f"{name} {out} is a symbolic link to nothing ({os.readlink(out)}); give a folder, or "
                         "create the link's target first")
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise InputError(f"{name} {out} is a file; give a folder (it is created if missing)")
        writable_folder(out, name)
    else:
        writable_folder(out.parent, name)
    return out


def writable_folder(folder: Path, name: str = "--out") -> Path:
    """An existing folder this process may create files in."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"output folder {folder} of {name} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise InputError(f"output folder {folder} of {name} is not writable; choose another {name}")
    return folder


def output_stem(path: str | os.PathLike[str], name: str = "--out", suffixes: tuple[str, ...] = (".safetensors",
                                                                                                 ".json")) -> Path:
    """A path stem a command writes ``STEM<suffix>`` files at (a model's weights and JSON): given as
    ``STEM`` or ``STEM<suffix>``, not a folder (nor written as one), in a writable folder."""
    text = os.fspath(path)
    out = Path(text)
    stem = out.with_suffix("") if out.suffix in suffixes else out
    _not_a_folder(text, stem, name, stem / "model", "a path stem")
    writable_folder(stem.parent, name)
    return stem


def not_replaced(files: Iterable[Path], replace: bool, what: str, name: str = "--out") -> None:
    """Refuse files a run would replace unless ``replace`` (``--overwrite``, or ``--resume`` of the run
    that owns them)."""
    existing = [f for f in files if f.exists() or f.is_symlink()]
    if existing and not replace:
        raise InputError(f"{existing[0]} exists; pass --overwrite to replace the {what} or choose another {name}")
