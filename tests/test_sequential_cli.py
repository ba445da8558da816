"""``certify --sampling sequential``: the samples column, resume after a kill, analyze's mean samples."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from diffsmooth.cli import main
from diffsmooth.results import read_results


def seq_args(fmnist_dir, classifier_path, out, *extra):
    return ["certify", "--method", "rs", "--data-dir", str(fmnist_dir), "--sigma", "0.25", "--classifier",
            str(classifier_path), "--n0", "16", "--sampling", "sequential", "--n-max", "512", "--batch", "128",
            "--max", "5", "--seed", "3", "--device", "cpu", "--quiet", "--out", str(out), *extra]


def strip(results):
    return [(r.idx, r.predict, r.radius, r.correct, r.extra) for r in results.rows]


def test_sequential_rows_record_samples_and_resume_after_a_kill(tmp_path, fmnist_dir, classifier_path, capsys):
    full = tmp_path / "full.tsv"
    assert main(seq_args(fmnist_dir, classifier_path, full, "--max-radius", "0.5")) == 0
    results = read_results(full)
    assert results.columns == ("samples",)
    assert all(64 <= int(dict(r.extra)["samples"]) <= 512 for r in results.rows)
    # The schedule's looks: 64, 128, 256, 512.
    assert {int(dict(r.extra)["samples"]) for r in results.rows} <= {64, 128, 256, 512}
    part = tmp_path / "part.tsv"
    crash = Path(__file__).parent / "crash_after_rows.py"
    # --batch 64: one image per group, so the process dies after its second image.
    args = seq_args(fmnist_dir, classifier_path, part, "--max-radius", "0.5", "--batch", "64")
    died = subprocess.run([sys.executable, str(crash), "2", "--", *args], capture_output=True, text=True, timeout=300)
    assert died.returncode == 1, died.stderr
    assert len(read_results(part).rows) == 2
    assert main([*args, "--resume"]) == 0
    # Chunks follow the batch size, so compare with an uninterrupted run of the same batch.
    again = tmp_path / "again.tsv"
    assert main(seq_args(fmnist_dir, classifier_path, again, "--max-radius", "0.5", "--batch", "64")) == 0
    assert strip(read_results(part)) == strip(read_results(again))
    capsys.readouterr()
    assert main(["analyze", str(full), "--format", "csv"]) == 0
    head, row = capsys.readouterr().out.splitlines()[:2]
    assert head.endswith("samples/img")
    mean = sum(int(dict(r.extra)["samples"]) for r in results.rows) / len(results.rows)
    assert row.endswith(f",{mean:.0f}")


@pytest.mark.parametrize("extra,message", [
    (["--radii", "0.5", "--max-radius", "1"], "excludes max_radius"),
    (["--bound", "separate-pb"], "use --bound cohen"),
])
def test_sequential_bad_combinations(tmp_path, fmnist_dir, classifier_path, capsys, extra, message):
    assert main(seq_args(fmnist_dir, classifier_path, tmp_path / "r.tsv", *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_sequential_options_need_sequential_sampling(tmp_path, fmnist_dir, classifier_path, capsys):
    args = [a for a in seq_args(fmnist_dir, classifier_path, tmp_path / "r.tsv") if a not in ("--sampling", "sequential")]
    assert main(args) == 2
    assert "--n-max does not apply to --sampling fixed (it is for --sampling sequential)" in capsys.readouterr().err


@pytest.mark.slow  # one torchrun launch takes 5-15 s on 2 CPU cores
def test_sequential_under_torchrun_shares_images(tmp_path, fmnist_dir, classifier_path):
    """Image sharding: two processes write the rows of one process (sequential decisions are per image)."""
    from test_distributed import torchrun

    single = tmp_path / "single.tsv"
    args = seq_args(fmnist_dir, classifier_path, single, "--max-radius", "0.5")
    assert main(args) == 0
    merged = tmp_path / "merged.tsv"
    args = [a if a != str(single) else str(merged) for a in args]
    args = ["--max-images" if a == "--max" else a for a in args]
    done = torchrun(args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert strip(read_results(merged)) == strip(read_results(single))
