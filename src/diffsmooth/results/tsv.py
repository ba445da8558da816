"""The results TSV: Cohen et al.'s columns (extra columns may follow), reading with validation,
and whole-file writing.  CERTIFY rows: ``idx label predict radius correct time`` (predict -1 =
abstain, radius 0 then); PREDICT rows: ``idx label predict correct time``; we write time as
``h:mm:ss.ffffff`` (``N days, h:mm:ss.ffffff`` past a day).

The reader takes any file of the Cohen family as published: columns by name in any order (``idx label
predict correct``, plus ``radius`` for certify rows, are required; ``time`` is optional and read in
every form the reference tools write: plain seconds, ``h:mm:ss[.f]``, ``N day[s], h:mm:ss[.f]``);
other columns are kept by name; a UTF-8 byte-order mark and Windows line endings are tolerated."""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from diffsmooth.files import atomic_write_text
from diffsmooth.validate import InputError

HEADERS = {
    "certify": ("idx", "label", "predict", "radius", "correct", "time"),
    "predict": ("idx", "label", "predict", "correct", "time"),
}
REQUIRED = {mode: tuple(name for name in cohen if name != "time") for mode, cohen in HEADERS.items()}


@dataclass(frozen=True)
class Row:
    """One image's outcome; ``predict`` is -1 for abstain, ``radius`` None for PREDICT rows,
    ``seconds`` None where the file has no time column.

    ``extra`` holds the values of columns beyond Cohen's (name -> text), in header order.
    """

    idx: int
    label: int
    predict: int
    correct: int
    seconds: float | None
    radius: float | None = None
    extra: tuple[tuple[str, str], ...] = ()

    def to_fields(self, mode: str) -> list[str]:
        if self.seconds is None:
            raise ValueError(f"row {self.idx} has no time to write")
        time = format_time(self.seconds)
        extra = [value for _, value in self.extra]
        if mode == "certify":
            return [str(self.idx), str(self.label), str(self.predict), f"{self.radius:.6g}", str(self.correct), time,
                    *extra]
        return [str(self.idx), str(self.label), str(self.predict), str(self.correct), time, *extra]


def format_time(seconds: float) -> str:
    """``h:mm:ss.ffffff`` as Cohen et al.'s scripts write it (always with microseconds;
    ``N day[s], h:mm:ss.ffffff`` from a day on, as Python's ``timedelta`` prints it)."""
    text = str(datetime.timedelta(seconds=seconds))
    return text if "." in text else text + ".000000"


_CLOCK = re.compile(r"(?:(\d+) days?, )?(\d+):([0-5]?\d):([0-5]?\d(?:\.\d*)?)")


def parse_time(text: str) -> float:
    """Seconds of a time field in any form the Cohen-family tools write: ``15.4`` (seconds),
    ``0:00:15.400000``, ``1 day, 0:00:01.000000``; raises ValueError naming a bad or negative one."""
    text = text.strip()
    clock = _CLOCK.fullmatch(text)
    if clock:
        days, h, m, s = clock.groups()
        return int(days or 0) * 86400 + int(h) * 3600 + int(m) * 60 + float(s)
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"time {text!r} is neither seconds nor h:mm:ss") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"time {text!r} is not a finite number of seconds >= 0")
    return value


@dataclass(frozen=True)
class Results:
    """A results TSV as read: its mode, extra column names (header order), complete rows, whether
    a torn (unterminated, unparsable) last line of the writer's own file was dropped, and the header
    as written."""

    mode: str
    columns: tuple[str, ...]
    rows: list[Row]
    dropped_torn_line: bool = False
    header: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Layout:
    """Where each column of a header stands."""

    mode: str
    position: dict[str, int]
    extra: tuple[str, ...]


def _layout(header: tuple[str, ...]) -> _Layout | str:
    """The layout of a header, or why it is not a results header."""
    names = [name.strip() for name in header]
    if any(not name for name in names):
        return "an empty column name"
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        return f"the column {repeated[0]} twice"
    mode = "certify" if "radius" in names else "predict"
    missing = [name for name in REQUIRED[mode] if name not in names]
    if missing:
        return f"no {' '.join(missing)} column{'s' if len(missing) > 1 else ''}"
    cohen = set(HEADERS[mode])
    return _Layout(mode, {name: i for i, name in enumerate(names)}, tuple(n for n in names if n not in cohen))


def _mode_of(header: tuple[str, ...]) -> tuple[str, tuple[str, ...]] | None:
    layout = _layout(header)
    return None if isinstance(layout, str) else (layout.mode, layout.extra)


def _parse_row(layout: _Layout, fields: list[str]) -> Row:
    width = len(layout.position)
    if len(fields) != width:
        raise ValueError(f"{len(fields)} columns instead of {width}")
    at = layout.position
    tail = tuple((name, fields[at[name]]) for name in layout.extra)
    seconds = parse_time(fields[at["time"]]) if "time" in at else None
    radius = float(fields[at["radius"]]) if layout.mode == "certify" else None
    row = Row(int(fields[at["idx"]]), int(fields[at["label"]]), int(fields[at["predict"]]),
              int(fields[at["correct"]]), seconds, radius, tail)
    check_row(row)
    return row


def check_row(row: Row) -> None:
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
    (``writer_file``; by default: its manifest exists) or when it does not parse: it is dropped and
    reported in ``dropped_torn_line``; otherwise (a hand-written file without a final newline) it is
    read like any other line.  Windows line endings (CRLF) read as plain ones.
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
    lines = text.removeprefix("\ufeff").replace("\r\n", "\n").split("\n")  # a file saved on Windows reads the same
    layout = _layout(tuple(lines[0].split("\t")))
    if isinstance(layout, str):
        raise InputError(
            f"{path} does not start with a results header ({layout}; needs the columns "
            f"{' '.join(REQUIRED['certify'])}, time optional); is it a diffsmooth/Cohen TSV?"
        )
    if writer_file is None:
        writer_file = path.with_name(path.name + ".json").is_file()  # its manifest: the writer's own file
    body, last = lines[1:-1], lines[-1]
    dropped = False
    if last:
        # An unterminated last line: a torn write in the writer's own file, kept in a hand-written
        # one unless it does not parse (then it was torn there too).
        if writer_file or not _parses(layout, last):
            dropped = True
        else:
            body.append(last)
    rows: list[Row] = []
    seen: dict[int, int] = {}
    for number, line in enumerate(body, start=2):
        try:
            row = _parse_row(layout, line.split("\t"))
        except ValueError as err:
            raise InputError(f"{path} line {number} is not a valid {layout.mode} row ({err}): {line[:120]!r}; "
                             "fix or remove that line") from None
        if row.idx in seen:
            raise InputError(f"{path} holds two rows for idx {row.idx} (lines {seen[row.idx]} and {number}); "
                             "remove one (was the file written by two processes at once?)")
        seen[row.idx] = number
        rows.append(row)
    return Results(layout.mode, layout.extra, rows, dropped, tuple(name.strip() for name in lines[0].split("\t")))


def _parses(layout: _Layout, line: str) -> bool:
    try:
        _parse_row(layout, line.split("\t"))
    except ValueError:
        return False
    return True


def read_rows(path: Path) -> tuple[str, list[Row]]:
    """``(mode, rows)`` of a results TSV (see ``read_results``)."""
    results = read_results(path)
    return results.mode, results.rows


def owned_results(path: Path) -> bool:
    """Whether ``path`` is absent or starts with a results header."""
    if not path.exists() and not path.is_symlink():
        return True
    try:
        with path.open("rb") as f:
            first = f.readline(4096).decode("utf-8").removeprefix("\ufeff").rstrip("\r\n")
    except (OSError, UnicodeDecodeError):
        return False
    return _mode_of(tuple(first.split("\t"))) is not None


def header_line(mode: str, columns: Sequence[str]) -> str:
    return "\t".join((*HEADERS[mode], *columns)) + "\n"


def write_results(path: Path, mode: str, rows: Iterable[Row], columns: Sequence[str] = ()) -> None:
    """Write a whole results TSV atomically."""
    body = "".join("\t".join(row.to_fields(mode)) + "\n" for row in rows)
    atomic_write_text(path, header_line(mode, columns) + body)


def cut_torn_line(path: Path) -> None:
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)


