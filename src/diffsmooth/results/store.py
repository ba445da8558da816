"""The files of one run: its TSV, manifest, lock and torchrun part files (``ResultsStore``)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import platform
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffsmooth.files import atomic_write_text
from diffsmooth.results.tsv import (
    HEADERS,
    Row,
    check_row,
    cut_torn_line,
    header_line,
    owned_results,
    read_results,
    write_results,
)
from diffsmooth.validate import InputError


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



def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write a manifest atomically."""
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")


LOCK_MARK = b"diffsmooth results lock\n"
"""What a lock file holds: only such a file (or an empty one) is taken and removed as a lock."""


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
                mark = os.pread(fd, len(LOCK_MARK), 0)
                if mark and mark != LOCK_MARK:  # a file of the user's that happens to be named OUT.lock
                    os.close(fd)
                    raise InputError(f"{self.path} exists and is no diffsmooth lock (a file of yours?); it is left "
                                     "alone: move it away or choose another --out")
                if not mark:  # new, or the empty lock of an older version killed mid-run
                    try:
                        os.pwrite(fd, LOCK_MARK, 0)
                    except OSError:  # a full disk: no lock left behind, held or not
                        self.path.unlink(missing_ok=True)
                        os.close(fd)
                        raise
                self._fd = fd
                return
            os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None


def environment(device: Any) -> dict[str, Any]:
    """Versions, commit, device and CPU threading for the manifest."""
    import torch

    import diffsmooth
    from diffsmooth.files import git_commit
    from diffsmooth.runtime import cpu_settings

    device = torch.device(device)
    return {
        "diffsmooth": diffsmooth.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "git_commit": git_commit(),
        "torch_threads": torch.get_num_threads(),
        "cpu_settings": cpu_settings(),  # what runtime.configure_cpu set (empty when not called)
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


def radii_record(radii: Any) -> Any:
    """Fixed-radius questions as a manifest records them: sorted, each once (``RunSpec.to_dict``; the rows do not depend on
    the order the radii were typed in, so a resume may type them in another); left as given where they
    are not all numbers (validation names that)."""
    try:
        return sorted(set(radii))
    except TypeError:
        return list(radii)


def _diff(old: dict[str, Any], new: dict[str, Any], defaults: dict[str, Any] | None = None,
          prefix: str = "") -> list[str]:
    """Names of the settings that differ.  A setting absent from an older manifest was added
    later with its default behaviour, so it matches a new run that keeps it off (False/None) or at
    its default (``defaults``: the same nesting as the specs)."""
    defaults = defaults or {}
    out = []
    for key in set(old) | set(new):
        a, b, d = old.get(key), new.get(key), defaults.get(key)
        if key == "radii" and isinstance(a, list):  # recorded unsorted before radii_record
            a = radii_record(a)
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
            check_row(row)
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
        for path, owned, what in ((out, owned_results, "a results TSV"),
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
        ours = tuple(header_line(self.mode, self.columns).rstrip("\n").split("\t"))
        if results.mode == self.mode and not differ and results.header != ours:
            raise InputError(f"cannot resume {path}: its columns ({' '.join(results.header)}) are not the ones this "
                             f"run appends ({' '.join(ours)}); use a new --out, or --overwrite")
        if results.mode != self.mode or differ:
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
                cut_torn_line(path)
                handle = path.open("a")
            else:
                handle = path.open("x")
                handle.write(header_line(self.mode, self.columns))
                handle.flush()
            sink = Sink(path, self.mode, self.columns, skip=frozenset(self.done), _file=handle)
            samples = self.spec.get("n", 0) + (self.spec.get("n0", 0) if self.mode == "certify" else 0)
            try:
                yield sink
            except BaseException as err:
                handle.close()
                if not resuming and path.stat().st_size <= len(header_line(self.mode, self.columns).encode()):
                    _remove_results(path)  # stopped before its first row: nothing to resume, no litter
                else:
                    _best_effort(lambda: write_manifest(manifest_path(path), {
                        **manifest, "status": "stopped", "stopped_by": _why(err),
                        "throughput": throughput(sink.rows, samples)}))
                raise
            handle.close()
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


def _why(err: BaseException) -> str:
    """What stopped a run, for its manifest: a signal, an interrupt, or the error's first line."""
    if isinstance(err, KeyboardInterrupt):
        return "interrupted (SIGINT)"
    if type(err).__name__ == "_Terminated":
        return "terminated (SIGTERM)"
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}"[:300]


def _best_effort(write: Callable[[], None]) -> None:
    """A last write while a run stops: a full disk must not hide the error that stopped it."""
    with contextlib.suppress(OSError):
        write()


def _remove_results(path: Path) -> None:
    """Remove a results file of ours, its manifest (a symlink itself, not its target) and its lock
    file where no process holds it (a crashed writer's)."""
    for p in (path, manifest_path(path)):
        if p.is_symlink() or p.exists():
            p.unlink()
    lock = lock_path(path)
    if lock.exists() and not lock.is_symlink():
        with contextlib.suppress(OSError):
            fd = os.open(lock, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: its holder is gone
                if os.pread(fd, len(LOCK_MARK), 0) in (b"", LOCK_MARK):  # ours, not a file of the user's
                    lock.unlink()
            finally:
                os.close(fd)


