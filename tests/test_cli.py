"""The command line, in-process and as a subprocess: certify/predict/analyze, resume after a kill,
and every kind of bad input (exit code 2, one line, no traceback, no file)."""

from __future__ import annotations

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
from diffsmooth.files import file_sha256
from diffsmooth.results import read_rows


def rs_args(fmnist_dir, classifier_path, out, *extra):
    return ["certify", "--method", "rs", "--dataset", "fashion-mnist", "--data-dir", str(fmnist_dir),
            "--sigma", "0.25", "--classifier", str(classifier_path), "--n0", "10", "--n", "50",
            "--batch", "64", "--device", "cpu", "--quiet", "--out", str(out), *extra]


def cli(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "diffsmooth", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300, **kw)


def test_help_lists_every_command_and_option(capsys):
    out = cli("--help")
    assert out.returncode == 0
    for command in ("demo", "certify", "predict", "analyze", "purify"):
        assert command in out.stdout
    with pytest.raises(SystemExit) as exited:
        main(["certify", "--help"])
    assert exited.value.code == 0
    sub = capsys.readouterr().out
    for option in ("--method", "--sigma", "--denoiser", "--classifier", "--local-sigma", "--vote", "--local-noise",
                   "--n0", "--alpha", "--batch", "--skip", "--max", "--indices", "--seed", "--resume", "--overwrite"):
        assert option in sub


def test_certify_in_process_writes_rows_and_manifest(tmp_path, fmnist_dir, classifier_path):
    out = tmp_path / "rs.tsv"
    assert main(rs_args(fmnist_dir, classifier_path, out, "--max", "3")) == 0
    mode, rows = read_rows(out)
    assert mode == "certify" and [r.idx for r in rows] == [0, 1, 2]
    assert [r.label for r in rows] == [0, 1, 2]
    manifest = (tmp_path / "rs.tsv.json").read_text()
    assert '"sha256"' in manifest and '"method": "rs"' in manifest


def test_predict_in_process(tmp_path, fmnist_dir, classifier_path):
    out = tmp_path / "p.tsv"
    args = rs_args(fmnist_dir, classifier_path, out, "--indices", "4", "7")
    args[0] = "predict"
    args.remove("--n0"), args.remove("10")
    assert main(args) == 0
    assert read_rows(out)[0] == "predict" and [r.idx for r in read_rows(out)[1]] == [4, 7]


def test_killed_run_resumes_to_the_uninterrupted_file(tmp_path, fmnist_dir, classifier_path):
    """A process that dies (os._exit, as under SIGKILL) right after its second flushed image is resumed
    to exactly the rows of an uninterrupted run."""
    slow = ["--n", "300", "--batch", "300", "--max", "5"]
    full = tmp_path / "full.tsv"
    assert main(rs_args(fmnist_dir, classifier_path, full, *slow)) == 0
    part = tmp_path / "part.tsv"
    crash = Path(__file__).parent / "crash_after_rows.py"
    died = subprocess.run([sys.executable, str(crash), "2", "--", *rs_args(fmnist_dir, classifier_path, part, *slow)],
                          capture_output=True, text=True, timeout=300)
    assert died.returncode == 1, died.stderr
    assert [r.idx for r in read_rows(part)[1]] == [0, 1]
    assert main(rs_args(fmnist_dir, classifier_path, part, *slow)) == 2  # needs --resume
    assert main(rs_args(fmnist_dir, classifier_path, part, *slow, "--resume")) == 0
    strip = lambda rows: [(r.idx, r.label, r.predict, r.radius, r.correct) for r in rows]  # noqa: E731
    assert strip(read_rows(part)[1]) == strip(read_rows(full)[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.tsv", "full.tsv.json", "part.tsv", "part.tsv.json"]


def test_analyze_and_plot(tmp_path, capsys):
    tsv = tmp_path / "a.tsv"
    tsv.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.6\t1\t0:00:01.000000\n"
                   "1\t2\t-1\t0.0\t0\t0:00:01.000000\n")
    png = tmp_path / "c.png"
    assert main(["analyze", str(tsv), "--radii", "0", "0.5", "1", "--format", "csv", "--plot", str(png)]) == 0
    assert capsys.readouterr().out.splitlines() == ["run,images,r=0,r=0.5,r=1,ACR,abstain,clean acc,s/img",
                                       "a,2,50.0,50.0,0.0,0.300,50.0,50.0,1.00"]
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_analyze_errors_and_paired_differences(tmp_path, capsys):
    head = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
    (tmp_path / "a.tsv").write_text(head + "0\t1\t1\t0.6\t1\t0:00:01\n1\t2\t2\t0.6\t1\t0:00:01\n")
    (tmp_path / "b.tsv").write_text(head + "0\t1\t1\t0.6\t1\t0:00:01\n1\t2\t-1\t0.0\t0\t0:00:01\n")
    files = [str(tmp_path / "a.tsv"), str(tmp_path / "b.tsv")]
    assert main(["analyze", *files, "--radii", "0.5", "--errors", "--paired", "a,b"]) == 0
    out = capsys.readouterr().out
    assert "| b   | 2      | 50.0 ± 35.4 |" in out  # sqrt(0.5 * 0.5 / 2)
    assert "| a - b          | 2      | +50.0 ± 50.0 |" in out  # d = 0, 1
    assert main(["analyze", *files, "--paired", "a,c"]) == 2
    assert "--paired 'a,c': give two run labels separated by a comma, from: a, b" in capsys.readouterr().err


BAD = [
    (["--sigma", "0"], "--sigma must be a finite noise level > 0"),
    (["--alpha", "1.5"], "--alpha must lie strictly between 0 and 1"),
    (["--n", "0"], "--n must be a whole number >= 1"),
    (["--classifier", "/nonexistent/model.safetensors"], "is neither an existing path nor a shipped model"),
    (["--data-dir", "/nonexistent/dir", "--dataset", "mnist"], "mnist"),
    (["--method", "dds", "--denoiser", "/nonexistent/ddpm.pt"], "denoiser '/nonexistent/ddpm.pt' is neither"),
    (["--indices", "99999"], "outside the dataset"),
]


@pytest.mark.parametrize("extra,message", BAD, ids=[m for _, m in BAD])
def test_bad_input_exits_2_with_one_line_and_no_file(tmp_path, fmnist_dir, classifier_path, extra, message, capsys):
    out = tmp_path / "r.tsv"
    args = rs_args(fmnist_dir, classifier_path, out)
    for i in range(0, len(extra), 2):
        if extra[i] in args:
            args[args.index(extra[i]) + 1] = extra[i + 1]
        else:
            args += extra[i : i + 2]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not Path(str(out) + ".json").exists()


def test_bad_input_in_a_real_process_prints_no_traceback(tmp_path, fmnist_dir, classifier_path):
    """The console entry point as a user runs it: exit 2, one line, no file."""
    out = tmp_path / "r.tsv"
    result = cli(*rs_args(fmnist_dir, classifier_path, out, "--sigma", "0"))
    assert result.returncode == 2 and "--sigma must be a finite noise level > 0" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_that_does_not_fit_the_dataset(tmp_path, fmnist_dir, capsys):
    out = tmp_path / "r.tsv"
    cifar = Path(__file__).parent / "fixtures" / "classifiers" / "cohen_cifar_resnet20_checkpoint.pth.tar"
    assert main(rs_args(fmnist_dir, cifar, out)) == 2
    err = capsys.readouterr().err
    assert "3 channel" in err.replace("3-channel", "3 channel") and not out.exists()


def test_existing_results_are_not_truncated(tmp_path, fmnist_dir, classifier_path, capsys):
    out = tmp_path / "r.tsv"
    out.write_text("precious\n")
    for extra in ((), ("--overwrite",), ("--resume",)):
        assert main(rs_args(fmnist_dir, classifier_path, out, *extra)) == 2
        assert "exists and is not a results TSV; it is left alone" in capsys.readouterr().err
    assert out.read_text() == "precious\n" and sorted(p.name for p in tmp_path.iterdir()) == ["r.tsv"]


@pytest.mark.parametrize("method", ["rs", "dds", "diffsmooth"])
def test_certify_three_images_with_each_method(tmp_path, fmnist_dir, classifier_path, denoiser_path, method):
    out = tmp_path / f"{method}.tsv"
    # Each method gets the options it uses: any other would be refused (issue #31).
    extra = {"rs": [], "dds": ["--denoiser", str(denoiser_path)],
             "diffsmooth": ["--denoiser", str(denoiser_path), "--m", "3", "--vote", "hard"]}[method]
    args = rs_args(fmnist_dir, classifier_path, out, "--max", "3", *extra)
    args[args.index("--method") + 1] = method
    assert main(args) == 0
    assert [r.idx for r in read_rows(out)[1]] == [0, 1, 2]
    manifest = json.loads((tmp_path / f"{method}.tsv.json").read_text())
    assert manifest["base"]["method"] == method and manifest["status"] == "finished"
    if method != "rs":
        assert manifest["base"]["denoiser"]["t_star"] > 0
        assert manifest["base"]["denoiser"]["sigma"] == 0.25
    if method == "diffsmooth":
        assert manifest["base"]["m"] == 3 and manifest["base"]["vote"] == "hard"


def test_models_are_named_as_the_trainers_out_named_them(tmp_path, fmnist_dir, classifier_path):
    """`train-denoiser --out models/dncnn` writes models/dncnn.safetensors + .json: `--denoiser
    models/dncnn` (and the same for `--classifier`) finds them."""
    from diffsmooth.denoisers import create_dncnn, save_denoiser

    dncnn = create_dncnn("dncnn", 1, generator=torch.Generator().manual_seed(0), depth=3, width=4, sigma=0.25)
    weights = save_denoiser(tmp_path / "dncnn", dncnn.eval())
    out = tmp_path / "d.tsv"
    args = rs_args(fmnist_dir, str(classifier_path).removesuffix(".safetensors"), out, "--max", "2",
                   "--denoiser", str(tmp_path / "dncnn"))
    args[args.index("--method") + 1] = "denoised"
    assert main(args) == 0
    manifest = json.loads((tmp_path / "d.tsv.json").read_text())
    assert manifest["base"]["denoiser"]["sha256"] == file_sha256(weights)
    assert manifest["base"]["classifier"]["sha256"] == file_sha256(classifier_path)


def test_purify_writes_a_grid_and_reports_t_star(tmp_path, fmnist_dir, denoiser_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["purify", "--dataset", "fashion-mnist", "--data-dir", str(fmnist_dir), "--sigma", "0.5",
                 "--denoiser", str(denoiser_path), "--indices", "0", "1", "--device", "cpu", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert "t* = " in capsys.readouterr().err


def test_demo_with_the_shipped_models(tmp_path, fmnist_dir, capsys):
    """The embedded default end to end, on the tiny data set and very small n."""
    out_dir = tmp_path / "demo"
    assert main(["demo", "--data-dir", str(fmnist_dir), "--max", "2", "--n0", "4", "--n", "8", "--batch", "64",
                 "--sampling", "fixed", "--device", "cpu", "--quiet", "--out-dir", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    for label in ("RS", "RS (SmoothAdv)", "DDS", "DiffSmooth (soft)", "DiffSmooth (hard)"):
        assert f"| {label} " in printed
    assert "Each cell: % of images classified correctly with a certified l2 radius >= r" in printed
    assert "DiffSmooth (soft) - RS (points, paired standard error): r=0.5: " in printed
    assert "DiffSmooth (soft) - RS (SmoothAdv) (points, paired standard error): r=0.5: " in printed
    # the paper's pairing: DiffSmooth's local classifier is the SmoothAdv one of local sigma 0.25
    index = json.loads((out_dir / "index.json").read_text())
    local = {e["spec"]["method"]["classifier"] for e in index["runs"] if e["spec"]["method"]["method"] == "diffsmooth"}
    assert local == {"fmnist_cnn_smoothadv_0.25"}
    assert "2 images are too few to rank the methods (the errors assume >= 30)" in printed
    # n = 8, alpha 0.001: p_lower = 0.001^(1/8) = 0.4217 < 1/2, so no radius at all
    assert "With n = 8, no radius above 0.00 can be certified" in printed
    names = sorted(p.name for p in out_dir.iterdir())
    assert {"table.md", "certified_accuracy.png", "purification.png", "rs_sigma0.5.tsv",
            "rs_sigma0.5_fmnist_cnn_smoothadv_0.50.tsv"} <= set(names)
    assert main(["demo", "--local-sigma", "0.3", "--out-dir", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no shipped smoothadv classifier for --local-sigma 0.3" in err and "--robust none" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "other").exists()


def test_demo_samples_sequentially_by_default(tmp_path, fmnist_dir, capsys):
    """The default demo decides the table's radii in looks: a samples column, no ACR, the cap of n_max."""
    out_dir = tmp_path / "demo"
    assert main(["demo", "--data-dir", str(fmnist_dir), "--max", "2", "--n0", "4", "--n-max", "100", "--batch", "64",
                 "--device", "cpu", "--quiet", "--out-dir", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    head = next(line for line in printed.splitlines() if line.startswith("| run "))
    assert "samples/img" in head and "ACR" not in head
    assert "n_max=100 (sequential)" in printed and "each radius of the table was decided" in printed
    # Looks of 64 and 100 spend 0.39 / 0.61 of alpha: all 100 agreeing give 0.00061^(1/100) = 0.929
    assert "With n_max = 100, no radius above 0.73 can be certified" in printed
    rows = read_rows(out_dir / "rs_sigma0.5.tsv")[1]
    assert len(rows) == 2 and all(int(dict(r.extra)["samples"]) in (64, 100) for r in rows)


def test_purify_stats_prints_the_diagnostic_and_writes_json(tmp_path, fmnist_dir, denoiser_path, capsys):
    out = tmp_path / "stats.json"
    assert main(["purify", "--data-dir", str(fmnist_dir), "--sigma", "0.5", "--denoiser", str(denoiser_path),
                 "--indices", "0", "1", "--device", "cpu", "--stats", "--draws", "3", "--runs", "2", "--steps", "2",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "||D(x+d) - x|| (to the clean image)" in printed and "suggested local sigma" in printed
    doc = json.loads(out.read_text())
    assert doc["images"] == 2 and doc["draws"] == 3 and doc["to_clean"]["count"] == 6
    assert doc["local_sigma"] > 0 and doc["to_reverse_mean"]["count"] == 6
    assert main(["purify", "--data-dir", str(fmnist_dir), "--sigma", "0.5", "--denoiser", str(denoiser_path)]) == 2
    assert "give --out FIGURE for the grid, --stats" in capsys.readouterr().err


def test_demo_verdict_ranks_only_beyond_two_paired_errors(tmp_path):
    from diffsmooth.cli.demo import verdict

    head = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
    rows = lambda radii: head + "".join(f"{i}\t1\t1\t{r}\t1\t0:00:01\n" for i, r in enumerate(radii))  # noqa: E731
    paths = {}
    for label, radii in {"RS": [0.4] * 40, "DDS": [0.6] * 20 + [0.4] * 20,
                         "DiffSmooth (soft)": [0.6] * 22 + [0.4] * 18}.items():
        paths[label] = tmp_path / f"{len(paths)}.tsv"
        paths[label].write_text(rows(radii))
    text = verdict(paths, 0.5, 500, 0.001)
    # vs RS at r = 0.5: 22 of 40 images gain (d = 1), no loss: +55.0, se = sqrt(0.55 * 0.45 * 40 / 39 / 40)
    assert "DiffSmooth (soft) - RS (points, paired standard error): r=0.5: +55.0 ± 8.0" in text
    assert "DiffSmooth (soft) - DDS (points, paired standard error): r=0.5: +5.0 ± 3.5" in text
    assert "Beyond two standard errors: DiffSmooth (soft) vs RS at r=0.5; 40 images are a small sample" in text
    # alpha^(1/n) = 0.001^(1/500) = 0.98628 -> 0.5 * Phi^-1(0.98628) = 1.10
    assert "With n = 500, no radius above 1.10 can be certified" in text
    for path in paths.values():
        path.write_text(rows([0.4] * 40))
    assert "40 images are too few to rank the methods: no difference exceeds two standard errors" in verdict(
        paths, 0.5, 500, 0.001)


@pytest.mark.parametrize("robust, rs_row, local", [("none", None, None),
                                                   ("consistency", "RS (Consistency)", "fmnist_cnn_consistency_0.25")])
def test_demo_robust_picks_the_robust_rows(tmp_path, fmnist_dir, capsys, robust, rs_row, local):
    """--robust none is the Gaussian-only demo; consistency swaps both robust classifiers."""
    out_dir = tmp_path / "demo"
    assert main(["demo", "--data-dir", str(fmnist_dir), "--max", "2", "--n0", "4", "--n", "8", "--batch", "64",
                 "--sampling", "fixed", "--device", "cpu", "--quiet", "--robust", robust, "--out-dir", str(out_dir)]) == 0
    rows = [line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert rows[1:] == ["RS", *([rs_row] if rs_row else []), "DDS", "DiffSmooth (soft)", "DiffSmooth (hard)"]
    index = json.loads((out_dir / "index.json").read_text())
    assert {e["spec"]["method"]["classifier"] for e in index["runs"]
            if e["spec"]["method"]["method"] == "diffsmooth"} == {local}
