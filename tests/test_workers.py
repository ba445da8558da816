"""CPU row-block workers: the same scores as one call, computed without OpenMP barriers."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from diffsmooth.cli import main
from diffsmooth.fast import FastBase, FastConfig, accelerate
from diffsmooth.methods import MethodSpec, build_base, build_grid, default_workers
from diffsmooth.validate import InputError
from diffsmooth.workers import RowWorkers


def noisy_batch(b: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, 28, 28, generator=g) + 0.5 * torch.randn(b, 1, 28, 28, generator=g)


def test_row_blocks_run_on_one_thread_each_and_concatenate_in_order():
    seen: list[tuple[int, int, str]] = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        seen.append((x.shape[0], torch.get_num_threads(), threading.current_thread().name))
        return x.flatten(1).sum(1, keepdim=True) * torch.arange(1, 3)

    x = noisy_batch(37)
    with torch.inference_mode():
        out = RowWorkers(3, min_rows=4)(fn, x)
    assert torch.equal(out, fn(x))
    blocks = sorted(seen[:3])
    assert [b for b, _, _ in blocks] == [12, 12, 13]  # tensor_split: contiguous, sizes differ by at most one
    assert {t for _, t, _ in blocks} == {1}
    assert all(name.startswith("diffsmooth-rows") for _, _, name in blocks)


def test_small_calls_and_calls_recording_autograd_run_unsplit_on_the_caller():
    calls: list[tuple[int, str]] = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        calls.append((x.shape[0], threading.current_thread().name))
        return x * 2

    workers = RowWorkers(2, min_rows=8)
    with torch.no_grad():
        workers(fn, noisy_batch(15))  # fewer than 2 x 8 rows
    x = noisy_batch(64).requires_grad_()
    out = workers(fn, x)  # an attack's gradient pass
    out.sum().backward()
    assert calls == [(15, threading.current_thread().name), (64, threading.current_thread().name)]
    assert torch.equal(x.grad, torch.full_like(x, 2.0))


def test_a_worker_runs_in_the_callers_inference_mode_and_its_errors_reach_the_caller():
    workers = RowWorkers(2, min_rows=1)
    with torch.inference_mode():
        out = workers(lambda x: x + 1, noisy_batch(8))
    assert out.is_inference() and not out.requires_grad

    def broken(x: torch.Tensor) -> torch.Tensor:
        raise ValueError(f"bad block of {x.shape[0]} rows")

    with torch.no_grad(), pytest.raises(ValueError, match="bad block of 4 rows"):
        workers(broken, noisy_batch(8))
    workers.close()


@pytest.fixture(scope="module")
def shipped_grid_specs():
    common = dict(dataset="fashion-mnist", sigma=0.5)
    return [MethodSpec("rs", **common), MethodSpec("dds", **common),
            MethodSpec("diffsmooth", vote="soft", **common), MethodSpec("diffsmooth", vote="hard", **common)]


def test_shipped_grid_scores_equal_with_and_without_workers_bit_for_bit(shipped_grid_specs):
    """The shipped DDPM and classifiers: row blocks on two workers give the unsplit one-thread call's scores.

    Against an unsplit call on two OpenMP threads only to rounding: with several threads the BLAS may
    split a long reduction (K = 1152 in the DDPM) between them, and whether it does depends on the
    CPU's code path (MKL's AVX2 path does, MKL_CBWR=AVX2 shows it on any x86) and on MKL's dynamic
    thread count; a row block always runs on one thread, so its scores do not depend on that.
    """
    plain = build_grid(shipped_grid_specs, "cpu")
    split = build_grid(shipped_grid_specs, "cpu", workers=2)
    assert isinstance(split, FastBase) and split.config.workers == 2 and not isinstance(plain, FastBase)
    x = noisy_batch(48, seed=3)
    threads = torch.get_num_threads()
    with torch.inference_mode():
        scores = split(x)
        try:
            torch.set_num_threads(1)
            one_thread = plain(x)
            torch.set_num_threads(2)
            two_threads = plain(x)
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(scores, one_thread)
        # float32 sums of ~1e3 terms regrouped: a few units in the last place of the scores.
        torch.testing.assert_close(scores, two_threads, rtol=1e-5, atol=1e-5)
        with split.only([0]):  # a sequential grid's running configurations pass through
            only_rs = split(x)
    assert torch.equal(only_rs[:, 0], scores[:, 0]) and not only_rs[:, 1:].any()
    assert split.workers == 2 and split.describe() == plain.describe()  # row blocks change no score
    with_bf16 = accelerate(plain, precision="bfloat16", workers=2)
    assert "workers" not in with_bf16.describe()["acceleration"]


def test_default_workers_follow_the_threads_and_avoid_bases_that_draw_noise_per_call(shipped_grid_specs):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        grid = build_grid(shipped_grid_specs, "cpu")
        assert default_workers(grid, shipped_grid_specs[0], torch.device("cpu")) == 2
        assert build_grid(shipped_grid_specs, "cpu", workers=None).config.workers == 2
        fresh = MethodSpec("diffsmooth", "fashion-mnist", 0.5, local_noise="fresh")
        assert not isinstance(build_base(fresh, "cpu", workers=None), FastBase)  # auto: 1
        compiled = MethodSpec("rs", "fashion-mnist", 0.5, compile="default")
        assert default_workers(grid, compiled, torch.device("cpu")) == 1
        assert default_workers(grid, shipped_grid_specs[0], torch.device("meta")) == 1
        torch.set_num_threads(1)
        assert not isinstance(build_grid(shipped_grid_specs, "cpu", workers=None), FastBase)
    finally:
        torch.set_num_threads(threads)


def test_workers_that_would_change_rows_are_refused():
    fresh = MethodSpec("diffsmooth", "fashion-mnist", 0.5, local_noise="fresh")
    with pytest.raises(InputError, match="draws noise per call .* use one worker"):
        build_base(fresh, "cpu", workers=2)
    with pytest.raises(InputError, match="run a base eagerly on row blocks"):
        FastConfig(compile="default", workers=2)
    with pytest.raises(InputError, match="workers must be a whole number >= 1"):
        accelerate(torch.nn.Identity(), workers=0)


def test_cli_cpu_workers_recorded_and_refused_when_invalid(tmp_path, fmnist_dir, capsys):
    out = tmp_path / "rs.tsv"
    args = ["certify", "--method", "rs", "--dataset", "fashion-mnist", "--data-dir", str(fmnist_dir),
            "--sigma", "0.5", "--n0", "16", "--n", "64", "--max", "2", "--quiet", "--device", "cpu"]
    assert main([*args, "--cpu-workers", "2", "--out", str(out)]) == 0
    manifest = json.loads(out.with_name(out.name + ".json").read_text())
    assert manifest["environment"]["cpu_workers"] == 2 and "acceleration" not in manifest["base"]
    capsys.readouterr()
    assert main([*args, "--cpu-workers", "0", "--out", str(tmp_path / "bad.tsv")]) == 2
    assert "--cpu-workers must be a whole number >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "bad.tsv").exists()
