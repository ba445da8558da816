"""Files of every kind, in one place: weights and config files (read untrusted, written
atomically), hashing, JSON objects, the git commit, devices.

Leaf module (imports nothing of ours but ``errors``), so every layer may use it.
"""

from __future__ import annotations

import hashlib
import json
import os
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


# ---- writing: every file we write goes through a temp file + rename ----------------------------

def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file + rename: readers see the old file or the new
    one, never half; the temp file is removed on every failure.  A symlink at ``path`` is
    replaced itself, never written through."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | Path, doc: dict[str, Any]) -> None:
    """A JSON object, atomically; ``InputError`` when ``doc`` holds values JSON cannot store."""
    try:
        text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    except TypeError as err:
        raise InputError(f"cannot write {Path(path).name}: {err}; convert tensors/arrays to numbers or lists") from None
    atomic_write_text(path, text)


def save_safetensors(path: str | Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> str:
    """Write tensors (each copied to a compact CPU tensor) atomically; returns the file's SHA-256."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(state, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return file_sha256(path)


# ---- reading untrusted weights ------------------------------------------------------------------

def check_finite(state: dict[str, Any], path: str | Path) -> None:
    """Refuse weights holding NaN or infinite values: they would make every score NaN."""
    import torch

    bad = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
           and not bool(torch.isfinite(v).all())]
    if bad:
        raise InputError(f"{path} holds NaN or infinite weights ({len(bad)} tensor(s), e.g. {bad[0]}); "
                         "the training run diverged or the file is damaged: use another checkpoint")


def read_safetensors(path: str | Path) -> dict[str, Any]:
    """All tensors of a safetensors file on the CPU, checked finite."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise InputError(f"cannot read {path} as safetensors ({str(err).splitlines()[0][:120] if str(err) else type(err).__name__}); "
                         "the file is damaged or truncated, save or download it again") from None
    check_finite(state, path)
    return state


def read_torch(path: str | Path) -> Any:
    """A torch checkpoint read with ``weights_only=True`` (pickled code is refused, never run)."""
    import pickle

    import torch

    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Unsupported global" in text or "WeightsUnpickler" in text and "GLOBAL" in text:
            lines = [ln.strip() for ln in text.splitlines() if "Unsupported" in ln]
            detail = f" ({lines[0].split(' Please')[0][:160]})" if lines else ""
            raise InputError(f"refused to load {path}: it contains pickled objects other than tensors{detail}; "
                             "only weights-only checkpoints are read, re-save just the state_dict from trusted code"
                             ) from None
        raise InputError(f"cannot read {path}: it is not a torch checkpoint (or it is damaged); "
                         "download or save it again") from None
    except MemoryError:
        raise InputError(f"cannot read {path}: out of memory loading it (is it really a checkpoint?)") from None
    except Exception as err:  # noqa: BLE001  torch raises many types on garbage (IndexError, KeyError ...)
        first = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise InputError(f"cannot read checkpoint {path} ({first}); the file is damaged or truncated, or not a "
                         "checkpoint: download or save it again") from None


def unwrap_state_dict(obj: Any, path: str | Path) -> tuple[dict[str, Any], str | None, dict[str, Any]]:
    """The state dict, the ``arch`` and the scalar metadata (epoch ...) of a loaded torch object:
    a bare dict of tensors, or a dict holding one under ``state_dict``, ``model`` or ``state_dict_ema``."""
    import torch

    if isinstance(obj, dict):
        arch = obj.get("arch") if isinstance(obj.get("arch"), str) else None
        meta = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, (str, int, float))}
        for key in ("state_dict", "model", "state_dict_ema"):
            if isinstance(obj.get(key), dict):
                return obj[key], arch, meta
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj, None, {}
    raise InputError(f"{path} holds no state dict (expected a dict of tensors or a dict with "
                     "'state_dict'); save the model's state_dict()")


def load_state_strictly(model: Any, state: dict[str, Any], path: str | Path, what: str, fix: str) -> None:
    """``model.load_state_dict(state, strict=True)`` with one message naming the missing, unexpected
    and mis-shaped keys (``what``: the network, e.g. "arch 'fmnist_cnn' with 10 classes"; ``fix``: the
    advice).  BatchNorm step counters, which old PyTorch checkpoints lack and eval never uses, are filled in."""
    expected = model.state_dict()
    for k in expected:
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = expected[k]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = [f"missing {len(missing)}: {few_names(missing)}" if missing else "",
                 f"unexpected {len(unexpected)}: {few_names(unexpected)}" if unexpected else "",
                 f"wrong shape (file vs model) {len(wrong)}: {few_names(wrong, 3)}" if wrong else ""]
        raise InputError(f"{path} does not fit {what} (" + "; ".join(p for p in parts if p) + f"); {fix}")
    model.load_state_dict(state, strict=True)


def check_json(doc: dict[str, Any], what: str) -> None:
    """Refuse, before any file is written, a document JSON cannot store."""
    try:
        json.dumps(doc)
    except TypeError as err:
        raise InputError(f"{what}: the settings and extra info must be JSON-serializable ({err}); "
                         "convert tensors/arrays to numbers or lists") from None


def few_names(names: list[str], k: int = 5) -> str:
    """The first ``k`` names, and how many more: for messages about mismatched keys."""
    return ", ".join(names[:k]) + (f" (+{len(names) - k} more)" if len(names) > k else "")


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
