"""Files in general: one atomic write (temp file + fsync + rename) that every file we write goes
through, JSON objects, hashing, the git commit, devices.  Model files (weights + their JSON
config, our own and foreign checkpoints) are ``diffsmooth.modelfile``'s.

Leaf module (imports nothing of ours but ``validate``), so every layer may use it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffsmooth.validate import InputError

if TYPE_CHECKING:
    import torch


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (recorded in results manifests and model configs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file holding one object; ``InputError`` naming the file otherwise."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read {path} as JSON ({err}); restore the file") from None
    if not isinstance(doc, dict):
        raise InputError(f"{path} must hold a JSON object; restore the file")
    return doc


def resolve_device(device: Any = None) -> torch.device:
    """``torch.device(device)`` (CUDA when available for None), refusing CUDA where there is none."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for, but no CUDA GPU is visible; use --device cpu")
    return dev


# ---- writing: every file we write goes through atomic_path -------------------------------------

@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp path beside ``path`` (``<name>.tmp``) for the caller to write; when the block ends
    normally the temp file is flushed to disk (fsync) and renamed over ``path``, so readers see the
    old file or the new one, never half.  On any failure, in the block or in the rename, the temp
    file is removed and the error propagates.  A symlink at ``path`` is replaced itself, never
    written through; so is anything left at the temp path by an earlier crash."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.unlink(missing_ok=True)
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        # Whatever wrote the temp file (safetensors creates it 0600), the result has the mode a plain
        # open() gives under the process's umask, like every other file we write.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (``atomic_path``)."""
    with atomic_path(path) as tmp, tmp.open("w") as f:
        f.write(text)


def write_json(path: str | Path, doc: dict[str, Any]) -> None:
    """A JSON object (indented, keys sorted), atomically; ``InputError`` when ``doc`` holds values
    JSON cannot store."""
    try:
        text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    except TypeError as err:
        raise InputError(f"cannot write {Path(path).name}: {err}; convert tensors/arrays to numbers or lists") from None
    atomic_write_text(path, text)


def save_safetensors(path: str | Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> str:
    """Write tensors (each copied to a compact CPU tensor) atomically; returns the file's SHA-256.
    A failed write (a full disk) is an ``OSError`` with the system's errno, as for any other file."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        try:
            save_file(state, str(tmp), metadata=metadata)
        except SafetensorError as err:  # it wraps the OS error as text: "... Os { code: 28, ... }"
            code = re.search(r"code: (\d+)", str(err))
            errno_ = int(code.group(1)) if code else errno.EIO
            raise OSError(errno_, os.strerror(errno_), str(path)) from None
    return file_sha256(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---- provenance ------------------------------------------------------------------------------------

_COMMIT: list[str | None] = []


def git_commit() -> str | None:
    """The git commit of the source tree (looked up once per process), or None outside a checkout."""
    if not _COMMIT:
        import subprocess

        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                                 capture_output=True, text=True, timeout=5)
            _COMMIT.append(out.stdout.strip() or None if out.returncode == 0 else None)
        except (OSError, subprocess.SubprocessError):
            _COMMIT.append(None)
    return _COMMIT[0]
