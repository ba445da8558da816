"""Hostile input on the newer commands and options (issue #31): one line, exit 2, no traceback, no file
created, truncated or replaced that the run does not own; or, where accepting is right, the right answer."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffsmooth.cli import main
from diffsmooth.results import read_index, read_rows

from test_faults import CRASH, fails, rs_args, snapshot


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def without_n(args: list[str]) -> list[str]:
    """``args`` without their ``--n`` (sequential sampling refuses it)."""
    i = args.index("--n")
    return args[:i] + args[i + 2:]


# ---- tracebacks that became one line --------------------------------------------------------------

def test_an_absurd_n_max_or_alpha_is_refused_before_any_file(tmp_path, fmnist_dir, classifier_path, capsys):
    out = tmp_path / "r.tsv"
    fails(capsys, without_n(rs_args(fmnist_dir, classifier_path, out, "--sampling", "sequential", "--n-max",
                                    "1000000000000000000000")), "--n-max must be a whole number <= 1000000000000")
    fails(capsys, rs_args(fmnist_dir, classifier_path, out, "--bound", "separate-pb", "--alpha", "5e-324"),
          "too small for the separate p_B bound")
    assert listing(tmp_path) == []


def test_a_run_stopped_before_its_first_row_leaves_nothing(tmp_path, fmnist_dir, classifier_path, capsys,
                                                           monkeypatch):
    """Whatever stops a new run before its first row (here a failing base), no header-only TSV stays."""
    from diffsmooth.smoothing import SmoothedClassifier

    def broken(self, *args, **kwargs):
        raise RuntimeError("can't allocate memory")

    monkeypatch.setattr(SmoothedClassifier, "certify_batch", broken)
    fails(capsys, rs_args(fmnist_dir, classifier_path, tmp_path / "r.tsv"), "out of memory")
    assert listing(tmp_path) == []


def test_a_trainer_on_a_full_disk_says_so(tmp_path, fmnist_dir, capsys, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    out = tmp_path / "c"
    fails(capsys, ["train-classifier", "--sigma", "0", "--data-dir", str(fmnist_dir), "--epochs", "1",
                   "--batch-size", "8", "--eval-limit", "4", "--quiet", "--out", str(out)], "No space left on device")
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert not (tmp_path / "c.safetensors").exists() and not (tmp_path / "c.json").exists()


# ---- files replaced or misplaced ------------------------------------------------------------------

def denoiser_args(fmnist_dir, out, *extra):
    return ["train-denoiser", "--sigma", "0.25", "--depth", "3", "--width", "4", "--epochs", "1", "--batch-size", "8",
            "--train-limit", "16", "--eval-limit", "4", "--data-dir", str(fmnist_dir), "--quiet", "--out", str(out),
            *extra]


def test_train_denoiser_keeps_the_promises_of_train_classifier(tmp_path, fmnist_dir, capsys):
    model = tmp_path / "d.safetensors"
    model.write_bytes(b"someone's model")
    before = snapshot(tmp_path)
    fails(capsys, denoiser_args(fmnist_dir, tmp_path / "d"), "d.safetensors exists; pass --overwrite")
    (tmp_path / "folder").mkdir()
    fails(capsys, denoiser_args(fmnist_dir, tmp_path / "folder"), "is a folder; give a path stem inside it")
    fails(capsys, denoiser_args(fmnist_dir, f"{tmp_path}/newdir/"), "ends with '/' but is no folder")
    fails(capsys, denoiser_args(fmnist_dir, tmp_path / "missing" / "d"), "does not exist; create it first")
    fails(capsys, denoiser_args(fmnist_dir, tmp_path / "e", "--checkpoint-dir", str(model / "state")),
          "of --checkpoint-dir does not exist")
    assert snapshot(tmp_path) == {**before, "folder": b"<dir>"}


def test_certify_out_with_a_trailing_separator_is_refused(tmp_path, fmnist_dir, classifier_path, capsys):
    fails(capsys, rs_args(fmnist_dir, classifier_path, f"{tmp_path}/newdir/"), "ends with '/' but is no folder")
    assert listing(tmp_path) == []


def test_an_unfinished_training_is_not_replaced_unasked(tmp_path, fmnist_dir, capsys):
    def args(epochs: str) -> list[str]:
        return ["train-classifier", "--sigma", "0", "--data-dir", str(fmnist_dir), "--epochs", epochs,
                "--batch-size", "8", "--eval-limit", "4", "--quiet", "--out", str(tmp_path / "c")]

    assert main(args("1")) == 0  # leaves its resumable state in c.train/
    (tmp_path / "c.safetensors").unlink()  # as if it had been stopped before the model was written
    (tmp_path / "c.json").unlink()
    state = tmp_path / "c.train" / "state.json"
    before = state.read_bytes()
    fails(capsys, args("2"), "an unfinished training run is in")
    assert state.read_bytes() == before and not (tmp_path / "c.json").exists()


def test_an_attack_does_not_take_over_a_certify_folder(tmp_path, fmnist_dir, classifier_path, capsys):
    grid = tmp_path / "grid"
    assert main(["certify", "--method", "rs", "--data-dir", str(fmnist_dir), "--sigma", "0.25", "--classifier",
                 str(classifier_path), "--n0", "4", "--n", "8", "--max", "1", "--device", "cpu", "--quiet",
                 "--out-dir", str(grid)]) == 0
    before = snapshot(grid)
    fails(capsys, ["attack", "--method", "rs", "--data-dir", str(fmnist_dir), "--sigma", "0.25", "--classifier",
                   str(classifier_path), "--eps", "0.25", "--steps", "1", "--eot", "1", "--n", "8", "--max", "1",
                   "--device", "cpu", "--quiet", "--out-dir", str(grid)], "holds another kind of run")
    assert snapshot(grid) == before and [e["label"] for e in read_index(grid)] == ["rs_sigma0.25_tiny_cnn"]


def test_models_get_the_mode_of_any_file_under_the_umask(tmp_path, fmnist_dir):
    out = tmp_path / "c"
    old = os.umask(0o022)
    try:
        assert main(["train-classifier", "--sigma", "0", "--data-dir", str(fmnist_dir), "--epochs", "1",
                     "--batch-size", "8", "--eval-limit", "4", "--quiet", "--out", str(out)]) == 0
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "c.safetensors", tmp_path / "c.json")}
    assert modes == {"c.safetensors": 0o644, "c.json": 0o644}


# ---- wrong answers without a word -----------------------------------------------------------------

TSV = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"


def write(path: Path, rows: str, newline: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((TSV + rows).replace("\n", newline).encode())
    return path


def test_analyze_pairs_files_of_the_same_name_and_refuses_other_images(tmp_path, capsys):
    a = write(tmp_path / "x" / "r.tsv", "0\t1\t1\t0.5\t1\t0:00:01.000000\n1\t2\t2\t0.5\t1\t0:00:01.000000\n")
    b = write(tmp_path / "y" / "r.tsv", "0\t1\t-1\t0\t0\t0:00:01.000000\n1\t2\t-1\t0\t0\t0:00:01.000000\n")
    assert main(["analyze", str(a), str(b), "--paired", "x/r,y/r", "--radii", "0"]) == 0
    out = capsys.readouterr().out
    assert "| x/r - y/r " in out and "+100.0" in out
    other = write(tmp_path / "z.tsv", "0\t3\t-1\t0\t0\t0:00:01.000000\n1\t2\t-1\t0\t0\t0:00:01.000000\n")
    err = fails(capsys, ["analyze", str(a), str(other), "--paired", "r,z"], "not the same images")
    assert capsys.readouterr().out == "" and "idx 0 the labels 1 and 3" in err
    fails(capsys, ["analyze", str(a), str(b), "--labels", "s", "s"], "label 's' names two results files")


def test_analyze_reads_crlf_and_drops_a_torn_last_line(tmp_path, capsys):
    crlf = write(tmp_path / "crlf.tsv", "0\t1\t1\t0.5\t1\t0:00:01.000000\n", newline="\r\n")
    torn = tmp_path / "torn.tsv"
    torn.write_text(TSV + "0\t1\t1\t0.5\t1\t0:00:01.000000\n1\t2\t2\t0.2")
    assert main(["analyze", str(crlf), str(torn), "--radii", "0"]) == 0
    captured = capsys.readouterr()
    assert "| crlf | 1 " in captured.out and "| torn | 1 " in captured.out
    assert "dropped the unfinished last line of" in captured.err


@pytest.mark.parametrize("extra,message", [
    (["--sigma", "1e3"], "is no noise level in [0,1] pixel units (at most 10)"),
    (["--cuda-graphs"], "--cuda-graphs replays CUDA graphs and needs a CUDA device"),
    (["--runs", "7"], "--runs does not apply to --method rs"),
    (["--local-sigma", "0.12"], "--local-sigma does not apply to --method rs"),
    (["--run-seed", "-1"], "--run-seed must be a whole number >= 0"),
])
def test_options_that_cannot_apply_are_refused(tmp_path, fmnist_dir, classifier_path, capsys, extra, message):
    args = rs_args(fmnist_dir, classifier_path, tmp_path / "r.tsv")
    if extra[0] == "--run-seed":
        args[args.index("--method") + 1] = "densepure"
    fails(capsys, [*args, *extra], message)
    assert listing(tmp_path) == []


def test_n_is_refused_with_sequential_sampling(tmp_path, fmnist_dir, classifier_path, capsys):
    fails(capsys, rs_args(fmnist_dir, classifier_path, tmp_path / "r.tsv", "--sampling", "sequential", "--n-max",
                          "100"), "--n does not apply to --sampling sequential")
    assert listing(tmp_path) == []


def test_the_audit_refuses_the_options_it_would_ignore(tmp_path, fmnist_dir, classifier_path, capsys):
    out = tmp_path / "r.tsv"
    assert main(rs_args(fmnist_dir, classifier_path, out, "--max", "2")) == 0
    fails(capsys, ["attack", "--audit", str(out), "--method", "dds", "--sigma", "0.5", "--eps", "0.25"],
          "drop --eps, --method, --sigma")
    rows = read_rows(out)[1]
    text = out.read_text().replace(f"\n{rows[1].idx}\t", "\n99999\t")
    out.write_text(text)
    fails(capsys, ["attack", "--audit", str(out), "--data-dir", str(fmnist_dir), "--device", "cpu"],
          "has idx 99999, outside the 12 images")


def test_a_classifier_json_with_no_classes_is_refused(tmp_path, fmnist_dir, classifier_path, capsys):
    weights = tmp_path / "c.safetensors"
    weights.write_bytes(Path(classifier_path).read_bytes())
    doc = json.loads(Path(classifier_path).with_suffix(".json").read_text())
    (tmp_path / "c.json").write_text(json.dumps({**doc, "num_classes": 0}))
    fails(capsys, rs_args(fmnist_dir, tmp_path / "c", tmp_path / "r.tsv"), "num_classes must be a whole number >= 2")
    assert not (tmp_path / "r.tsv").exists()


def test_a_diffusers_folder_with_a_pickle_is_refused_in_one_plain_line(tmp_path, fmnist_dir, classifier_path,
                                                                      capsys):
    from diffusers import DDPMScheduler, UNet2DModel

    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = UNet2DModel(sample_size=28, in_channels=1, out_channels=1, layers_per_block=1,
                           block_out_channels=(8, 8), down_block_types=("DownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    folder = tmp_path / "ddpm"
    unet.save_pretrained(folder)
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder)
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    good = folder / "diffusion_pytorch_model.bin"
    torch.save(unet.state_dict(), good)  # weights only: loads
    def args(out: Path) -> list[str]:
        dds = rs_args(fmnist_dir, classifier_path, out, "--denoiser", str(folder), "--max", "1")
        dds[dds.index("--method") + 1] = "dds"
        return dds

    assert main(args(tmp_path / "r.tsv")) == 0
    torch.save({"weights": subprocess.Popen}, good)  # pickled code, which weights-only loading refuses
    err = fails(capsys, args(tmp_path / "s.tsv"), "refused to load")
    assert "pickled objects other than tensors" in err and "unsafe" not in err.lower()


# ---- smaller ----------------------------------------------------------------------------------------

def test_the_manifest_says_a_run_stopped(tmp_path, fmnist_dir, classifier_path):
    import signal
    import time

    out = tmp_path / "r.tsv"
    marker = tmp_path.parent / f"{tmp_path.name}.paused"
    proc = subprocess.Popen([sys.executable, CRASH, "1", "pause", "--",
                             *rs_args(fmnist_dir, classifier_path, out, "--max", "3")], stderr=subprocess.PIPE,
                            env={**os.environ, "PAUSE_MARKER": str(marker)})
    deadline = time.time() + 120
    while time.time() < deadline and not marker.exists():
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    manifest = json.loads((tmp_path / "r.tsv.json").read_text())
    assert manifest["status"] == "stopped" and manifest["stopped_by"] == "terminated (SIGTERM)"
    assert manifest["throughput"]["images"] == 1


def test_no_stale_part_lock_stays_after_a_merge(tmp_path, fmnist_dir, classifier_path):
    """A part file of a crashed two-process run, its lock left behind, merged by a one-process resume."""
    from diffsmooth.results import lock_path, part_path

    out = tmp_path / "r.tsv"
    assert main(rs_args(fmnist_dir, classifier_path, out, "--max", "2")) == 0
    for r in (0, 1):  # the two ranks' parts of the run that crashed
        part_path(out, r).write_text(out.read_text() if r == 0 else TSV)
        part_path(out, r).with_name(part_path(out, r).name + ".json").write_text((tmp_path / "r.tsv.json").read_text())
        lock_path(part_path(out, r)).write_text("")
    out.unlink()
    (tmp_path / "r.tsv.json").unlink()
    assert main(rs_args(fmnist_dir, classifier_path, out, "--max", "3", "--resume")) == 0
    assert listing(tmp_path) == ["r.tsv", "r.tsv.json"]


def test_the_manifest_says_a_full_disk_stopped_the_run(tmp_path, fmnist_dir, classifier_path, capsys, monkeypatch):
    import errno

    from diffsmooth.results import Sink

    write, calls = Sink.write, []

    def write_until_full(self, rows):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        write(self, rows)

    monkeypatch.setattr(Sink, "write", write_until_full)
    out = tmp_path / "r.tsv"
    fails(capsys, rs_args(fmnist_dir, classifier_path, out, "--max", "3"), "No space left on device")
    manifest = json.loads((tmp_path / "r.tsv.json").read_text())
    assert manifest["status"] == "stopped" and manifest["stopped_by"].startswith("OSError: [Errno 28]")
    assert [r.idx for r in read_rows(out)[1]] == [0]
