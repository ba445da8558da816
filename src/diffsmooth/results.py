"""The results store: every file of a run, in one place.

A run with ``--out OUT`` owns these files and no others:

- ``OUT``: the Cohen et al. TSV that existing analysis scripts read.  CERTIFY rows:
  ``idx label predict radius correct time`` (predict -1 = abstain, radius 0 then);
  PREDICT rows: ``idx label predict correct time``; time as ``h:mm:ss.ffffff``.  Extra
  columns may follow Cohen's (e.g. ``samples`` for sequential certification).
- ``OUT.json``: the manifest (settings, models, environment, throughput), written atomically.
- ``OUT.lock``: held (``fcntl.flock``) while a process writes, so that a second process on the
  same ``OUT`` stops with a message instead of interleaving rows; removed at the end.
- ``OUT.part<r>`` (+ ``.json``, ``.lock``): the rows of torchrun rank ``r``, merged into ``OUT``
  by rank 0 at the end.

Rows are written as each group of images completes (one image when ``n`` is at least the
batch size; several when their samples share batches), flushed and fsynced; a crash loses at
most the group in flight, and a torn last line is cut on resume.  Nothing is created, truncated
or replaced before ``ResultsStore.check`` has passed, and files that do not look like ours
(a TSV without our header, a JSON without our manifest's keys) are never replaced.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import math
import os
import platform
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffsmooth.errors import InputError
from diffsmooth.files import atomic_write_text

HEADERS = {
    "certify": ("idx", "label", "predict", "radius", "correct", "time"),
    "predict": ("idx", "label", "predict", "correct", "time"),
}


@dataclass(frozen=True)
class Row:
    """One image's outcome; ``predict`` is -1 for abstain, ``radius`` None for PREDICT rows.

    ``extra`` holds the values of columns after Cohen's (name -> text), in header order.
    """

    idx: int
    label: int
    predict: int
    correct: int
    seconds: float
    radius: float | None = None
    extra: tuple[tuple[str, str], ...] = ()

    def to_fields(self, mode: str) -> list[str]:
        time = format_time(self.seconds)
        extra = [value for _, value in self.extra]
        if mode == "certify":
            return [str(self.idx), str(self.label), str(self.predict), f"{self.radius:.6g}", str(self.correct), time,
                    *extra]
        return [str(self.idx), str(self.label), str(self.predict), str(self.correct), time, *extra]


def format_time(seconds: float) -> str:
    """``h:mm:ss.ffffff`` as Cohen et al.'s scripts write it (always with microseconds)."""
    text = str(datetime.timedelta(seconds=seconds))
    return text if "." in text else text + ".000000"


def parse_time(text: str) -> float:
    h, m, s = text.split(":")
    value = int(h) * 3600 + int(m) * 60 + float(s)
    if not math.isfinite(value) or value < 0:
        raise ValueError(text)
    return value


def manifest_path(results: Path) -> Path:
    return Path(results).with_name(Path(results).name + ".json")


def lock_path(results: Path) -> Path:
    return Path(results).with_name(Path(results).name + ".lock")


def part_path(out: Path, rank: int) -> Path:
    """The part file that torchrun rank ``rank`` writes for results file ``out``."""
    out = Path(out)
    return out.with_name(f"{out.name}.part{rank}")


def part_paths(out: Path) -> list[Path]:
    """Every part file of ``out`` present now (of any earlier world size), by rank."""
    out = Path(out)
    if not out.parent.is_dir():
        return []
    pattern = re.compile(re.escape(out.name) + r"\.part(\d+)")
    found = [(int(m.group(1)), p) for p in out.parent.iterdir() if (m := pattern.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


# ---- reading ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Results:
    """A results TSV as read: its mode, extra column names, complete rows, and whether a torn
    (unterminated, unparsable) last line of the writer's own file was dropped."""

    mode: str
    columns: tuple[str, ...]
    rows: list[Row]
    dropped_torn_line: bool = False


def _mode_of(header: tuple[str, ...]) -> tuple[str, tuple[str, ...]] | None:
    for mode, cohen in HEADERS.items():
        if header[: len(cohen)] == cohen and (mode != "predict" or "radius" not in header):
            extra = header[len(cohen):]
            if all(re.fullmatch(r"[a-z_][a-z0-9_]*", name) for name in extra):
                return mode, extra
    return None


def _parse_row(mode: str, extra: tuple[str, ...], fields: list[str]) -> Row:
    width = len(HEADERS[mode]) + len(extra)
    if len(fields) != width:
        raise ValueError(f"{len(fields)} columns instead of {width}")
    tail = tuple(zip(extra, fields[len(HEADERS[mode]):]))
    if mode == "certify":
        idx, label, predict, radius, correct, time = fields[:6]
        row = Row(int(idx), int(label), int(predict), int(correct), parse_time(time), float(radius), tail)
    else:
        idx, label, predict, correct, time = fields[:5]
        row = Row(int(idx), int(label), int(predict), int(correct), parse_time(time), None, tail)
    _check_row(row)
    return row


def _check_row(row: Row) -> None:
    """The invariants every row of ours satisfies; raises ValueError naming the broken one."""
    if row.idx < 0 or row.label < 0 or row.predict < -1:
        raise ValueError("idx and label must be >= 0 and predict >= -1")
    if row.correct != int(row.predict == row.label):
        raise ValueError(f"correct is {row.correct} but predict {row.predict} vs label {row.label} says otherwise")
    if row.radius is not None:
        if not (math.isfinite(row.radius) and row.radius >= 0):
            raise ValueError(f"radius {row.radius} is not a finite number >= 0")
        if row.predict == -1 and row.radius != 0:
            raise ValueError(f"an abstention (predict -1) must have radius 0, not {row.radius}")


def read_results(path: Path, writer_file: bool | None = None) -> Results:
    """Read and validate a results TSV.

    Every row must parse and satisfy the invariants (``correct`` consistent with
    ``predict``/``label``, radius finite, >= 0 and 0 for abstentions, idx unique); the first bad
    line is named.  An unterminated last line is a torn write when the file is the writer's own
    (``writer_file``; by default: its manifest exists): it is dropped and reported in
    ``dropped_torn_line``.  In a hand-written file it is read like any other line.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"results file {path} does not exist; give the path of a TSV written by `diffsmooth certify`")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a text file; give the path of a TSV written by `diffsmooth certify`") from None
    except OSError as err:
        raise InputError(f"cannot read {path} ({err.strerror}); check the path and its permissions") from None
    lines = text.split("\n")
    found = _mode_of(tuple(lines[0].split("\t")))
    if found is None:
        raise InputError(
            f"{path} does not start with a results header ({' '.join(HEADERS['certify'])}); is it a diffsmooth/Cohen TSV?"
        )
    mode, extra = found
    if writer_file is None:
        writer_file = manifest_path(path).is_file()
    body, last = lines[1:-1], lines[-1]
    dropped = False
    if last:
        if writer_file:
            dropped = True
        else:
            body.append(last)
    rows: list[Row] = []
    seen: dict[int, int] = {}
    for number, line in enumerate(body, start=2):
        try:
            row = _parse_row(mode, extra, line.split("\t"))
        except ValueError as err:
            raise InputError(f"{path} line {number} is not a valid {mode} row ({err}): {line[:120]!r}; "
                             "fix or remove that line") from None
        if row.idx in seen:
            raise InputError(f"{path} holds two rows for idx {row.idx} (lines {seen[row.idx]} and {number}); "
                             "remove one (was the file written by two processes at once?)")
        seen[row.idx] = number
        rows.append(row)
    return Results(mode, extra, rows, dropped)


def read_rows(path: Path) -> tuple[str, list[Row]]:
    """``(mode, rows)`` of a results TSV (see ``read_results``)."""
    results = read_results(path)
    return results.mode, results.rows


def read_manifest(path: Path) -> dict[str, Any]:
    """A manifest written by ``ResultsStore``; ``InputError`` naming the fix otherwise."""
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"manifest {path} is missing; rerun with --overwrite to start the results afresh") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"manifest {path} is not valid JSON ({err}); rerun with --overwrite") from None
    if not _is_manifest(doc):
        raise InputError(f"{path} is not a diffsmooth results manifest; move it away or choose another --out")
    return doc


def _is_manifest(doc: Any) -> bool:
    return isinstance(doc, dict) and isinstance(doc.get("spec"), dict) and doc["spec"].get("mode") in HEADERS


def _owned_manifest(path: Path) -> bool:
    """Whether ``path`` is absent or a manifest of ours (which a run of the same OUT may replace)."""
    if not path.exists() and not path.is_symlink():
        return True
    try:
        return _is_manifest(json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False


def _owned_results(path: Path) -> bool:
    """Whether ``path`` is absent or starts with a results header."""
    if not path.exists() and not path.is_symlink():
        return True
    try:
        with path.open("rb") as f:
            first = f.readline(4096).decode("utf-8").rstrip("\n")
    except (OSError, UnicodeDecodeError):
        return False
    return _mode_of(tuple(first.split("\t"))) is not None


# ---- writing ----------------------------------------------------------------------------------

def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write a manifest atomically."""
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")


def _header(mode: str, columns: Sequence[str]) -> str:
    return "\t".join((*HEADERS[mode], *columns)) + "\n"


def write_results(path: Path, mode: str, rows: Iterable[Row], columns: Sequence[str] = ()) -> None:
    """Write a whole results TSV atomically."""
    body = "".join("\t".join(row.to_fields(mode)) + "\n" for row in rows)
    atomic_write_text(path, _header(mode, columns) + body)


def _cut_torn_line(path: Path) -> None:
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)


class _Lock:
    """An exclusive ``flock`` on ``OUT.lock``, refusing (not waiting) when another process holds it."""

    def __init__(self, results: Path) -> None:
        self.path = lock_path(results)
        self._fd: int | None = None

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in (errno.EAGAIN, errno.EACCES):
                    raise InputError(
                        f"another diffsmooth process is writing {self.path.with_suffix('')} (it holds {self.path.name}); "
                        "wait for it to finish or choose another --out"
                    ) from None
                raise
            # The holder before us may have removed the file after we opened it: lock the live one.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return
            os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None


def environment(device: Any) -> dict[str, Any]:
    """Versions, commit and device for the manifest."""
    import torch

    import diffsmooth
    from diffsmooth.files import git_commit

    device = torch.device(device)
    return {
        "diffsmooth": diffsmooth.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "git_commit": git_commit(),
    }


def throughput(rows: Sequence[Row], samples_per_image: int, wall_seconds: float | None = None) -> dict[str, Any]:
    """Images, seconds (summed over rows) and rates for the manifest."""
    seconds = sum(r.seconds for r in rows)
    out: dict[str, Any] = {
        "images": len(rows),
        "seconds": seconds,
        "noise_samples_per_second": len(rows) * samples_per_image / seconds if seconds else None,
        "seconds_per_image": seconds / len(rows) if rows else None,
    }
    if wall_seconds is not None:
        out["wall_seconds"] = wall_seconds
        out["images_per_second"] = len(rows) / wall_seconds if wall_seconds > 0 else None
    return out


def _diff(old: dict[str, Any], new: dict[str, Any], defaults: dict[str, Any] | None = None,
          prefix: str = "") -> list[str]:
    """Names of the settings that differ.  A setting absent from an older manifest was added
    later with its default behaviour, so it matches a new run that keeps it off (False/None) or at
    its default (``defaults``: the same nesting as the specs)."""
    defaults = defaults or {}
    out = []
    for key in set(old) | set(new):
        a, b, d = old.get(key), new.get(key), defaults.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, d if isinstance(d, dict) else {}, f"{prefix}{key}.")
        elif a != b and not (key not in old and (b in (False, None) or (key in defaults and b == d))):
            out.append(f"{prefix}{key}")
    return out


@dataclass
class Sink:
    """Where one process appends its rows (``OUT`` or its part file); see ``ResultsStore.writing``."""

    path: Path
    mode: str
    columns: tuple[str, ...]
    rows: list[Row] = field(default_factory=list)
    skip: frozenset[int] = frozenset()  # indices this file holds already (a resumed grid re-runs them)
    _file: Any = None

    def write(self, rows: Iterable[Row]) -> None:
        """Append rows, flushed and fsynced together."""
        rows = [row for row in rows if row.idx not in self.skip]
        for row in rows:
            _check_row(row)
            if tuple(name for name, _ in row.extra) != self.columns:
                raise RuntimeError(f"row columns {[n for n, _ in row.extra]} do not match the file's {list(self.columns)}")
        self._file.write("".join("\t".join(row.to_fields(self.mode)) + "\n" for row in rows))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.rows += rows


class ResultsStore:
    """The files of one run with results file ``out`` (see the module docstring).

    Args:
        out: results TSV path; the manifest is ``out`` + ".json".
        spec: the run's settings (``RunSpec.to_dict()``); a resumed run must match them.
        mode: "certify" or "predict".
        resume, overwrite: continue an existing file, or replace it (exclusive).
        columns: extra TSV columns after Cohen's.

    Use: ``done = store.check()`` (reads only) before loading models; then
    ``with store.writing(manifest, rank) as sink: sink.write(rows)``; under torchrun, rank 0
    ``store.merge(indices, world_size, wall)`` once every rank has finished.
    """

    def __init__(self, out: Path, spec: dict[str, Any], *, resume: bool = False, overwrite: bool = False,
                 columns: Sequence[str] = (), defaults: dict[str, Any] | None = None) -> None:
        self.defaults = defaults or {}
        self.done: set[int] = set()
        self.out = Path(out)
        self.spec = spec
        self.mode = str(spec["mode"])
        self.resume = resume
        self.overwrite = overwrite
        self.columns = tuple(columns)
        self._checked = False

    # -- checks (read only) --------------------------------------------------------------------

    def check(self, parts: bool = True) -> set[int]:
        """Check ``out`` (and its part files) against resume/overwrite and the spec; returns the
        indices already done.  Writes nothing."""
        out = self.out
        if self.resume and self.overwrite:
            raise InputError("--resume and --overwrite exclude each other; pick one")
        if str(out).endswith(os.sep) or out.is_dir():
            raise InputError(f"--out {out} is a folder; give a file name inside it, e.g. {out / 'results.tsv'}")
        if not out.parent.is_dir():
            raise InputError(f"output folder {out.parent} does not exist; create it first")
        if not os.access(out.parent, os.W_OK):
            raise InputError(f"output folder {out.parent} is not writable; choose another --out")
        for path, owned, what in ((out, _owned_results, "a results TSV"),
                                  (manifest_path(out), _owned_manifest, "a diffsmooth results manifest")):
            if not owned(path):
                raise InputError(f"{path} exists and is not {what}; it is left alone: move it or choose another --out")
        found = part_paths(out) if parts else []
        exists = out.exists() or out.is_symlink()
        if (exists or found) and not (self.resume or self.overwrite):
            what = f"{out} exists" if exists else f"{out} has part files of an unfinished multi-process run ({found[0].name} ...)"
            raise InputError(f"{what}; pass --resume to continue it or --overwrite to replace it")
        if manifest_path(out).exists() and not exists and not found and not self.overwrite:
            raise InputError(f"{manifest_path(out)} exists without its results file {out.name}; "
                             "pass --overwrite to replace it or choose another --out")
        done: set[int] = set()
        if self.resume:
            for path in ([out] if exists else []) + found:
                done |= self._resumable(path)
        self._checked = True
        self.done = done
        return done

    def expect_new(self) -> None:
        """Accept, without looking, that ``out`` is new: its folder does not exist yet (a grid's
        ``--out-dir``) and is created just before writing."""
        if self.resume and self.overwrite:
            raise InputError("--resume and --overwrite exclude each other; pick one")
        self.done = set()
        self._checked = True

    def _resumable(self, path: Path) -> set[int]:
        results = read_results(path, writer_file=True)
        old = read_manifest(manifest_path(path)).get("spec", {})
        differ = sorted(_diff(old, self.spec, self.defaults))
        if results.mode != self.mode or differ or results.columns != self.columns:
            raise InputError(
                f"cannot resume {path}: it was written with different settings ({', '.join(differ) or 'mode'}); "
                "use the same settings, a new --out, or --overwrite"
            )
        return {row.idx for row in results.rows}

    # -- writing -------------------------------------------------------------------------------

    def target(self, rank: int | None) -> Path:
        """The file this process appends to: ``out``, or its part file under torchrun."""
        return self.out if rank is None else part_path(self.out, rank)

    @contextmanager
    def writing(self, manifest: dict[str, Any], rank: int | None = None,
                clear_parts: Sequence[Path] | None = None) -> Iterator[Sink]:
        """Lock, write the manifest ("running"), open the TSV, yield a ``Sink``; at the end write the
        manifest "finished" with the throughput of the rows written now.

        With ``overwrite`` the old ``out`` (a symlink itself, never its target) and ``clear_parts``
        (stale part files no rank of this run writes) are removed once the lock is held.
        """
        if not self._checked:
            raise RuntimeError("ResultsStore.check() must pass before writing")
        path = self.target(rank)
        lock = _Lock(path)
        lock.acquire()
        try:
            resuming = self.resume and path.exists()
            if self.overwrite:
                for old in ([self.out] if rank in (None, 0) else []) + [path, *(clear_parts or ())]:
                    _remove_results(old)
            manifest = {**manifest, "spec": self.spec}
            write_manifest(manifest_path(path), {**manifest, "status": "running"})
            if resuming:
                _cut_torn_line(path)
                handle = path.open("a")
            else:
                handle = path.open("x")
                handle.write(_header(self.mode, self.columns))
                handle.flush()
            sink = Sink(path, self.mode, self.columns, skip=frozenset(self.done), _file=handle)
            try:
                yield sink
            finally:
                handle.close()
            samples = self.spec.get("n", 0) + (self.spec.get("n0", 0) if self.mode == "certify" else 0)
            write_manifest(manifest_path(path), {**manifest, "status": "finished",
                                                 "throughput": throughput(sink.rows, samples)})
        finally:
            lock.release()

    def merge(self, indices: Sequence[int], world_size: int, wall_seconds: float) -> list[Row]:
        """Merge ``out`` (if present) and all its part files into ``out`` sorted by idx, with one
        manifest; then remove the parts.  Returns the merged rows.

        The manifest is written first and the TSV replaced atomically, so a crash at any point
        leaves files that ``--resume`` accepts; parts go only after the TSV is in place.
        """
        out = self.out
        lock = _Lock(out)
        lock.acquire()
        try:
            parts = part_paths(out)
            rows: dict[int, Row] = {}
            for path in ([out] if out.exists() else []) + parts:
                for row in read_results(path, writer_file=True).rows:
                    rows.setdefault(row.idx, row)  # seeding per index makes duplicates across files identical
            missing = [i for i in indices if i not in rows]
            if missing:
                raise InputError(
                    f"merging into {out}: {len(missing)} image(s) have no row (e.g. {missing[:5]}); is --out on a "
                    "file system that every node shares? The part files are kept; rerun with --resume"
                )
            merged = sorted(rows.values(), key=lambda row: row.idx)
            ranks = [read_manifest(manifest_path(part_path(out, r))) for r in range(world_size)]
            write_manifest(manifest_path(out), self._merged_manifest(ranks, merged, world_size, wall_seconds))
            write_results(out, self.mode, merged, self.columns)
            for part in parts:
                _remove_results(part)
            return merged
        finally:
            lock.release()

    def _merged_manifest(self, ranks: list[dict[str, Any]], merged: list[Row], world_size: int,
                         wall: float) -> dict[str, Any]:
        first = {k: v for k, v in ranks[0].items() if k not in ("throughput", "distributed", "status")}
        per_rank = [m.get("throughput") or {} for m in ranks]
        images = sum(t.get("images", 0) for t in per_rank)
        samples = self.spec.get("n", 0) + (self.spec.get("n0", 0) if self.mode == "certify" else 0)
        total = {
            "images": images,
            "seconds": sum(t.get("seconds", 0.0) for t in per_rank),  # summed over processes
            "wall_seconds": wall,
            "images_per_second": images / wall if wall > 0 else None,
            "noise_samples_per_second": images * samples / wall if wall > 0 else None,
            "seconds_per_image": sum(t.get("seconds", 0.0) for t in per_rank) / images if images else None,
        }
        ranks_info = [{"rank": r, "device": m.get("environment", {}).get("device"), "throughput": t}
                      for r, (m, t) in enumerate(zip(ranks, per_rank))]
        return {**first, "status": "finished", "throughput": total,
                "distributed": {"split": "images", "world_size": world_size, "ranks": ranks_info}}


def _remove_results(path: Path) -> None:
    """Remove a results file of ours and its manifest (a symlink itself, not its target)."""
    for p in (path, manifest_path(path)):
        if p.is_symlink() or p.exists():
            p.unlink()


# ---- several results files of one run -----------------------------------------------------------

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
    return [{**entry, "path": Path(folder) / entry["file"]} for entry in doc["runs"]]


class StoreSet:
    """The files of a run that writes one results file per configuration into ``out_dir``, plus
    ``index.json`` listing them (label, file name, settings).

    Each file is a ``ResultsStore`` of its own, with the manifest a single run of that
    configuration writes, so a file of a grid can be resumed or analysed alone.  An image is
    done when every file holds it; a file that already has it skips its row on resume.
    """

    def __init__(self, out_dir: Path, entries: dict[str, tuple[str, dict[str, Any]]], *, resume: bool = False,
                 overwrite: bool = False, columns: Sequence[str] = (), defaults: dict[str, Any] | None = None) -> None:
        self.out = Path(out_dir)
        self.entries = entries
        self.resume, self.overwrite = resume, overwrite
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
                ours = json.loads(index.read_text()).get("format") == INDEX_FORMAT
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
                ours = False
            if not ours:
                raise InputError(f"{index} exists and is not a diffsmooth results index; it is left alone: "
                                 "choose another --out-dir")
        done_sets = [store.check(parts) for store in self.stores.values()]
        return set.intersection(*done_sets) if done_sets else set()

    @contextmanager
    def writing(self, manifest: dict[str, Any], rank: int | None = None,
                clear_parts: dict[str, Sequence[Path]] | None = None) -> Iterator[dict[str, Sink]]:
        """Create the folder, write the index, and yield one ``Sink`` per configuration."""
        from contextlib import ExitStack

        self.out.mkdir(exist_ok=True)
        if rank in (None, 0):
            write_manifest(self.out / INDEX_NAME, {
                "format": INDEX_FORMAT,
                "runs": [{"label": label, "file": name, "spec": spec} for label, (name, spec) in self.entries.items()],
            })
        with ExitStack() as stack:
            sinks = {label: stack.enter_context(store.writing(
                {**manifest, "base": manifest.get("base", {}).get("configurations", {}).get(label, manifest.get("base")),
                 "grid": {"index": INDEX_NAME, "label": label}},
                rank, (clear_parts or {}).get(label, ())))
                for label, store in self.stores.items()}
            yield sinks

    def merge(self, indices: Sequence[int], world_size: int, wall_seconds: float) -> dict[str, list[Row]]:
        return {label: store.merge(indices, world_size, wall_seconds) for label, store in self.stores.items()}
