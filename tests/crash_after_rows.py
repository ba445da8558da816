"""Test helper (not a test module): run the ``diffsmooth`` command line in a process that dies
abruptly, as under SIGKILL, right after its K-th flushed group of rows, or (``pause``) that waits
there for a signal.

Usage: ``python tests/crash_after_rows.py K [RANK] [pause] -- diffsmooth arguments...``; under
torchrun only the process whose RANK matches dies (default: every process).  The crash point is
exact, so the tests that resume from it are deterministic; with ``pause`` the process creates the
file ``$PAUSE_MARKER`` (when set) once its K-th group is written, and a signal sent after that is
sure to arrive mid-run.
"""

from __future__ import annotations

import os
import sys
import time

from diffsmooth import results
from diffsmooth.cli import main


def install(after: int, rank: str | None, pause: bool) -> None:
    if rank is not None and os.environ.get("RANK", "0") != rank:
        return
    write = results.Sink.write
    count = 0

    def write_then_stop(self, rows):
        nonlocal count
        write(self, rows)
        count += 1
        if count >= after:
            if not pause:
                os._exit(1)  # no cleanup, like a kill
            marker = os.environ.get("PAUSE_MARKER")
            if marker:  # tells the test that the row is written and the process waits
                open(marker, "w").close()
            while True:  # mid-run until a signal ends the process
                time.sleep(0.05)

    results.Sink.write = write_then_stop


if __name__ == "__main__":
    split = sys.argv.index("--")
    head, argv = sys.argv[1:split], sys.argv[split + 1 :]
    pause = "pause" in head
    rest = [h for h in head[1:] if h != "pause"]
    install(int(head[0]), rest[0] if rest else None, pause)
    sys.exit(main(argv))
