"""Fault injection: broken models, shared folders, full and read-only disks, signals, bad input.

Every case ends with one line on stderr (no traceback), exit 2 (130/143 for signals), no
certificate from non-finite scores, and no file changed that the run does not own.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from diffsmooth.cli import main
from diffsmooth.results import Sink, lock_path, read_rows
from diffsmooth.validate import InputError

CRASH = str(Path(__file__).parent / "crash_after_rows.py")


def rs_args(fmnist_dir, classifier, out, *extra):
    return ["certify", "--method", "rs", "--dataset", "fashion-mnist", "--data-dir", str(fmnist_dir),
            "--sigma", "0.25", "--classifier", str(classifier), "--n0", "10", "--n", "50", "--batch", "50",
            "--device", "cpu", "--quiet", "--out", str(out), *extra]


def fails(capsys, args, message, code=2):
    """Run the command line in-process; it must fail with one line holding ``message``."""
    assert main(args) == code
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(folder.iterdir())}


def strip(rows):
    return [(r.idx, r.label, r.predict, r.radius, r.correct) for r in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, fmnist_dir, classifier_path):
    out = tmp_path_factory.mktemp("ref") / "ref.tsv"
    assert main(rs_args(fmnist_dir, classifier_path, out, "--max", "4")) == 0
    return strip(read_rows(out)[1])


# ---- broken models --------------------------------------------------------------------------------

def nan_copy(classifier_path: Path, folder: Path) -> Path:
    from safetensors.torch import load_file, save_file

    state = load_file(str(classifier_path))
    key = next(k for k, v in state.items() if v.is_floating_point() and v.dim() > 1)
    state[key][0].fill_(float("nan"))
    stem = folder / "nan_cnn"
    save_file(state, str(stem) + ".safetensors")
    doc = json.loads(classifier_path.with_suffix(".json").read_text())
    Path(str(stem) + ".json").write_text(json.dumps({**doc, "weights": "nan_cnn.safetensors"}))
    return Path(str(stem) + ".safetensors")


def test_nan_weights_are_refused_before_any_file(tmp_path, fmnist_dir, classifier_path, capsys):
    bad = nan_copy(classifier_path, tmp_path)
    out = tmp_path / "r.tsv"
    fails(capsys, rs_args(fmnist_dir, bad, out), "holds NaN or infinite weights")
    assert not out.exists() and not Path(f"{out}.json").exists()


def test_non_finite_scores_never_become_counts():
    from diffsmooth.smoothing import SmoothedClassifier

    class Broken(torch.nn.Module):
        def forward(self, x):
            scores = torch.zeros(x.shape[0], 3)
            scores[::7] = float("nan")  # a few NaN rows: their argmax would be class 0
            return scores

    smoothed = SmoothedClassifier(Broken(), 3, 0.25)
    with pytest.raises(InputError, match=r"\(Broken\) returned NaN or infinite scores"):
        smoothed.certify(torch.full((1, 4, 4), 0.5), n0=10, n=100, alpha=0.01, batch_size=32)
    # The flag is per phase: a healthy base afterwards certifies normally.
    healthy = SmoothedClassifier(lambda x: torch.zeros(x.shape[0], dtype=torch.long), 3, 0.25)
    assert healthy.certify(torch.full((1, 4, 4), 0.5), 10, 100, 0.01, 32).prediction == 0


def test_nan_scores_on_the_probe_image_stop_before_any_file(tmp_path):
    from diffsmooth.methods import MethodSpec
    from diffsmooth.runner import Job, RunSpec, run

    spec = RunSpec("certify", MethodSpec("rs", "toy", 0.25), n0=10, n=50, batch_size=50)
    with pytest.raises(InputError, match="returns NaN or infinite scores on a real image"):
        run(Job(spec, lambda i: (torch.rand(1, 4, 4), 0), [0, 1], tmp_path / "r.tsv", num_classes=2,
                base=lambda x: torch.full((x.shape[0], 2), float("inf")), progress=False))
    assert list(tmp_path.iterdir()) == []


def test_purify_refuses_non_finite_outputs(tmp_path, fmnist_dir, denoiser_path, monkeypatch, capsys):
    import diffsmooth.purification as purification

    real = purification.build_denoiser

    def broken(spec):
        denoiser = real(spec)
        denoiser.forward = lambda x: torch.full_like(x, float("nan"))
        return denoiser

    monkeypatch.setattr(purification, "build_denoiser", broken)
    out = tmp_path / "grid.png"
    fails(capsys, ["purify", "--data-dir", str(fmnist_dir), "--sigma", "0.5", "--denoiser", str(denoiser_path),
                   "--indices", "0", "--device", "cpu", "--out", str(out)], "returned NaN or infinite pixels")
    assert not out.exists()


@pytest.mark.parametrize("content,message", [
    (b"a" + bytes(range(200)), "cannot read checkpoint"),
    (os.urandom(4096), "cannot read"),
])
def test_garbage_checkpoints_get_one_line(tmp_path, fmnist_dir, capsys, content, message):
    bad = tmp_path / "garbage.pth.tar"
    bad.write_bytes(content)
    err = fails(capsys, rs_args(fmnist_dir, bad, tmp_path / "r.tsv"), message)
    assert "pickled objects other than tensors" not in err


def test_classifier_json_with_an_unknown_key(tmp_path, fmnist_dir, classifier_path, capsys):
    stem = tmp_path / "odd"
    (tmp_path / "odd.safetensors").write_bytes(classifier_path.read_bytes())
    doc = json.loads(classifier_path.with_suffix(".json").read_text())
    (tmp_path / "odd.json").write_text(json.dumps({**doc, "weights": "odd.safetensors", "colour": "blue"}))
    fails(capsys, rs_args(fmnist_dir, f"{stem}.safetensors", tmp_path / "r.tsv"), "unknown key(s) colour")


def test_out_of_memory_is_named_with_the_fix(tmp_path, fmnist_dir, classifier_path, monkeypatch, capsys):
    import diffsmooth.runner as runner

    class Huge(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 99999999 bytes")

    monkeypatch.setattr(runner, "build_base", lambda *args, **kwargs: Huge())
    out = tmp_path / "r.tsv"
    fails(capsys, rs_args(fmnist_dir, classifier_path, out), "out of memory")
    assert list(tmp_path.iterdir()) == []


# ---- files the run does not own --------------------------------------------------------------------

def test_a_model_json_beside_out_is_never_replaced(tmp_path, fmnist_dir, classifier_path, capsys):
    model_json = tmp_path / "cnn.json"
    model_json.write_text('{"arch": "fmnist_cnn"}')
    before = snapshot(tmp_path)
    for extra in ((), ("--overwrite",)):
        fails(capsys, rs_args(fmnist_dir, classifier_path, tmp_path / "cnn", *extra),
              "cnn.json exists and is not a diffsmooth results manifest")
    assert snapshot(tmp_path) == before


def test_a_lone_results_manifest_needs_overwrite(tmp_path, fmnist_dir, classifier_path, capsys, reference):
    out = tmp_path / "results"
    assert main(rs_args(fmnist_dir, classifier_path, out, "--max", "1")) == 0
    out.unlink()
    before = snapshot(tmp_path)
    fails(capsys, rs_args(fmnist_dir, classifier_path, out, "--max", "1"), "exists without its results file")
    assert snapshot(tmp_path) == before
    assert main(rs_args(fmnist_dir, classifier_path, out, "--max", "1", "--overwrite")) == 0


def test_a_second_writer_stops_with_a_message(tmp_path, fmnist_dir, classifier_path, capsys):
    out = tmp_path / "r.tsv"
    assert main(rs_args(fmnist_dir, classifier_path, out, "--max", "1")) == 0
    before = out.read_bytes()
    # Another process holds the lock (flock on a separate open file behaves like one).
    fd = os.open(lock_path(out), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        fails(capsys, rs_args(fmnist_dir, classifier_path, out, "--max", "3", "--resume"),
              "another diffsmooth process is writing")
    finally:
        os.close(fd)
    assert out.read_bytes() == before
    assert main(rs_args(fmnist_dir, classifier_path, out, "--max", "3", "--resume")) == 0
    assert [r.idx for r in read_rows(out)[1]] == [0, 1, 2] and not lock_path(out).exists()


def test_two_real_processes_on_one_out(tmp_path, fmnist_dir, classifier_path, reference):
    """Two processes started together: one writes, the other stops; the rows are the reference's."""
    out = tmp_path / "r.tsv"
    args = rs_args(fmnist_dir, classifier_path, out, "--max", "4", "--n", "400")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "diffsmooth", *args], stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert ("another diffsmooth process is writing" in loser or "exists; pass --resume" in loser), loser
    assert [r[0] for r in strip(read_rows(out)[1])] == [0, 1, 2, 3]


def test_resume_refuses_duplicate_rows(tmp_path, fmnist_dir, classifier_path, capsys):
    out = tmp_path / "r.tsv"
    assert main(rs_args(fmnist_dir, classifier_path, out, "--max", "2")) == 0
    lines = out.read_text().splitlines()
    out.write_text("\n".join([*lines, lines[1]]) + "\n")
    before = snapshot(tmp_path)
    fails(capsys, rs_args(fmnist_dir, classifier_path, out, "--max", "3", "--resume"), "holds two rows for idx 0")
    assert snapshot(tmp_path) == before


def test_overwrite_replaces_a_symlink_not_its_target(tmp_path, fmnist_dir, classifier_path):
    target = tmp_path / "precious.tsv"
    assert main(rs_args(fmnist_dir, classifier_path, target, "--max", "2")) == 0
    before = target.read_bytes(), Path(f"{target}.json").read_bytes()
    link = tmp_path / "link.tsv"
    link.symlink_to(target)
    assert main(rs_args(fmnist_dir, classifier_path, link, "--max", "1", "--overwrite")) == 0
    assert not link.is_symlink() and len(read_rows(link)[1]) == 1
    assert (target.read_bytes(), Path(f"{target}.json").read_bytes()) == before


def test_out_that_is_a_folder(tmp_path, fmnist_dir, classifier_path, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    fails(capsys, rs_args(fmnist_dir, classifier_path, folder, "--overwrite"), "is a folder")
    assert list(folder.iterdir()) == []


# ---- full and read-only disks ------------------------------------------------------------------------

@pytest.fixture
def tiny_fs(tmp_path):
    """A 1 MiB tmpfs where the machine lets us mount one (CI runs as root), else None."""
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_full_disk_leaves_a_resumable_file(tmp_path, tiny_fs, fmnist_dir, classifier_path, reference, capsys,
                                           monkeypatch):
    folder = tiny_fs if tiny_fs is not None else tmp_path
    out = folder / "r.tsv"
    assert main(rs_args(fmnist_dir, classifier_path, out, "--max", "2")) == 0
    if tiny_fs is not None:
        filler = folder / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # fill the disk to the last byte
        try:
            for size in (65536, 4096, 512, 1):
                while True:
                    try:
                        os.write(fd, b"\0" * size)
                    except OSError as err:
                        assert err.errno == errno.ENOSPC
                        break
        finally:
            os.close(fd)
    else:  # no mount allowed here: the same error, injected at the first write
        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device", str(out))
        monkeypatch.setattr("diffsmooth.results.store.atomic_write_text", full)
    before = out.read_bytes()
    fails(capsys, rs_args(fmnist_dir, classifier_path, out, "--max", "4", "--resume"), "No space left on device")
    assert out.read_bytes() == before
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    if tiny_fs is not None:
        filler.unlink()
    else:
        monkeypatch.undo()
    assert main(rs_args(fmnist_dir, classifier_path, out, "--max", "4", "--resume")) == 0
    assert strip(read_rows(out)[1]) == reference


def test_disk_full_mid_run(tmp_path, fmnist_dir, classifier_path, reference, capsys, monkeypatch):
    out = tmp_path / "r.tsv"
    write = Sink.write
    calls = []

    def write_until_full(self, rows):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        write(self, rows)

    monkeypatch.setattr(Sink, "write", write_until_full)
    fails(capsys, rs_args(fmnist_dir, classifier_path, out, "--max", "4"), "No space left on device")
    monkeypatch.undo()
    assert [r.idx for r in read_rows(out)[1]] == [0, 1] and not lock_path(out).exists()
    assert main(rs_args(fmnist_dir, classifier_path, out, "--max", "4", "--resume")) == 0
    assert strip(read_rows(out)[1]) == reference


def test_read_only_output_folder(tmp_path, tiny_fs, fmnist_dir, classifier_path, capsys):
    if tiny_fs is None:
        # Only root may mount the read-only tmpfs this needs; CI runs as root, so it runs there.
        if os.geteuid() != 0:
            pytest.skip(f"needs root to mount a read-only tmpfs (running as uid {os.geteuid()})")
        pytest.fail("running as root but no tmpfs could be mounted; this test needs `mount -t tmpfs`")
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    fails(capsys, rs_args(fmnist_dir, classifier_path, tiny_fs / "r.tsv"), "is not writable")
    fails(capsys, ["train-classifier", "--sigma", "0", "--data-dir", str(fmnist_dir), "--out", str(tiny_fs / "c")],
          "is not writable")


# ---- signals ------------------------------------------------------------------------------------------

def test_sigterm_mid_run_exits_cleanly_and_resumes(tmp_path, fmnist_dir, classifier_path, reference):
    out = tmp_path / "r.tsv"
    args = rs_args(fmnist_dir, classifier_path, out, "--max", "4")
    # The child waits after its first flushed row until the signal comes: it surely lands mid-run.
    marker = tmp_path.parent / f"{tmp_path.name}.paused"
    proc = subprocess.Popen([sys.executable, CRASH, "1", "pause", "--", *args], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PAUSE_MARKER": str(marker)})
    deadline = time.time() + 120
    while time.time() < deadline and not marker.exists():
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    code, err = proc.wait(timeout=60), proc.stderr.read()
    assert code == 143 and "terminated; rerun with --resume" in err and "Traceback" not in err, err
    assert [r.idx for r in read_rows(out)[1]] == [0]  # one of four images: the run was cut mid-way
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.tsv", "r.tsv.json"]
    assert main([*args, "--resume"]) == 0
    assert strip(read_rows(out)[1]) == reference
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.tsv", "r.tsv.json"]


def test_ctrl_c_while_models_load(tmp_path, fmnist_dir, classifier_path, monkeypatch, capsys):
    import diffsmooth.classifiers as classifiers

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(classifiers, "load_classifier", interrupted)
    out = tmp_path / "r.tsv"
    fails(capsys, rs_args(fmnist_dir, classifier_path, out), "interrupted", code=130)
    assert list(tmp_path.iterdir()) == []


# ---- bad input on the command line --------------------------------------------------------------------

@pytest.mark.parametrize("extra,message", [
    (["--seed", "-1"], "--seed must be a whole number >= 0"),
    (["--batch", "0"], "--batch must be a whole number >= 1"),
    (["--n", "2.5"], "argument --n/--num-samples: invalid int value: '2.5'"),
    (["--resume", "--overwrite"], "not allowed with argument"),
    (["--data-dir", "/nonexistent/dir"], "--data-dir /nonexistent/dir is not a folder"),
    (["--method", "magic"], "argument --method: invalid choice: 'magic'"),
])
def test_bad_arguments_get_one_line(tmp_path, fmnist_dir, classifier_path, capsys, extra, message):
    args = rs_args(fmnist_dir, classifier_path, tmp_path / "r.tsv")
    for flag in ("--data-dir", "--batch", "--n"):
        if flag in extra and flag in args:
            i = args.index(flag)
            del args[i : i + 2]
    if "--n" in extra:
        args.remove("--quiet")
    try:
        code = main([*args, *extra])
    except SystemExit as exit_:  # argparse exits from inside parse_args
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_binary_files_as_results(tmp_path, fmnist_dir, classifier_path, capsys):
    blob = tmp_path / "blob.tsv"
    blob.write_bytes(bytes(range(256)) * 4)
    fails(capsys, ["analyze", str(blob)], "is not a text file")
    Path(f"{blob}.json").write_text(json.dumps({"spec": {"mode": "certify"}}))
    fails(capsys, rs_args(fmnist_dir, classifier_path, blob, "--resume"), "is not a results TSV")


@pytest.mark.parametrize("command", ["analyze", "purify"])
def test_unknown_figure_format(tmp_path, fmnist_dir, denoiser_path, capsys, command):
    tsv = tmp_path / "a.tsv"
    tsv.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t0:00:01.000000\n")
    args = (["analyze", str(tsv), "--plot", str(tmp_path / "x.bmp")] if command == "analyze" else
            ["purify", "--data-dir", str(fmnist_dir), "--sigma", "0.5", "--denoiser", str(denoiser_path),
             "--out", str(tmp_path / "x.bmp")])
    fails(capsys, args, "unknown figure format '.bmp'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tsv"]


def test_outputs_of_other_commands_are_not_replaced_unasked(tmp_path, fmnist_dir, denoiser_path, capsys):
    grid = tmp_path / "grid.png"
    grid.write_bytes(b"mine")
    fails(capsys, ["purify", "--data-dir", str(fmnist_dir), "--sigma", "0.5", "--denoiser", str(denoiser_path),
                   "--out", str(grid)], "exists; pass --overwrite")
    model = tmp_path / "clf"
    Path(f"{model}.json").write_text("{}")
    fails(capsys, ["train-classifier", "--sigma", "0", "--data-dir", str(fmnist_dir), "--out", str(model)],
          "clf.json exists; pass --overwrite")
    fails(capsys, ["train-classifier", "--sigma", "0", "--data-dir", str(fmnist_dir), "--out", f"{tmp_path}/new/"],
          "ends with '/'")
    fails(capsys, ["train-classifier", "--sigma", "0", "--out", str(tmp_path / "missing" / "c")], "does not exist")
    fails(capsys, ["train-diffusion", "--num-heads", "0", "--out", str(tmp_path / "d")], "--num-heads must be")
    file_dir = tmp_path / "demo-file"
    file_dir.write_text("x")
    fails(capsys, ["demo", "--out-dir", str(file_dir)], "is a file")
    paper = tmp_path / "paper"
    paper.mkdir()
    (paper / "table.md").write_text("my table")
    fails(capsys, ["demo", "--out-dir", str(paper)], "table.md exists in a folder the demo did not write")
    assert (paper / "table.md").read_text() == "my table"
    assert grid.read_bytes() == b"mine" and Path(f"{model}.json").read_text() == "{}"


def test_temp_files_are_removed_when_a_write_fails(tmp_path, monkeypatch):
    from diffsmooth.files import atomic_write_text

    def broken_replace(src, dst):
        raise OSError(errno.EIO, "I/O error", str(dst))

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_text(tmp_path / "r.tsv.part1.json", "{}")
    assert list(tmp_path.iterdir()) == []


# ---- analyze validates what it reads -------------------------------------------------------------------

HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"


@pytest.mark.parametrize("row,message", [
    ("0\t1\t1\t-0.5\t1\t0:00:01.0", "radius -0.5 is not a finite number >= 0"),
    ("0\t1\t1\tnan\t1\t0:00:01.0", "radius nan is not a finite number >= 0"),
    ("0\t1\t-1\t0.4\t0\t0:00:01.0", "an abstention (predict -1) must have radius 0"),
    ("0\t1\t2\t0.4\t1\t0:00:01.0", "correct is 1 but predict 2 vs label 1"),
])
def test_analyze_names_the_first_bad_line(tmp_path, capsys, row, message):
    tsv = tmp_path / "a.tsv"
    tsv.write_text(HEADER + "5\t1\t1\t0.3\t1\t0:00:01.0\n" + row + "\n")
    err = fails(capsys, ["analyze", str(tsv)], message)
    assert "line 3" in err


def test_analyze_refuses_duplicate_idx_and_keeps_a_final_row_without_newline(tmp_path, capsys):
    tsv = tmp_path / "a.tsv"
    tsv.write_text(HEADER + "0\t1\t1\t0.3\t1\t0:00:01.0\n0\t1\t1\t0.3\t1\t0:00:01.0\n")
    fails(capsys, ["analyze", str(tsv)], "holds two rows for idx 0 (lines 2 and 3)")
    tsv.write_text(HEADER + "0\t1\t1\t0.3\t1\t0:00:01.0\n1\t2\t2\t0.6\t1\t0:00:01.0")  # hand-written
    assert main(["analyze", str(tsv), "--format", "csv"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[1].startswith("a,2,") and captured.err == ""


def test_analyze_drops_a_torn_line_of_its_own_run_and_says_so(tmp_path, fmnist_dir, classifier_path, capsys):
    out = tmp_path / "r.tsv"
    assert main(rs_args(fmnist_dir, classifier_path, out, "--max", "2")) == 0
    with out.open("a") as f:
        f.write("2\t2\t2\t0.1")
    assert main(["analyze", str(out), "--format", "csv"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[1].startswith("r,2,")
    assert "dropped the unfinished last line" in captured.err
