"""Results files: the Cohen et al. TSV that existing analysis scripts read, and its manifest.

CERTIFY rows: ``idx label predict radius correct time`` (predict -1 = abstain,
radius 0 then); PREDICT rows: ``idx label predict correct time``; time as
``h:mm:ss.ffffff``.  Rows are appended one image at a time, flushed and fsynced,
so a crash loses at most the images in flight; a torn last line is cut off on
resume.  The manifest (``<results>.json``) is written atomically.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffsmooth.errors import InputError

HEADERS = {
    "certify": ("idx", "label", "predict", "radius", "correct", "time"),
    "predict": ("idx", "label", "predict", "correct", "time"),
}


@dataclass(frozen=True)
class Row:
    """One image's outcome; ``predict`` is -1 for abstain, ``radius`` None for PREDICT rows."""

    idx: int
    label: int
    predict: int
    correct: int
    seconds: float
    radius: float | None = None

    def to_fields(self, mode: str) -> list[str]:
        time = format_time(self.seconds)
        if mode == "certify":
            return [str(self.idx), str(self.label), str(self.predict), f"{self.radius:.6g}", str(self.correct), time]
        return [str(self.idx), str(self.label), str(self.predict), str(self.correct), time]


def format_time(seconds: float) -> str:
    """``h:mm:ss.ffffff`` as Cohen et al.'s scripts write it (always with microseconds)."""
    text = str(datetime.timedelta(seconds=seconds))
    return text if "." in text else text + ".000000"


def parse_time(text: str) -> float:
    h, m, s = text.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def manifest_path(results: Path) -> Path:
    return results.with_name(results.name + ".json")


def read_rows(path: Path) -> tuple[str, list[Row]]:
    """Read a results TSV; returns its mode ("certify" or "predict") and its complete rows."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"results file {path} does not exist; give the path of a TSV written by `diffsmooth certify`")
    lines = path.read_text().split("\n")
    header = tuple(lines[0].split("\t")) if lines else ()
    mode = next((m for m, h in HEADERS.items() if h == header), None)
    if mode is None:
        raise InputError(
            f"{path} does not start with a results header ({' '.join(HEADERS['certify'])}); is it a diffsmooth/Cohen TSV?"
        )
    rows = []
    # The last element is "" for a complete file or a torn line after a crash: skip it.
    for number, line in enumerate(lines[1:-1], start=2):
        fields = line.split("\t")
        try:
            if mode == "certify":
                idx, label, predict, radius, correct, time = fields
                rows.append(Row(int(idx), int(label), int(predict), int(correct), parse_time(time), float(radius)))
            else:
                idx, label, predict, correct, time = fields
                rows.append(Row(int(idx), int(label), int(predict), int(correct), parse_time(time)))
        except ValueError:
            raise InputError(f"{path} line {number} is not a valid {mode} row: {line!r}") from None
    return mode, rows


class ResultsWriter:
    """Appends rows to a results TSV, each flushed and fsynced as it completes."""

    def __init__(self, path: Path, mode: str, resume: bool) -> None:
        self.path = Path(path)
        self.mode = mode
        if resume and self.path.exists():
            _cut_torn_line(self.path)
            self._file = self.path.open("a")
        else:
            self._file = self.path.open("w")
            self._write_line(HEADERS[mode])

    def write(self, rows: Iterable[Row]) -> None:
        for row in rows:
            self._write_line(row.to_fields(self.mode))

    def _write_line(self, fields: Iterable[str]) -> None:
        self._file.write("\t".join(fields) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_results(path: Path, mode: str, rows: Iterable[Row]) -> None:
    """Write a whole results TSV atomically: readers see the old file or the complete new one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write("\t".join(HEADERS[mode]) + "\n")
        for row in rows:
            f.write("\t".join(row.to_fields(mode)) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _cut_torn_line(path: Path) -> None:
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write JSON atomically: a crash leaves the old manifest or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"manifest {path} is missing; rerun with --overwrite to start the results afresh") from None
    except json.JSONDecodeError as err:
        raise InputError(f"manifest {path} is not valid JSON ({err}); rerun with --overwrite") from None
