"""Hostile input, third round (issue #40): every case one line and exit 2 with no file left behind,
or the right answer; and the one table of which option applies where (``cli.applies``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffsmooth.cli import main
from diffsmooth.cli.applies import RULES, USED_BY, option_name
from diffsmooth.cli.options import typed_dests
from diffsmooth.results import read_rows

from test_faults import fails, rs_args


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---- options that do not apply ----------------------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (["--indices", "1", "--skip", "2"], "--skip does not apply to `diffsmooth certify` here (it is for a run without "
                                        "--indices (--indices names the images itself)); drop --skip"),
    (["--indices", "1", "--max", "3"], "--max does not apply"),
    (["--skip", "0", "--max", "0", "--indices", "1"], "--skip does not apply"),
    (["--split-samples"], "--split-samples does not apply to `diffsmooth certify` here (it is for runs under "
                          "torchrun (WORLD_SIZE > 1)); drop --split-samples"),
])
def test_certify_refuses_an_option_that_does_not_apply(extra, message, tmp_path, fmnist_dir, classifier_path, capsys):
    fails(capsys, rs_args(fmnist_dir, classifier_path, tmp_path / "r.tsv", *extra), message)
    assert listing(tmp_path) == []


@pytest.mark.parametrize("extra", [["--n-max", "0"], ["--max-radius", "0"], ["--min-radius", "0"],
                                   ["--tolerance", "0"], ["--radii", "0.5"]])
def test_certify_refuses_sequential_options_under_fixed_sampling_even_at_zero(extra, tmp_path, fmnist_dir,
                                                                             classifier_path, capsys):
    """A sweep of every numeric option found zeros accepted in silence: the table refuses what was typed."""
    fails(capsys, rs_args(fmnist_dir, classifier_path, tmp_path / "r.tsv", *extra),
          f"{extra[0]} does not apply to --sampling fixed (it is for --sampling sequential); drop {extra[0]}")
    assert listing(tmp_path) == []


@pytest.mark.parametrize("value", ["0.5", "nan", "-1"])
def test_attack_refuses_an_audit_fraction_without_audit(value, tmp_path, capsys):
    fails(capsys, ["attack", "--method", "rs", "--sigma", "0.25", "--eps", "0.25", "--max", "1", "--quiet",
                   "--out-dir", str(tmp_path / "a"), "--fraction", value],
          "--fraction does not apply to `diffsmooth attack` here (it is for --audit RESULTS.tsv); drop --fraction")
    assert listing(tmp_path) == []


def test_library_run_spec_refuses_a_zero_n_max_under_fixed_sampling():
    from diffsmooth.methods import MethodSpec
    from diffsmooth.runner import RunSpec
    from diffsmooth.validate import InputError

    method = MethodSpec("rs", dataset="fashion-mnist", sigma=0.25)
    with pytest.raises(InputError, match="need --sampling sequential"):
        RunSpec("certify", method, n_max=0).validate()
    RunSpec("certify", method, min_radius=0.0, tolerance=0.0).validate()  # the defaults themselves are fine


@pytest.mark.parametrize("extra, message", [
    (["--n", "20"], "--n does not apply to --sampling sequential (it is for --sampling fixed); drop --n"),
    (["--sampling", "fixed", "--n-max", "100"], "--n-max does not apply to --sampling fixed (it is for --sampling "
                                                "sequential (the default)); drop --n-max"),
    (["--n", "100", "--n-max", "100"], "--n does not apply to --sampling sequential"),
])
def test_demo_refuses_the_other_samplings_budget(extra, message, tmp_path, capsys):
    fails(capsys, ["demo", "--out-dir", str(tmp_path / "d"), "--max", "2", "--quiet", *extra], message)
    assert listing(tmp_path) == []


@pytest.mark.parametrize("extra, message", [
    (["--json", "s.json"], "--json does not apply to `diffsmooth purify` here (it is for --stats); drop --json"),
    (["--draws", "4"], "--draws does not apply"),
    (["--vote", "hard"], "--vote does not apply to `diffsmooth purify` here (it is for certify (purify shows the "
                         "purifier alone"),
    (["--classifier", "x.pth"], "--classifier does not apply"),
    (["--method", "denoised"], "--method does not apply"),
    (["--method", "rs"], "--method does not apply"),
])
def test_purify_refuses_what_it_does_not_use(extra, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fails(capsys, ["purify", "--sigma", "0.25", "--indices", "0", "--out", "g.png", *extra], message)
    assert listing(tmp_path) == []


@pytest.mark.parametrize("extra", [["--title", "t"], ["--overwrite"]])
def test_analyze_refuses_plot_options_without_a_plot(extra, tmp_path, capsys):
    tsv = tmp_path / "r.tsv"
    tsv.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t1.0\n")
    fails(capsys, ["analyze", str(tsv), *extra], f"{extra[0]} does not apply to `diffsmooth analyze` here (it is for "
                                                 f"--plot); drop {extra[0]}")


def test_options_for_one_mode_of_a_trainer_are_refused_in_another(tmp_path, capsys):
    fails(capsys, ["train-classifier", "--sigma", "0.25", "--purify-sigma", "0.5", "--out", str(tmp_path / "c")],
          "--purify-sigma does not apply to `diffsmooth train-classifier` here (it is for --finetune-on-purified)")
    fails(capsys, ["train-classifier", "--sigma", "0.25", "--purify-draws", "2", "--out", str(tmp_path / "c")],
          "--purify-draws needs --finetune-on-purified DENOISER")
    fails(capsys, ["train-denoiser", "--sigma", "0.25", "--mse-epochs", "1", "--out", str(tmp_path / "d")],
          "--mse-epochs applies to --objective mse+stability only")
    fails(capsys, ["train-denoiser", "--sigma", "0.25", "--classifier", "x", "--out", str(tmp_path / "d")],
          "--classifier does not apply to `diffsmooth train-denoiser` here (it is for --objective stability or "
          "mse+stability)")
    fails(capsys, ["train-diffusion", "--focus-fraction", "0.5", "--out", str(tmp_path)],
          "--focus-sigmas and --focus-fraction go together")
    assert listing(tmp_path) == []


def classifier_args(fmnist_dir, out, *extra):
    return ["train-classifier", "--sigma", "0.25", "--epochs", "1", "--train-limit", "64", "--eval-limit", "64",
            "--batch-size", "32", "--data-dir", str(fmnist_dir), "--quiet", "--out", str(out), *extra]


@pytest.mark.parametrize("extra, message", [
    (["--momentum", "-1"], "--momentum must lie in [0, 1) (e.g. 0.9), got -1.0"),
    (["--momentum", "nan"], "--momentum must lie in [0, 1)"),
    (["--weight-decay", "-1"], "--weight-decay must be a finite weight decay >= 0, got -1.0"),
    (["--weight-decay", "nan"], "--weight-decay must be a finite weight decay >= 0, got nan"),
    (["--method", "consistency", "--lbd", "nan"], "--lbd must be a finite number >= 0, got nan"),
    (["--method", "consistency", "--m-train", "0"], "--m-train must be a whole number >= 1, got 0"),
    (["--method", "smoothadv", "--epsilon", "-1"], "--epsilon must be a finite number >= 0, got -1.0"),
    (["--train-limit", "0"], "--train-limit must be a whole number >= 1, got 0"),
    (["--train-limit", "-59990"], "--train-limit must be a whole number >= 1, got -59990"),
    (["--eval-limit", "0"], "--eval-limit must be a whole number >= 1, got 0"),
    (["--eval-limit", "-9990"], "--eval-limit must be a whole number >= 1"),
    (["--seed", "-1"], "--seed must be a whole number >= 0, got -1"),  # certify's rule; it trained before
])
def test_a_trainer_refuses_bad_numbers_before_it_trains(extra, message, tmp_path, fmnist_dir, capsys):
    fails(capsys, classifier_args(fmnist_dir, tmp_path / "m", *extra), message)
    assert listing(tmp_path) == []


def test_the_denoiser_and_diffusion_trainers_check_their_optimizer_and_limits(tmp_path, fmnist_dir, capsys):
    fails(capsys, ["train-denoiser", "--sigma", "0.25", "--weight-decay", "-1", "--out", str(tmp_path / "d")],
          "--weight-decay must be a finite weight decay >= 0")
    fails(capsys, ["train-denoiser", "--sigma", "0.25", "--eval-limit", "0", "--data-dir", str(fmnist_dir),
                   "--out", str(tmp_path / "d")], "--eval-limit must be a whole number >= 1")
    fails(capsys, ["train-diffusion", "--train-limit", "-5", "--out", str(tmp_path)],
          "--train-limit must be a whole number >= 1")
    fails(capsys, ["train-diffusion", "--warmup-steps", "-1", "--out", str(tmp_path)],
          "--warmup-steps must be a whole number >= 0")
    fails(capsys, ["train-denoiser", "--sigma", "0.25", "--seed", "-1", "--out", str(tmp_path / "d")],
          "--seed must be a whole number >= 0, got -1")
    for groups in ("0", "-1"):  # a ZeroDivisionError and a GroupNorm RuntimeError before
        fails(capsys, ["train-diffusion", "--num-channels", "8", "--norm-groups", groups, "--out", str(tmp_path)],
              f"--norm-groups must be a whole number >= 1, got {groups}")
    fails(capsys, ["train-diffusion", "--seed", "-1", "--out", str(tmp_path)], "--seed must be a whole number >= 0")
    assert listing(tmp_path) == []


def test_typed_options_are_found_in_every_spelling():
    from diffsmooth.cli import build_parser

    parser = build_parser()
    argv = ["certify", "--sigma=0.25", "--n", "100000", "--local-sig", "0.25", "--out", "r.tsv", "--quiet"]
    assert typed_dests(parser, argv) == {"sigma", "n", "local_sigma", "out", "quiet"}
    # the parser's defaults are back afterwards
    args = parser.parse_args(["certify", "--out", "r.tsv"])
    assert str(args.n) == "100000" and args.quiet is False and args.func is not None


def test_every_rule_names_real_options_of_its_commands():
    from diffsmooth.cli import build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    for rule in RULES:  # every option of a rule is one of (at least one of) its commands
        dests = {a.dest for command in rule.commands for a in commands[command]._actions}
        assert set(rule.options) <= dests, (rule.commands, set(rule.options) - dests)
    assert option_name("attack", "steps") == "--reverse-steps" and set(USED_BY["runs"]) == {"densepure"}


def test_stop_after_must_be_a_multiple_of_checkpoint_every(tmp_path, capsys):
    fails(capsys, ["train-diffusion", "--steps", "10", "--checkpoint-every", "2", "--stop-after", "3",
                   "--out", str(tmp_path)],
          "--stop-after 3 must be a multiple of --checkpoint-every 2 (a resume continues from a checkpoint)")
    fails(capsys, ["train-diffusion", "--stop-after", "0", "--out", str(tmp_path)], "--stop-after must be a whole")
    assert listing(tmp_path) == []


# ---- tracebacks that became one line ---------------------------------------------------------------

@pytest.mark.parametrize("runs, message", [
    ([{"label": "a", "spec": {}}], "run 1 of its \"runs\" has no file (text)"),
    (["a.tsv"], "run 1 of its \"runs\" is str, not an object with label, file and spec"),
    ([{"label": "a", "file": "a.tsv"}], "has no spec (an object)"),
    ([{"label": "a", "file": "../a.tsv", "spec": {}}], "names the file '../a.tsv', which is not a file name inside"),
    ([], "index.json lists no runs; certify into the folder first, or give results TSVs"),
])
def test_analyze_names_a_damaged_index(runs, message, tmp_path, capsys):
    import json

    g = tmp_path / "g"
    g.mkdir()
    (g / "index.json").write_text(json.dumps({"format": "diffsmooth-index", "runs": runs}))
    fails(capsys, ["analyze", str(g)], message)


@pytest.mark.parametrize("extra, message", [
    (["--seed", "-1", "--out", "g.png"], "--seed must be a whole number >= 0, got -1"),
    (["--stats", "--json", "g.png", "--out", "g.png"], "--json and --out name the same file"),
])
def test_purify_refuses_a_bad_seed_or_one_file_for_two_outputs(extra, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fails(capsys, ["purify", "--sigma", "0.25", "--indices", "0", *extra], message)
    assert listing(tmp_path) == []


def cifar_folder(root: Path, *, data=None, labels=None) -> Path:
    """A cifar-10-batches-py folder whose test batch holds ``data`` and ``labels`` (defaults: valid)."""
    import pickle

    import numpy as np

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        test = name == "test_batch"
        batch = {b"labels": labels if test and labels is not None else [1, 2],
                 b"data": data if test and data is not None else np.zeros((2, 3072), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return root


@pytest.mark.parametrize("data, labels, message", [
    (None, [1, 2, 3], "data (2, 3072) and 3 labels are no CIFAR-10 batch (N rows of 3072 pixel values, one label "
                      "each); use the official files"),
    ("narrow", None, "data (4, 1536) and 2 labels are no CIFAR-10 batch"),
    (None, [1, -1], "image 1 has label -1, outside the 10 classes (0..9) of cifar10"),
    (None, [12, 1], "image 0 has label 12, outside the 10 classes"),
])
def test_a_damaged_cifar_folder_is_named_before_any_row(data, labels, message, tmp_path, classifier_path, capsys):
    import numpy as np

    if data == "narrow":
        data = np.zeros((4, 1536), dtype=np.uint8)
    root = cifar_folder(tmp_path / "D", data=data, labels=labels)
    out = tmp_path / "o"
    out.mkdir()
    fails(capsys, ["certify", "--method", "rs", "--dataset", "cifar10", "--data-dir", str(root), "--sigma", "0.25",
                   "--classifier", "cohen_cifar10_resnet110_0.25", "--n0", "10", "--n", "50", "--quiet",
                   "--out", str(out / "r.tsv")], message)
    assert listing(out) == []


def test_fashion_mnist_labels_outside_the_classes_or_float_pixels_are_named(tmp_path, capsys, classifier_path):
    import numpy as np

    from conftest import write_fmnist, write_idx

    folder = write_fmnist(tmp_path / "f")
    labels = np.arange(12) % 10
    labels[3] = 200
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels)
    out = tmp_path / "o"
    out.mkdir()
    fails(capsys, rs_args(folder, classifier_path, out / "r.tsv"),
          "image 3 has label 200, outside the 10 classes (0..9) of fashion-mnist; check the label file")
    assert listing(out) == []
    # float IDX pixels (type 0x0D) with a NaN: named as the data's fault, not the classifier's
    import gzip
    import struct

    pixels = np.zeros((12, 28, 28), dtype=">f4")
    pixels[0, 0, 0] = np.nan
    header = bytes([0, 0, 0x0D, 3]) + struct.pack(">3I", 12, 28, 28)
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + pixels.tobytes()))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.arange(12) % 10)
    fails(capsys, rs_args(folder, classifier_path, out / "r.tsv"), "fashion-mnist images must be unsigned bytes")
    assert listing(out) == []


# ---- file safety ------------------------------------------------------------------------------------

def test_a_users_own_file_named_like_the_lock_is_left_alone(tmp_path, fmnist_dir, classifier_path, capsys):
    mine = tmp_path / "r.tsv.lock"
    mine.write_text("my notes\n")
    fails(capsys, rs_args(fmnist_dir, classifier_path, tmp_path / "r.tsv", "--max", "2"),
          "r.tsv.lock exists and is no diffsmooth lock (a file of yours?); it is left alone")
    assert listing(tmp_path) == ["r.tsv.lock"] and mine.read_text() == "my notes\n"
    # a stale lock of ours (a killed run; older versions left it empty) is taken and removed
    mine.write_text("")
    assert main(rs_args(fmnist_dir, classifier_path, tmp_path / "r.tsv", "--max", "2")) == 0
    assert listing(tmp_path) == ["r.tsv", "r.tsv.json"]


@pytest.mark.parametrize("flag, message", [
    ("--out-dir", "--out-dir is empty; give a folder (it is created if missing), e.g. --out-dir results"),
    ("--out", "--out is empty; give a file name, e.g. --out results.tsv"),
])
def test_an_empty_output_path_is_refused(flag, message, tmp_path, fmnist_dir, classifier_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = rs_args(fmnist_dir, classifier_path, "x")
    args = args[:args.index("--out")] + [flag, ""]
    fails(capsys, args, message)
    assert listing(tmp_path) == []


def test_a_dangling_link_as_out_dir_is_named_as_such(tmp_path, fmnist_dir, classifier_path, capsys):
    link = tmp_path / "gone"
    link.symlink_to(tmp_path / "nowhere")
    args = rs_args(fmnist_dir, classifier_path, "x")
    args = args[:args.index("--out")] + ["--out-dir", str(link)]
    fails(capsys, args, "is a symbolic link to nothing")
    assert listing(tmp_path) == ["gone"]


def test_the_demo_leaves_another_runs_results_in_its_folder_alone(tmp_path, fmnist_dir, classifier_path, capsys):
    sweep = tmp_path / "sweep"
    args = rs_args(fmnist_dir, classifier_path, "x", "--max", "2")
    args = args[:args.index("--out")] + ["--out-dir", str(sweep)]
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in sweep.iterdir()}
    fails(capsys, ["demo", "--out-dir", str(sweep), "--max", "2", "--quiet", "--data-dir", str(fmnist_dir)],
          "holds results of another run (not a demo's); the demo leaves them alone: choose another --out-dir")
    assert {p.name: p.read_bytes() for p in sweep.iterdir()} == before


def test_a_resume_may_type_the_radii_in_another_order(tmp_path, fmnist_dir, classifier_path, capsys):
    import json

    from test_hostile import without_n

    out = tmp_path / "r.tsv"
    base = without_n(rs_args(fmnist_dir, classifier_path, out, "--sampling", "sequential", "--n-max", "200"))
    assert main(base + ["--radii", "0.5", "0.25", "--max", "2"]) == 0
    assert json.loads((tmp_path / "r.tsv.json").read_text())["spec"]["radii"] == [0.25, 0.5]
    assert main(base + ["--radii", "0.25", "0.5", "0.5", "--max", "3", "--resume"]) == 0
    # a manifest written before radii were recorded sorted resumes too
    doc = json.loads((tmp_path / "r.tsv.json").read_text())
    doc["spec"]["radii"] = [0.5, 0.25]
    (tmp_path / "r.tsv.json").write_text(json.dumps(doc))
    assert main(base + ["--radii", "0.25", "0.5", "--max", "4", "--resume"]) == 0
    assert len(read_rows(out)[1]) == 4


def test_two_classifiers_of_one_file_name_are_named_as_the_collision(tmp_path, fmnist_dir, classifier_path, capsys):
    import shutil

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        for suffix in (".safetensors", ".json"):
            shutil.copy(classifier_path.with_suffix(suffix), tmp_path / folder / f"cnn{suffix}")
    args = rs_args(fmnist_dir, classifier_path, "x")
    args = args[:args.index("--out")] + ["--out-dir", str(tmp_path / "g"), "--rs-classifier",
                                          str(tmp_path / "a" / "cnn.safetensors"), str(tmp_path / "b" / "cnn.safetensors")]
    fails(capsys, args, "would both be written to rs_sigma0.25_cnn.tsv: they differ only in classifier")
    assert not (tmp_path / "g").exists()


def test_a_recipe_grid_with_rs_classifiers_needs_no_classifier(tmp_path, capsys):
    (tmp_path / "D").mkdir()
    fails(capsys, ["certify", "--recipe", "cohen-cifar10", "--sigma", "0.25", "--rs-classifier", "A.pth.tar",
                   "B.pth.tar", "--data-dir", str(tmp_path / "D"), "--out-dir", str(tmp_path / "g")],
          "dataset 'cifar10' not found")
    fails(capsys, ["certify", "--recipe", "cohen-cifar10", "--sigma", "0.25", "--data-dir", str(tmp_path / "D"),
                   "--out", str(tmp_path / "r.tsv")], "recipe cohen-cifar10 needs --classifier")


def test_a_preset_for_a_model_that_names_its_own_architecture_is_refused(tmp_path, fmnist_dir, classifier_path,
                                                                          capsys):
    args = rs_args(fmnist_dir, classifier_path, tmp_path / "r.tsv")
    args[args.index("rs")] = "dds"
    fails(capsys, args + ["--denoiser-preset", "improved-cifar10-uncond"],
          "--denoiser-preset improved-cifar10-uncond does not apply to")
    assert listing(tmp_path) == []


@pytest.mark.parametrize("words", ["DefaultCPUAllocator: not enough memory: you tried to allocate 8 GB",
                                   "std::bad_alloc", "CUDA out of memory. Tried to allocate 2.00 GiB"])
def test_every_wording_of_an_allocation_failure_is_out_of_memory(words, tmp_path, fmnist_dir, classifier_path,
                                                                 capsys, monkeypatch):
    import torch

    def fail(*args, **kwargs):
        raise RuntimeError(words)

    monkeypatch.setattr(torch.nn.Conv2d, "forward", fail)
    fails(capsys, rs_args(fmnist_dir, classifier_path, tmp_path / "r.tsv"),
          "out of memory running the models on one image")
    assert listing(tmp_path) == []


def test_a_diverging_training_says_so_in_one_line(tmp_path, fmnist_dir, capsys):
    out = tmp_path / "m"
    fails(capsys, classifier_args(fmnist_dir, out, "--lr", "1e30", "--epochs", "4"), "(training diverged); lower --lr")
    assert not (tmp_path / "m.safetensors").exists() and not (tmp_path / "m.json").exists()
