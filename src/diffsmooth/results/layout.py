"""Which files a run writes, by name: one TSV, a grid's folder, an attack's folder.

The only place where results file names are made:

- ``--out OUT``: ``OUT`` (+ ``OUT.json``), one configuration;
- a grid (``certify --out-dir DIR``): ``DIR/<label>.tsv`` per configuration, the label saying its
  settings (``configuration_label``), and ``DIR/index.json``;
- an attack (``attack --out-dir DIR``): ``DIR/attack_eps<eps>.tsv`` per radius, and ``DIR/index.json``.

Settings arrive as the dicts that manifests record (``RunSpec.to_dict()``), so this module needs
nothing above it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diffsmooth.results.sets import INDEX_NAME, StoreSet, read_index
from diffsmooth.results.store import ResultsStore, manifest_path, read_manifest
from diffsmooth.validate import InputError

SEQUENTIAL_COLUMNS = ("samples",)
"""Extra column of a sequential run's TSV: the estimation samples the image used (after Cohen's)."""
ATTACK_COLUMNS = ("norm", "loss")
"""Extra columns of an attack's TSVs: the perturbation's l2 norm and the attack's final loss."""


def configuration_label(method: dict[str, Any]) -> str:
    """A file-name-safe name that says a configuration's settings (``MethodSpec.to_dict()``), e.g.
    ``diffsmooth_sigma0.5_m5_ls0.25_soft``."""
    label = f"{method['method']}_sigma{method['sigma']:g}"
    if method["method"] == "diffsmooth":
        label += f"_m{method['m']}_ls{method['local_sigma']:g}_{method['vote']}"
        if method["local_noise"] != "fixed" or method["local_noise_seed"] != 42:
            label += f"_{method['local_noise']}{method['local_noise_seed']}"
    if method.get("classifier") is not None:
        label += "_" + _model_name(method["classifier"])
    return label


GENERIC_NAMES = ("model", "checkpoint", "pytorch_model", "weights", "best", "last", "final")
"""File names that say nothing of the model (Cohen et al.'s checkpoint.pth.tar, a trainer's model.*):
the folder's name goes before them in a label."""


MODEL_SUFFIXES = (".pth.tar", ".safetensors", ".json", ".pth", ".pt", ".bin", ".tar", ".ckpt")


def _model_name(path: str) -> str:
    """A model's name in a label: its file name without its model-file extension (a shipped name keeps
    its dots: ``fmnist_cnn_gaussian_0.25``), after its folder's where that name is generic
    (``noise_0.25/checkpoint.pth.tar`` -> ``noise_0.25-checkpoint``)."""
    p = Path(path)
    stem = next((p.name[: -len(x)] for x in MODEL_SUFFIXES if p.name.endswith(x)), p.name)
    return f"{p.parent.name}-{stem}" if stem in GENERIC_NAMES and p.parent.name else stem


def attack_label(eps: float) -> str:
    """The label of an attack's file at radius ``eps``."""
    return f"eps{eps:g}"


def run_store(spec: dict[str, Any], out: Path, *, resume: bool, overwrite: bool,
              defaults: dict[str, Any] | None = None) -> ResultsStore:
    """The files of one configuration's run: ``out`` and its manifest."""
    columns = SEQUENTIAL_COLUMNS if spec.get("sampling") == "sequential" else ()
    return ResultsStore(out, spec, resume=resume, overwrite=overwrite, columns=columns, defaults=defaults)


def grid_store(specs: Sequence[dict[str, Any]], out_dir: Path, *, resume: bool, overwrite: bool,
               defaults: dict[str, Any] | None = None) -> StoreSet:
    """The files of a grid: per configuration, the file and manifest a separate run of its spec writes."""
    entries: dict[str, tuple[str, dict[str, Any]]] = {}
    for spec in specs:
        label = configuration_label(spec["method"])
        if label in entries:
            first, this = entries[label][1]["method"], spec["method"]
            if first != this:  # different settings, one file name: the label is made of file names
                differ = sorted(k for k in set(first) | set(this) if first.get(k) != this.get(k))
                raise InputError(f"two configurations of the grid would both be written to {label}.tsv: they differ "
                                 f"only in {', '.join(differ)} ({', '.join(str(first.get(k)) for k in differ)} vs "
                                 f"{', '.join(str(this.get(k)) for k in differ)}), whose file names are the same; "
                                 "rename one of the files, or certify them into separate --out-dir folders")
            raise InputError("two configurations of the grid are the same; give each setting once")
        entries[label] = (label + ".tsv", spec)
    columns = SEQUENTIAL_COLUMNS if specs and specs[0].get("sampling") == "sequential" else ()
    return StoreSet(Path(out_dir), entries, resume=resume, overwrite=overwrite, columns=columns, defaults=defaults)


def attack_store(spec: dict[str, Any], eps: Sequence[float], out_dir: Path, *, resume: bool, overwrite: bool,
                 defaults: dict[str, Any] | None = None) -> StoreSet:
    """An attack's files: per eps, a PREDICT TSV (``idx label predict correct time norm loss``) of the
    attacked points; each manifest records the whole spec (an image's radii share its generator)."""
    entries = {attack_label(e): (f"attack_{attack_label(e)}.tsv", {**spec, "file_eps": e}) for e in eps}
    return StoreSet(Path(out_dir), entries, resume=resume, overwrite=overwrite, columns=ATTACK_COLUMNS,
                    defaults=defaults)


def grid_files(out_dir: Path, methods: Sequence[dict[str, Any]]) -> dict[str, Path]:
    """The results file of each configuration (``MethodSpec.to_dict()``) of a grid in ``out_dir``, by label."""
    return {configuration_label(m): Path(out_dir) / f"{configuration_label(m)}.tsv" for m in methods}


def recorded_spec(out: Path, grid: bool) -> dict[str, Any] | None:
    """The spec recorded by the run being resumed at ``out`` (a results file, or a grid's folder:
    its first configuration's), or None when there is none yet."""
    if grid:
        if not (Path(out) / INDEX_NAME).is_file():
            return None
        out = read_index(out)[0]["path"]
    path = manifest_path(out)
    return read_manifest(path)["spec"] if path.is_file() else None
