"""Model files: weights with the JSON config that says what builds them, and foreign checkpoints.

One home for every model family (classifiers, DnCNN denoisers, diffusion models), in the spirit
of diffusers' ``ConfigMixin`` / ``save_pretrained``: a family declares its ``ModelFormat`` (the
``"format"`` tag of its JSON, the function users save with, the keys its JSON needs) and keeps
only what is its own: its config dataclass, how it builds the network, its foreign formats.
``ModelFormat`` does the rest:

- where the files are (``paths``, ``find``): the pair layout ``x.safetensors`` + ``x.json``,
  named by any of ``x``, ``x.safetensors``, ``x.json``; and the folder layout ``DIR/config.json``
  + ``DIR/model.safetensors`` (diffusion models; ``x.safetensors`` with a tagged ``x.json`` or
  ``config.json`` beside it is found too);
- writing (``save``): the document is checked JSON-serializable and the weights finite before
  any file is written; then the weights (safetensors, header ``{"format": tag}``) and the JSON,
  each atomically, the JSON recording the weights' SHA-256;
- reading (``read``): JSON errors, the format tag, unknown and missing keys, missing weights,
  damaged or non-finite weights each raise a one-line ``InputError`` naming the file and the fix.

The JSON on disk (``format_version`` 1, unchanged since the first release): ``format``,
``format_version``, the family's fields, ``weights`` (the weights' file name) and
``weights_sha256``, written with sorted keys and an indent of 2.

Foreign torch files (Cohen et al.'s ``.pth.tar``, Salman et al.'s DnCNNs, bare state dicts) are
read by ``read_state_file`` with ``torch.load(weights_only=True)``: pickled code is refused,
never run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from diffsmooth.files import file_sha256, read_json_object, save_safetensors, write_json
from diffsmooth.validate import InputError

if TYPE_CHECKING:
    from torch import Tensor, nn

T = TypeVar("T")
M = TypeVar("M", bound="nn.Module")

FORMAT_VERSION = 1
WEIGHTS_SUFFIX = ".safetensors"
CONFIG_SUFFIX = ".json"
FOLDER_CONFIG = "config.json"
FOLDER_WEIGHTS = "model.safetensors"


def pair_paths(path: str | Path) -> tuple[Path, Path]:
    """(weights ``x.safetensors``, config ``x.json``) for any of ``x``, ``x.safetensors``, ``x.json``."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (WEIGHTS_SUFFIX, CONFIG_SUFFIX) else path
    return stem.with_name(stem.name + WEIGHTS_SUFFIX), stem.with_name(stem.name + CONFIG_SUFFIX)


def known_keys(fields: Iterable[str]) -> frozenset[str]:
    """A family's ``fields`` plus the keys every model JSON holds (for ``ModelFormat.known``)."""
    return frozenset(fields) | {"format", "format_version", "weights", "weights_sha256"}


@dataclass(frozen=True)
class SavedModel:
    """A saved model read back by ``ModelFormat.read``.

    Attributes:
        doc: the JSON document (all keys, including ``format`` and ``weights_sha256``).
        state: the weights, CPU tensors as stored (dtype unchanged), all finite.
        weights, config: the two files; sha256: hex SHA-256 of the weights file as it is now.
        saver: the function that writes this format, for messages.
    """

    doc: dict[str, Any]
    state: dict[str, Tensor]
    weights: Path
    config: Path
    sha256: str
    saver: str

    def parse(self, build: Callable[[dict[str, Any]], T]) -> T:
        """``build(doc)`` (a config's ``from_dict``); a KeyError/TypeError/ValueError it raises is
        named as a bad field of this file, an ``InputError`` (a value out of range) as this file's."""
        try:
            return build(self.doc)
        except InputError as err:
            raise InputError(f"{self.config}: {err}; fix the file or re-save it with {self.saver}") from None
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"{self.config} has an invalid field ({err}); re-save it with {self.saver}") from None


@dataclass(frozen=True)
class ModelFormat:
    """One family's saved-model format.

    Attributes:
        tag: the ``"format"`` value of its JSON, e.g. ``"diffsmooth-classifier"``.
        saver: the public function that writes it (named in messages), e.g. ``"save_classifier"``.
        required: keys its JSON must hold besides the common ones.
        known: every key its JSON may hold (common ones included); None accepts any.
        folder: saved as ``DIR/config.json`` + ``DIR/model.safetensors`` instead of a file pair.
    """

    tag: str
    saver: str
    required: tuple[str, ...] = ()
    known: frozenset[str] | None = None
    folder: bool = False

    def paths(self, path: str | Path) -> tuple[Path, Path]:
        """(weights, config) that ``save(path, ...)`` writes."""
        path = Path(path)
        return (path / FOLDER_WEIGHTS, path / FOLDER_CONFIG) if self.folder else pair_paths(path)

    def save(self, path: str | Path, state: dict[str, Tensor], fields: dict[str, Any]) -> tuple[Path, Path]:
        """Write ``state`` (safetensors) and ``{format, format_version, **fields, weights,
        weights_sha256}`` (JSON) at ``paths(path)``, each atomically; returns (weights, config).

        Nothing is written when ``fields`` is not JSON-serializable or a weight is NaN/infinite."""
        weights, config = self.paths(path)
        if self.folder and weights.parent.exists() and not weights.parent.is_dir():
            raise InputError(f"{weights.parent} is a file; {self.saver} writes a folder, choose another path")
        doc = {"format": self.tag, "format_version": FORMAT_VERSION, **fields, "weights": weights.name}
        check_json(doc, self.saver)
        check_finite(state, weights)
        weights.parent.mkdir(parents=True, exist_ok=True)
        doc["weights_sha256"] = save_safetensors(weights, state, metadata={"format": self.tag})
        write_json(config, doc)
        return weights, config

    def find(self, path: str | Path) -> tuple[Path | None, Path] | None:
        """(weights, config) of our saved model that ``path`` names, or None when ``path`` is
        something else (a foreign checkpoint, a diffusers folder).  ``weights`` is None where the
        JSON's ``"weights"`` names it (the folder layout)."""
        path = Path(path)
        if not self.folder:
            weights, config = pair_paths(path)
            named = path.suffix in (WEIGHTS_SUFFIX, CONFIG_SUFFIX) or not path.exists()
            return (weights, config) if named and config.is_file() else None
        # config.json is a name other tools use too (diffusers): only a JSON with our tag is ours.
        if path.is_dir():
            candidates: list[tuple[Path | None, Path]] = [(None, path / FOLDER_CONFIG)]
        elif path.suffix == WEIGHTS_SUFFIX:
            candidates = [(path, path.with_suffix(CONFIG_SUFFIX)), (path, path.parent / FOLDER_CONFIG)]
        else:
            candidates = []
        return next(((weights, config) for weights, config in candidates
                     if config.is_file() and read_json_object(config).get("format") == self.tag), None)

    def load(self, path: str | Path) -> SavedModel | None:
        """Our saved model that ``path`` names (``find``), read and checked (``read``); None when
        ``path`` is something else, for the family's foreign readers."""
        found = self.find(path)
        return None if found is None else self.read(found[1], found[0])

    def read(self, config: str | Path, weights: str | Path | None = None) -> SavedModel:
        """The JSON at ``config`` and its weights (``weights``, or the file its ``"weights"`` names
        beside it), checked: our tag, no unknown key, every required key, weights present, readable
        and finite.  Every problem is an ``InputError`` naming the file."""
        config = Path(config)
        doc = read_json_object(config)
        if doc.get("format") != self.tag:
            raise InputError(f"{config} is not a {self.tag} config (no \"format\": \"{self.tag}\"); "
                             f"save the model with {self.saver}")
        unknown = sorted(set(doc) - self.known) if self.known is not None else []
        if unknown:
            raise InputError(f"{config} has unknown key(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(self.known))}; "
                             f"fix the file or re-save it with {self.saver}")
        missing = [k for k in self.required if k not in doc]
        if missing:
            raise InputError(f"{config} lacks {', '.join(missing)}; re-save it with {self.saver}")
        weights = Path(weights) if weights is not None else config.parent / str(doc.get("weights", FOLDER_WEIGHTS))
        if not weights.is_file():
            raise InputError(f"weights {weights} for {config} are missing; copy them next to the JSON")
        return SavedModel(doc, read_safetensors(weights), weights, config, file_sha256(weights), self.saver)


def mark_loaded(model: M, path: str | Path, sha256: str, info: dict[str, Any]) -> M:
    """``model`` in eval mode, stamped with where its weights came from: ``checkpoint_path``,
    ``checkpoint_sha256`` (hex SHA-256 of that file) and ``training_info`` (free-form)."""
    model.checkpoint_sha256 = sha256
    model.checkpoint_path = str(path)
    model.training_info = info
    return model.eval()


# ---- checks ---------------------------------------------------------------------------------------

def check_json(doc: dict[str, Any], what: str) -> None:
    """Refuse, before any file is written, a document JSON cannot store."""
    try:
        json.dumps(doc)
    except TypeError as err:
        raise InputError(f"{what}: the settings and extra info must be JSON-serializable ({err}); "
                         "convert tensors/arrays to numbers or lists") from None


def check_finite(state: dict[str, Any], path: str | Path) -> None:
    """Refuse weights holding NaN or infinite values: they would make every score NaN."""
    import torch

    bad = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
           and not bool(torch.isfinite(v).all())]
    if bad:
        raise InputError(f"{path} holds NaN or infinite weights ({len(bad)} tensor(s), e.g. {bad[0]}); "
                         "the training run diverged or the file is damaged: use another checkpoint")


def few_names(names: list[str], k: int = 5) -> str:
    """The first ``k`` names, and how many more: for messages about mismatched keys."""
    return ", ".join(names[:k]) + (f" (+{len(names) - k} more)" if len(names) > k else "")


def load_state_strictly(model: nn.Module, state: dict[str, Tensor], path: str | Path, what: str, fix: str) -> None:
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


# ---- reading untrusted weights ------------------------------------------------------------------

def read_safetensors(path: str | Path) -> dict[str, Tensor]:
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


def unwrap_state_dict(obj: Any, path: str | Path) -> tuple[dict[str, Tensor], str | None, dict[str, Any]]:
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


def read_state_file(path: str | Path, what: str = "checkpoint") -> tuple[dict[str, Tensor], str | None, dict[str, Any]]:
    """A foreign checkpoint's (state dict, ``arch`` or None, scalar metadata): a bare ``.safetensors``
    state dict, or a torch file (Cohen's ``.pth.tar``, Salman's DnCNN, a bare ``.pth``) read weights-only
    and unwrapped by ``unwrap_state_dict``; all tensors on the CPU and finite.  ``what`` names the
    file in the not-found message, e.g. "denoiser checkpoint"."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} not found; check the path")
    if path.suffix == WEIGHTS_SUFFIX:
        return read_safetensors(path), None, {}
    state, arch, meta = unwrap_state_dict(read_torch(path), path)
    check_finite(state, path)
    return state, arch, meta
