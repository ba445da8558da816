"""Golden results of the shipped methods (test helper, not a test module).

Each shipped method certifies three images of the synthetic Fashion-MNIST fixture
(``conftest.write_fmnist``; n0 = 10, n = 70 with batch 32: full chunks, remainders packed across
images).  ``tests/test_golden.py`` compares a fresh run with the TSVs in ``tests/fixtures/golden/``;
it never writes them.  After an intended change (new shipped models, a new noise scheme) rewrite
them with

    .venv/bin/python tests/golden.py write

and say why in the commit.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

GOLDEN = Path(__file__).parent / "fixtures" / "golden"

CASES: dict[str, list[str]] = {
    "rs": [],
    "dds": [],
    "diffsmooth": ["--m", "3"],
    "denoised": [],  # the shipped DnCNN for sigma 0.25 before the clean classifier
    "densepure": ["--runs", "2", "--steps", "2"],
}
"""Per method, its options beyond the common ones (``args``)."""


def args(method: str, data_dir: Path, out: Path) -> list[str]:
    """The certify command line of ``method``'s golden run."""
    return ["certify", "--method", method, "--data-dir", str(data_dir), "--sigma", "0.25", "--n0", "10", "--n", "70",
            "--batch", "32", "--max", "3", "--seed", "11", "--device", "cpu", "--quiet", "--out", str(out),
            *CASES[method]]


def golden_path(method: str) -> Path:
    return GOLDEN / f"{method}_sigma0.25.tsv"


def without_time(text: str) -> list[list[str]]:
    """A TSV's cells without the time column (the last)."""
    return [line.split("\t")[:-1] for line in text.splitlines()]


def write() -> None:
    """Certify every case with this checkout's code and replace its golden TSV."""
    from conftest import write_fmnist

    from diffsmooth.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        data = write_fmnist(Path(tmp) / "fashion-mnist-fixture")
        for method in CASES:
            out = Path(tmp) / f"{method}.tsv"
            if main(args(method, data, out)) != 0:
                raise SystemExit(f"certify failed for {method}; goldens left as they were")
            golden_path(method).write_text(out.read_text())
            print(f"wrote {golden_path(method)}")


if __name__ == "__main__":
    if sys.argv[1:] != ["write"]:
        raise SystemExit(f"usage: {sys.argv[0]} write   (rewrites tests/fixtures/golden/*.tsv)")
    sys.path.insert(0, str(Path(__file__).parent))
    write()
