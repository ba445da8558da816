"""torchrun scale-out: merged parts equal a single-process run, a killed rank resumes without
loss or duplicates, and --split-samples sums the counts of every rank (gloo on CPU)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from diffsmooth.cli import main
from diffsmooth.data import load_dataset
from diffsmooth.methods import MethodSpec, build_base
from diffsmooth.results import manifest_path, part_path, part_paths, read_rows, write_results
from diffsmooth.sampling import generator_for, shard_share
from diffsmooth.smoothing import SmoothedClassifier

N0, N, ALPHA, SIGMA = 20, 200, 0.01, 0.25


def certify_args(fmnist_dir, classifier_path, out, *extra):
    # --batch N puts one image in each group, so a kill loses at most one image per rank.
    return ["certify", "--method", "rs", "--dataset", "fashion-mnist", "--data-dir", str(fmnist_dir),
            "--sigma", str(SIGMA), "--classifier", str(classifier_path), "--n0", str(N0), "--num-samples", str(N),
            "--alpha", str(ALPHA), "--batch", str(N), "--seed", "7", "--max-images", "6", "--device", "cpu", "--quiet",
            "--out", str(out), *extra]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CRASH = str(Path(__file__).parent / "crash_after_rows.py")


def torchrun(args, env=None, nproc=2, crash=None):
    """``diffsmooth ARGS`` under torchrun; ``crash=(K, rank)`` kills that rank after its K-th group of rows."""
    entry = ["-m", "diffsmooth"] if crash is None else [CRASH, *map(str, crash), "--"]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *entry, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def rows_without_time(path):
    return [(r.idx, r.label, r.predict, r.radius, r.correct) for r in read_rows(path)[1]]


@pytest.fixture(scope="module")
def single(tmp_path_factory, fmnist_dir, classifier_path):
    """The reference: the same run in one process."""
    out = tmp_path_factory.mktemp("single") / "single.tsv"
    assert main(certify_args(fmnist_dir, classifier_path, out)) == 0
    return out


@pytest.mark.slow  # one torchrun launch takes 5-15 s on 2 CPU cores
def test_two_processes_merge_to_the_single_process_rows(tmp_path, fmnist_dir, classifier_path, single):
    out = tmp_path / "merged.tsv"
    done = torchrun([a for a in certify_args(fmnist_dir, classifier_path, out) if a != "--quiet"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r[0] for r in rows_without_time(out)] == list(range(6))
    assert rows_without_time(out) == rows_without_time(single)
    assert part_paths(out) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["merged.tsv", "merged.tsv.json"]
    manifest = json.loads(manifest_path(out).read_text())
    assert manifest["status"] == "finished" and manifest["distributed"]["world_size"] == 2
    assert [r["throughput"]["images"] for r in manifest["distributed"]["ranks"]] == [3, 3]
    assert manifest["throughput"]["images"] == 6 and manifest["spec"]["n"] == N
    # Only rank 0 reports.
    assert done.stderr.count("6 image(s) certified, 0 already done") == 1


@pytest.mark.slow  # one torchrun launch takes 5-15 s on 2 CPU cores
def test_killed_rank_resumes_without_loss_or_duplicates(tmp_path, fmnist_dir, classifier_path, single):
    out = tmp_path / "r.tsv"
    args = certify_args(fmnist_dir, classifier_path, out)
    crashed = torchrun(args, crash=(1, 1))
    assert crashed.returncode != 0
    assert not out.exists() and part_path(out, 1).exists()
    # Rank 1's share is 1, 3, 5: it died after flushing idx 1.
    assert [r[0] for r in rows_without_time(part_path(out, 1))] == [1]
    # Every rank refuses to touch the parts without --resume, and all exit (no hang).
    refused = torchrun(args)
    assert refused.returncode != 0 and refused.stderr.count("pass --resume") == 2
    resumed = torchrun([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert rows_without_time(out) == rows_without_time(single)
    assert part_paths(out) == []


def test_single_process_resumes_parts_of_another_world_size(tmp_path, fmnist_dir, classifier_path, single):
    """Parts of a 4-process run (one torn line, idx 4 never written) are finished by one process."""
    out = tmp_path / "r.tsv"
    mode, rows = read_rows(single)
    for rank in range(4):
        write_results(part_path(out, rank), mode, [r for r in rows if r.idx % 4 == rank and r.idx != 4])
        shutil.copy(manifest_path(single), manifest_path(part_path(out, rank)))
    with part_path(out, 1).open("a") as f:
        f.write("5\t1\t")
    args = certify_args(fmnist_dir, classifier_path, out)
    assert main(args) == 2  # parts present: --resume or --overwrite needed
    assert main([*args, "--resume"]) == 0
    assert rows_without_time(out) == rows_without_time(single)
    assert part_paths(out) == []
    # --overwrite clears stale parts too.
    write_results(part_path(out, 3), mode, rows[:1])
    shutil.copy(manifest_path(single), manifest_path(part_path(out, 3)))
    assert main([*args, "--overwrite"]) == 0
    assert part_paths(out) == [] and rows_without_time(out) == rows_without_time(single)


def test_resume_refuses_parts_written_with_other_settings(tmp_path, fmnist_dir, classifier_path, single):
    out = tmp_path / "r.tsv"
    write_results(part_path(out, 0), "certify", read_rows(single)[1][:2])
    manifest = json.loads(manifest_path(single).read_text())
    manifest["spec"]["n"] = 999
    manifest_path(part_path(out, 0)).write_text(json.dumps(manifest))
    assert main([*certify_args(fmnist_dir, classifier_path, out), "--resume"]) == 2
    assert not out.exists()


class FakeAllReduce:
    """Sums tensors across threads, as torch.distributed.all_reduce sums across processes."""

    def __init__(self, world):
        self.barrier = threading.Barrier(world)
        self.slots = [None] * world
        self.local = [[] for _ in range(world)]

    def for_rank(self, rank):
        def reduce(counts):
            self.local[rank].append(counts.sum(dim=1).tolist())
            self.slots[rank] = counts.clone()
            self.barrier.wait()
            total = sum(self.slots)
            self.barrier.wait()
            return total

        return reduce


def certify_sharded(base, x, world, n0, n, seed, idx, batch=64):
    reduce = FakeAllReduce(world)
    results = [None] * world

    def work(rank):
        smoothed = SmoothedClassifier(base, 10, SIGMA, reduce_counts=reduce.for_rank(rank), shard=(rank, world))
        results[rank] = smoothed.certify(x, n0, n, ALPHA, batch, generator_for(seed, idx, "cpu", rank))

    threads = [threading.Thread(target=work, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, reduce.local


def test_shards_draw_their_share_and_certify_with_the_total_n(classifier_path):
    base = build_base(MethodSpec("rs", "fashion-mnist", SIGMA, classifier=str(classifier_path)))
    x = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(0))
    (first, second), local = certify_sharded(base, x, 2, n0=3, n=7, seed=0, idx=0)
    # Selection: 2 + 1 samples; estimation: 4 + 3; both ranks see the sum and agree.
    assert local == [[[2], [4]], [[1], [3]]]
    assert first == second and first.n == 7 and first.n0 == 3
    assert sum(first.counts) == 7 and sum(first.selection_counts) == 3
    assert [shard_share(10, r, 4) for r in range(4)] == [3, 3, 2, 2]
    # One shard is the plain classifier.
    alone = SmoothedClassifier(base, 10, SIGMA, shard=(0, 1)).certify(x, 3, 7, ALPHA, 64, generator_for(0, 0, "cpu", 0))
    assert alone == SmoothedClassifier(base, 10, SIGMA).certify(x, 3, 7, ALPHA, 64, generator_for(0, 0, "cpu", 0))


def test_shard_needs_a_sum_of_counts(classifier_path):
    from diffsmooth.validate import InputError

    with pytest.raises(InputError, match="needs reduce_counts"):
        SmoothedClassifier(lambda x: x, 10, SIGMA, shard=(0, 2))
    with pytest.raises(InputError, match="0 <= rank < world_size"):
        SmoothedClassifier(lambda x: x, 10, SIGMA, shard=(2, 2), reduce_counts=lambda c: c)


@pytest.mark.slow  # one torchrun launch takes 5-15 s on 2 CPU cores
def test_split_samples_under_torchrun_sums_the_counts_of_both_ranks(tmp_path, fmnist_dir, classifier_path):
    out = tmp_path / "split.tsv"
    done = torchrun([*certify_args(fmnist_dir, classifier_path, out), "--split-samples"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert part_paths(out) == [] and json.loads(manifest_path(out).read_text())["distributed"] == {
        "split": "samples", "world_size": 2}
    # The same certificates, recomputed in one process by two threads summing their counts.
    base = build_base(MethodSpec("rs", "fashion-mnist", SIGMA, classifier=str(classifier_path)))
    data = load_dataset("fashion-mnist", data_dir=fmnist_dir)
    expected = []
    for idx in range(6):
        x, label = data[idx]
        (cert, _), _ = certify_sharded(base, x, 2, N0, N, seed=7, idx=idx, batch=N)
        assert cert.n == N and sum(cert.counts) == N
        predict = -1 if cert.prediction is None else cert.prediction
        expected.append((idx, label, predict, float(f"{cert.radius:.6g}"), int(predict == label)))
    assert rows_without_time(out) == expected


def test_every_run_option_has_a_spelling_that_torchrun_passes_through():
    """torchrun's parser (argparse, abbreviations allowed) aborts on an option after the module
    name that abbreviates two of its own, such as --n (--nnodes, --nproc-per-node)."""
    from torch.distributed.run import get_args_parser

    from diffsmooth.cli import build_parser

    launcher = get_args_parser()
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    for mode in ("certify", "predict"):
        for action in commands[mode]._actions:
            longs = [o for o in action.option_strings if o.startswith("--")]
            passing = [o for o in longs if o in launcher._option_string_actions
                       or len(launcher._get_option_tuples(o)) <= 1]
            assert passing or not longs, f"{mode} {longs} are all ambiguous under torchrun; add an alias"
