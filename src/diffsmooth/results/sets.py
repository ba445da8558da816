"""A folder of results files written by one run (a grid's configurations, an attack's radii),
listed in ``index.json``."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from diffsmooth.results.store import ResultsStore, Sink, write_manifest
from diffsmooth.results.tsv import Row
from diffsmooth.validate import InputError

INDEX_NAME = "index.json"
INDEX_FORMAT = "diffsmooth-index"


def read_index(folder: Path) -> list[dict[str, Any]]:
    """The entries (``label``, ``file``, ``spec``) of a folder's ``index.json``, files as paths."""
    path = Path(folder) / INDEX_NAME
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{folder} has no {INDEX_NAME}; give results TSVs or a folder written by "
                         "`diffsmooth certify --out-dir`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path} is not valid JSON ({err}); rerun the grid with --overwrite") from None
    if not (isinstance(doc, dict) and doc.get("format") == INDEX_FORMAT and isinstance(doc.get("runs"), list)):
        raise InputError(f"{path} is not a diffsmooth results index; give results TSVs instead")
    for number, entry in enumerate(doc["runs"], start=1):
        problem = _entry_problem(entry)
        if problem:
            raise InputError(f"{path}: run {number} of its \"runs\" {problem}; rerun the grid with --overwrite, "
                             "or give its results TSVs instead")
    return [{**entry, "path": Path(folder) / entry["file"]} for entry in doc["runs"]]


def _entry_problem(entry: object) -> str | None:
    """What is wrong with an entry of an index's ``runs`` (None: nothing)."""
    if not isinstance(entry, dict):
        return f"is {type(entry).__name__}, not an object with label, file and spec"
    for key, kind in (("label", str), ("file", str), ("spec", dict)):
        if not isinstance(entry.get(key), kind):
            return f"has no {key} ({'text' if kind is str else 'an object'})"
    name = entry["file"]
    if not name or Path(name).name != name or name in (".", ".."):
        return f"names the file {name!r}, which is not a file name inside the folder"
    return None


def _kind(spec: dict[str, Any]) -> str:
    """What an index entry's file holds: an attack's rows (its spec names the file's eps) or certify rows."""
    return "attack" if "file_eps" in spec else "certify"


class StoreSet:
    """The files of a run that writes one results file per configuration into ``out_dir``, plus
    ``index.json`` listing them (label, file name, settings).

    Each file is a ``ResultsStore`` of its own, with the manifest a single run of that
    configuration writes, so a file of a grid can be resumed or analysed alone.  An image is
    done when every file holds it; a file that already has it skips its row on resume.  A folder
    that already lists other configurations keeps them in its index (a grid extended by another
    run); one that lists another kind of run (an attack's files beside certify files) is refused.
    """

    def __init__(self, out_dir: Path, entries: dict[str, tuple[str, dict[str, Any]]], *, resume: bool = False,
                 overwrite: bool = False, columns: Sequence[str] = (), defaults: dict[str, Any] | None = None) -> None:
        self.out = Path(out_dir)
        self.entries = entries
        self.resume, self.overwrite = resume, overwrite
        self._kept: list[dict[str, Any]] = []  # other runs listed in the folder's index (check)
        self.stores = {label: ResultsStore(self.out / name, spec, resume=resume, overwrite=overwrite, columns=columns,
                                           defaults=defaults)
                       for label, (name, spec) in entries.items()}
        names = [name for name, _ in entries.values()]
        if len(set(names)) != len(names):
            raise InputError("two configurations of the grid would write the same file; give each setting once")

    def check(self, parts: bool = True) -> set[int]:
        out = self.out
        if out.exists() and not out.is_dir():
            raise InputError(f"--out-dir {out} is a file; give a folder (it is created if missing)")
        if not out.exists():
            if not out.parent.is_dir():
                raise InputError(f"the parent folder of --out-dir {out} does not exist; create it first")
            for store in self.stores.values():
                store.expect_new()
            return set()
        index = out / INDEX_NAME
        if index.exists():
            try:
                doc = json.loads(index.read_text())
                ours = doc.get("format") == INDEX_FORMAT and isinstance(doc.get("runs"), list)
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
                ours = False
            if not ours:
                raise InputError(f"{index} exists and is not a diffsmooth results index; it is left alone: "
                                 "choose another --out-dir")
            # Other runs' entries stay listed; a folder holds certify files or an attack's, not both.
            files = {name for name, _ in self.entries.values()}
            self._kept = [e for e in doc["runs"] if isinstance(e, dict) and e.get("file") not in files
                          and (out / str(e.get("file"))).is_file()]
            kinds = {_kind(e.get("spec", {})) for e in self._kept}
            if kinds - {self._kind()}:
                raise InputError(f"--out-dir {out} holds another kind of run ({', '.join(sorted(kinds))} files listed "
                                 f"in {INDEX_NAME}); write the {self._kind()} into another folder")
        done_sets = [store.check(parts) for store in self.stores.values()]
        return set.intersection(*done_sets) if done_sets else set()

    def _kind(self) -> str:
        return _kind(next(iter(self.entries.values()))[1]) if self.entries else "certify"

    @contextmanager
    def writing(self, manifest: dict[str, Any], rank: int | None = None,
                clear_parts: dict[str, Sequence[Path]] | None = None) -> Iterator[dict[str, Sink]]:
        """Create the folder, write the index, and yield one ``Sink`` per configuration."""
        from contextlib import ExitStack

        self.out.mkdir(exist_ok=True)
        if rank in (None, 0):
            ours = [{"label": label, "file": name, "spec": spec} for label, (name, spec) in self.entries.items()]
            write_manifest(self.out / INDEX_NAME, {"format": INDEX_FORMAT, "runs": self._kept + ours})
        with ExitStack() as stack:
            sinks = {label: stack.enter_context(store.writing(
                {**manifest, "base": manifest.get("base", {}).get("configurations", {}).get(label, manifest.get("base")),
                 "grid": {"index": INDEX_NAME, "label": label}},
                rank, (clear_parts or {}).get(label, ())))
                for label, store in self.stores.items()}
            yield sinks

    def merge(self, indices: Sequence[int], world_size: int, wall_seconds: float) -> dict[str, list[Row]]:
        return {label: store.merge(indices, world_size, wall_seconds) for label, store in self.stores.items()}
