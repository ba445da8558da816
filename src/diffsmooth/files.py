"""Small file helpers shared by the checkpoint readers: hashing, JSON objects, devices.

Leaf module (imports nothing of ours but ``errors``), so every layer may use it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from diffsmooth.errors import InputError


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


def resolve_device(device: Any = None):
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
