"""Resumable training state as safetensors + JSON (no pickles).

A training checkpoint is a folder with ``state.safetensors`` (model, EMA, optimizer tensors,
random generator states) and ``state.json`` (step, epoch, optimizer scalars and param groups,
the training config, ``train_seconds``: wall seconds of every run up to this checkpoint, read back
by ``trained_seconds``). ``load_state`` refuses a checkpoint whose config differs from the
run's in anything but the length of training, so that resuming continues the same run.

The live objects that a checkpoint saves and restores travel together as a ``TrainState``.
The layout is a format that runs in progress depend on: keys and names here must not change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffsmooth.files import git_commit, save_safetensors, write_json
from diffsmooth.validate import InputError

__all__ = ["TrainState", "git_commit", "has_state", "load_state", "pack_file", "resume_state", "save_state",
           "trained_seconds", "unpack_file"]

STATE_FILE = "state.safetensors"
META_FILE = "state.json"
FORMAT = "diffsmooth-training-state"


@dataclass
class TrainState:
    """What a training checkpoint saves and restores in place.

    Attributes:
        model: the network trained (``model.*`` tensors).
        optimizer: its optimizer (``optim.<param>.<name>`` tensors, scalars and param groups in JSON).
        generators: the run's named random generators (``rng.<name>`` tensors, devices in JSON).
        config: the run's settings as JSON data; a resume must match them (see ``load_state``).
        ema: an exponential moving average of ``model`` (``ema.*`` tensors), if the run keeps one.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    generators: dict[str, torch.Generator]
    config: dict[str, Any]
    ema: nn.Module | None = None


def flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (``optim.<param>.<name>``) and JSON data."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entry in sd["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{name}"] = value
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of ``flatten_optimizer``: a dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, entry in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_state(directory: str | Path, state: TrainState, *, step: int, epoch: int,
               extra: dict[str, Any] | None = None, train_seconds: float | None = None) -> Path:
    """Write ``state`` with the ``step`` and ``epoch`` reached into ``directory`` atomically (temp
    file + rename); ``extra``: JSON data kept beside it (e.g. the last loss); ``train_seconds``:
    wall seconds of training so far, all runs of this training together."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v for k, v in state.model.state_dict().items()}
    if state.ema is not None:
        tensors.update({f"ema.{k}": v for k, v in state.ema.state_dict().items()})
    opt_tensors, opt_meta = flatten_optimizer(state.optimizer)
    tensors.update(opt_tensors)
    tensors.update({f"rng.{name}": g.get_state() for name, g in state.generators.items()})
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    meta = {"format": FORMAT, "step": step, "epoch": epoch, "config": state.config, "optimizer": opt_meta,
            "generators": {name: str(g.device) for name, g in state.generators.items()},
            "git_commit": git_commit(), "extra": extra or {}}
    if train_seconds is not None:
        meta["train_seconds"] = round(float(train_seconds), 1)
    save_safetensors(directory / STATE_FILE, tensors)
    write_json(directory / META_FILE, meta)
    return directory


def has_state(directory: str | Path) -> bool:
    """Whether ``directory`` holds a complete training checkpoint."""
    d = Path(directory)
    return (d / STATE_FILE).is_file() and (d / META_FILE).is_file()


def trained_seconds(directory: str | Path) -> float:
    """Wall seconds of training recorded in the checkpoint in ``directory`` (0 if there is none,
    or if it was written before checkpoints recorded time)."""
    meta_path = Path(directory) / META_FILE
    if not has_state(directory):
        return 0.0
    try:
        return float(json.loads(meta_path.read_text()).get("train_seconds", 0.0))
    except (OSError, ValueError, TypeError):
        return 0.0


def _comparable(config: dict[str, Any], ignore: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in ignore}


def load_state(directory: str | Path, state: TrainState, *,
               ignore: tuple[str, ...] = ("epochs", "steps", "quiet", "resume", "device",
                                          "purify_cache")) -> tuple[int, int]:
    """Restore a checkpoint written by ``save_state`` into ``state`` in place; returns (step, epoch).

    The checkpoint's config must equal ``state.config`` except for the keys in ``ignore``."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if not has_state(directory):
        raise InputError(f"no training checkpoint in {directory}; run without --resume to start fresh")
    meta = json.loads((directory / META_FILE).read_text())
    if meta.get("format") != FORMAT:
        raise InputError(f"{directory / META_FILE} is not a diffsmooth training state; point --checkpoint-dir elsewhere")
    theirs, ours = _comparable(meta["config"], ignore), _comparable(json.loads(json.dumps(state.config)), ignore)
    if theirs != ours:
        diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise InputError(f"the checkpoint in {directory} was made with different settings ({', '.join(diff)}); "
                         "resume with the original options or use a new --checkpoint-dir")
    tensors = load_file(str(directory / STATE_FILE), device="cpu")
    state.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if state.ema is not None:
        state.ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    state.optimizer.load_state_dict(unflatten_optimizer(tensors, meta["optimizer"]))
    for name, g in state.generators.items():
        g.set_state(tensors[f"rng.{name}"])
    return int(meta["step"]), int(meta["epoch"])


def resume_state(directory: str | Path, state: TrainState) -> tuple[int, int]:
    """``load_state`` for ``--resume``: a missing checkpoint is named with the fix."""
    if not has_state(directory):
        raise InputError(f"--resume: no checkpoint in {directory}; run without --resume to start fresh")
    return load_state(directory, state)


PACK_MAGIC = b"diffsmooth-packed-v1\n"


def pack_file(src: str | Path, dest: str | Path) -> int:
    """Write ``src`` (e.g. a ``state.safetensors``) to ``dest`` losslessly packed, for keeping a
    training state in the repository: the bytes of each 4-byte word regrouped (all first bytes, then all
    second bytes, ...: float32 exponents end up together) and xz-compressed, about 0.8x of a float32
    state where xz alone gives 0.9x. Returns the packed size in bytes; ``unpack_file`` inverts it."""
    import lzma

    import numpy as np

    raw = np.frombuffer(Path(src).read_bytes(), dtype=np.uint8)
    words = len(raw) // 4 * 4
    shuffled = raw[:words].reshape(-1, 4).T.tobytes() + raw[words:].tobytes()
    body = PACK_MAGIC + len(raw).to_bytes(8, "little") + lzma.compress(shuffled, preset=9)
    tmp = Path(dest).with_name(Path(dest).name + ".tmp")
    tmp.write_bytes(body)
    tmp.replace(dest)
    return len(body)


def unpack_file(src: str | Path, dest: str | Path) -> None:
    """Inverse of ``pack_file``: the original bytes of the packed ``src`` into ``dest`` (atomically)."""
    import lzma

    import numpy as np

    body = Path(src).read_bytes()
    if not body.startswith(PACK_MAGIC):
        raise InputError(f"{src} is not a file packed by diffsmooth.training.state.pack_file; keep the state again")
    head = len(PACK_MAGIC)
    size = int.from_bytes(body[head:head + 8], "little")
    try:
        shuffled = np.frombuffer(lzma.decompress(body[head + 8:]), dtype=np.uint8)
    except lzma.LZMAError as err:
        raise InputError(f"{src} is damaged ({err}); keep the state again") from None
    if len(shuffled) != size:
        raise InputError(f"{src} is damaged (unpacks to {len(shuffled)} bytes, not {size}); keep the state again")
    words = size // 4 * 4
    raw = shuffled[:words].reshape(4, -1).T.tobytes() + shuffled[words:].tobytes()
    tmp = Path(dest).with_name(Path(dest).name + ".tmp")
    tmp.write_bytes(raw)
    tmp.replace(dest)
