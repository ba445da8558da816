"""Test helper (not a test module): run the ``diffsmooth`` command line in a process that dies
abruptly, as under SIGKILL, right after its K-th flushed group of rows.

Usage: ``python tests/crash_after_rows.py K [RANK] -- diffsmooth arguments...``; under torchrun
only the process whose RANK matches dies (default: every process).  The crash point is exact,
so the tests that resume from it are deterministic.
"""

from __future__ import annotations

import os
import sys

from diffsmooth import results
from diffsmooth.cli import main


def install(after: int, rank: str | None) -> None:
    if rank is not None and os.environ.get("RANK", "0") != rank:
        return
    write = results.Sink.write
    count = 0

    def write_then_die(self, rows):
        nonlocal count
        write(self, rows)
        count += 1
        if count >= after:
            os._exit(1)  # no cleanup, like a kill

    results.Sink.write = write_then_die


if __name__ == "__main__":
    split = sys.argv.index("--")
    head, argv = sys.argv[1:split], sys.argv[split + 1 :]
    install(int(head[0]), head[1] if len(head) > 1 else None)
    sys.exit(main(argv))
