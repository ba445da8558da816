"""One purification, many certificates: a grid run's rows equal the separate runs' rows."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from diffsmooth.cli import main
from diffsmooth.data import load_dataset
from diffsmooth.defenses import DiffSmooth, Grid
from diffsmooth.methods import MethodSpec, build_grid
from diffsmooth.results import configuration_label, read_index, read_rows
from diffsmooth.runner import Job, RunSpec, run
from diffsmooth.validate import InputError


@pytest.fixture(scope="module")
def second_classifier(tmp_path_factory):
    from diffsmooth.classifiers import create_classifier, save_classifier

    torch.manual_seed(1)
    model = create_classifier("fmnist_cnn", 10).eval()
    return save_classifier(tmp_path_factory.mktemp("clf2") / "other_cnn", model, {"note": "random weights"})


def grid_methods(classifier_path, second_classifier, denoiser_path):
    common = dict(dataset="fashion-mnist", sigma=0.25, denoiser=str(denoiser_path))
    methods = [MethodSpec("rs", classifier=str(classifier_path), **common),
               MethodSpec("dds", classifier=str(second_classifier), **common)]
    for local_sigma, clf in ((0.12, classifier_path), (0.25, second_classifier)):
        for m in (1, 3):
            for vote in ("soft", "hard"):
                methods.append(MethodSpec("diffsmooth", classifier=str(clf), m=m, local_sigma=local_sigma, vote=vote,
                                          **common))
    methods.append(MethodSpec("diffsmooth", classifier=str(classifier_path), m=3, local_sigma=0.12,
                              local_noise="fresh", **common))
    return methods


def strip(rows):
    return [(r.idx, r.label, r.predict, r.radius, r.correct) for r in rows]


def test_grid_rows_equal_the_separate_runs(tmp_path, fmnist_dir, classifier_path, second_classifier, denoiser_path):
    methods = grid_methods(classifier_path, second_classifier, denoiser_path)
    dataset = load_dataset("fashion-mnist", data_dir=fmnist_dir)
    spec = RunSpec("certify", methods[0], n0=12, n=40, alpha=0.01, batch_size=32, seed=5)
    indices = [0, 1, 2, 3]
    report = run(Job(spec, dataset.__getitem__, indices, tmp_path / "grid", num_classes=10, grid=methods,
                     progress=False))
    assert len(report.by_configuration) == len(methods) == 11
    index = read_index(tmp_path / "grid")
    assert [e["label"] for e in index] == [configuration_label(m.to_dict()) for m in methods]
    for method, entry in zip(methods, index):
        alone = tmp_path / f"{entry['label']}.tsv"
        run(Job(replace(spec, method=method), dataset.__getitem__, indices, alone, num_classes=10, progress=False))
        assert strip(read_rows(entry["path"])[1]) == strip(read_rows(alone)[1]), entry["label"]
        # The grid's file carries the manifest a separate run writes: same spec, same base.
        grid_manifest = json.loads((tmp_path / "grid" / f"{entry['label']}.tsv.json").read_text())
        alone_manifest = json.loads((tmp_path / f"{entry['label']}.tsv.json").read_text())
        assert grid_manifest["spec"] == alone_manifest["spec"]
        assert grid_manifest["base"] == alone_manifest["base"]


def test_the_purifier_runs_once_per_batch_and_shared_copies_once(classifier_path, second_classifier, denoiser_path):
    methods = grid_methods(classifier_path, second_classifier, denoiser_path)
    grid = build_grid(methods)
    assert isinstance(grid, Grid) and grid.num_configurations == 11
    calls = {"denoiser": 0, "classifier": 0}
    denoiser = grid.members[1].denoiser
    denoiser.register_forward_hook(lambda *a: calls.__setitem__("denoiser", calls["denoiser"] + 1))
    classifiers = {id(member.classifier): member.classifier for member in grid.members}
    assert len(classifiers) == 2  # two files, each loaded once
    for classifier in classifiers.values():
        classifier.register_forward_hook(lambda *a: calls.__setitem__("classifier", calls["classifier"] + 1))
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        scores = grid(x)
    assert scores.shape == (4, 11, 10)
    assert calls["denoiser"] == 1
    # rs 1 + dds 1 + fixed copies (3 at local sigma 0.12, 3 at 0.25) + fresh 3: the hooks of the two shared
    # classifier objects fire once per call each.
    assert calls["classifier"] == 1 + 1 + 3 + 3 + 3
    with torch.inference_mode():  # each fixed-noise member alone gives its grid row bit for bit
        for k, member in enumerate(grid.members):
            if not (isinstance(member, DiffSmooth) and member.local_noise == "fresh"):
                assert torch.equal(scores[:, k], member(x).float()), k


def test_a_grid_computes_only_the_configurations_asked(classifier_path, second_classifier, denoiser_path):
    """Sequential certification asks a grid for the configurations still running: those rows are the
    full grid's, bit for bit, the others zeros, and no purification when only RS runs."""
    grid = build_grid(grid_methods(classifier_path, second_classifier, denoiser_path))
    calls = {"denoiser": 0}
    grid.members[1].denoiser.register_forward_hook(lambda *a: calls.__setitem__("denoiser", calls["denoiser"] + 1))
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        full = grid(x)
        with grid.only([0]):  # RS alone
            rs_only = grid(x)
        with grid.only([1, 4]):  # DDS and one DiffSmooth member
            some = grid(x)
    assert calls["denoiser"] == 2  # the full grid and the second subset; RS alone purifies nothing
    assert torch.equal(rs_only[:, 0], full[:, 0]) and not rs_only[:, 1:].any()
    assert torch.equal(some[:, [1, 4]], full[:, [1, 4]]) and not some[:, [0, 2, 3]].any()
    assert grid.active is None  # the block ends, the whole grid again
    with pytest.raises(InputError, match="cannot compute only"):
        with grid.only([]):
            pass
    # through the fast path: an eager base passes ``only`` on; a compiled one computes every configuration
    from diffsmooth.fast import accelerate

    with accelerate(grid).only([0]):
        assert grid.active == (0,)
    with accelerate(grid, compile=True).only([0]):
        assert grid.active is None


def test_grid_cli_writes_an_index_that_analyze_reads(tmp_path, fmnist_dir, classifier_path, denoiser_path, capsys):
    out_dir = tmp_path / "sweep"
    args = ["certify", "--method", "dds", "diffsmooth", "--data-dir", str(fmnist_dir), "--sigma", "0.25",
            "--denoiser", str(denoiser_path), "--classifier", str(classifier_path), "--m", "1", "3",
            "--vote", "soft", "hard", "--n0", "8", "--n", "30", "--batch", "32", "--max", "3", "--device", "cpu",
            "--quiet", "--out-dir", str(out_dir)]
    assert main(args) == 0
    labels = [e["label"] for e in read_index(out_dir)]
    assert len(labels) == 5 and labels[0].startswith("dds_sigma0.25")
    assert main(["analyze", str(out_dir), "--format", "csv"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(",")[0] for line in out[1:]] == labels
    # Resuming the finished grid does nothing; a bigger --max certifies only the new image.
    assert main([*args, "--resume", "--max", "4"]) == 0
    assert all(len(read_rows(e["path"])[1]) == 4 for e in read_index(out_dir))


def grid_args(fmnist_dir, classifier_path, denoiser_path, out_dir, *extra):
    return ["certify", "--method", "rs", "dds", "diffsmooth", "--data-dir", str(fmnist_dir), "--sigma", "0.25",
            "--denoiser", str(denoiser_path), "--classifier", str(classifier_path), "--local-m", "1", "2",
            "--n0", "8", "--num-samples", "40", "--batch", "40", "--max-images", "4", "--device", "cpu", "--quiet",
            "--out-dir", str(out_dir), *extra]


def grid_rows(out_dir):
    return {e["label"]: strip(read_rows(e["path"])[1]) for e in read_index(out_dir)}


@pytest.fixture(scope="module")
def full_grid(tmp_path_factory, fmnist_dir, classifier_path, denoiser_path):
    out_dir = tmp_path_factory.mktemp("grid") / "full"
    assert main(grid_args(fmnist_dir, classifier_path, denoiser_path, out_dir)) == 0
    return grid_rows(out_dir)


def test_killed_grid_resumes_to_the_uninterrupted_files(tmp_path, fmnist_dir, classifier_path, denoiser_path,
                                                       full_grid):
    import subprocess
    import sys
    from pathlib import Path

    out_dir = tmp_path / "g"
    crash = Path(__file__).parent / "crash_after_rows.py"
    # Four configurations write one sink each per image: dying after write 7 leaves image 1 half written.
    died = subprocess.run([sys.executable, str(crash), "7", "--",
                           *grid_args(fmnist_dir, classifier_path, denoiser_path, out_dir)],
                          capture_output=True, text=True, timeout=300)
    assert died.returncode == 1, died.stderr
    counts = sorted(len(rows) for rows in grid_rows(out_dir).values())
    assert counts == [1, 2, 2, 2]
    assert main(grid_args(fmnist_dir, classifier_path, denoiser_path, out_dir, "--resume")) == 0
    assert grid_rows(out_dir) == full_grid


@pytest.mark.slow  # one torchrun launch takes 5-15 s on 2 CPU cores
def test_grid_under_torchrun_equals_one_process(tmp_path, fmnist_dir, classifier_path, denoiser_path, full_grid):
    from test_distributed import torchrun

    out_dir = tmp_path / "g"
    done = torchrun(grid_args(fmnist_dir, classifier_path, denoiser_path, out_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    assert grid_rows(out_dir) == full_grid
    assert sorted(p.name for p in out_dir.iterdir() if ".part" in p.name) == []


@pytest.mark.slow  # one torchrun launch takes 5-15 s on 2 CPU cores
def test_grid_with_split_samples_under_torchrun(tmp_path, fmnist_dir, classifier_path, denoiser_path):
    """Both ranks draw their share of every image's samples for every configuration; rank 0 writes."""
    from test_distributed import torchrun

    out_dir = tmp_path / "g"
    done = torchrun([*grid_args(fmnist_dir, classifier_path, denoiser_path, out_dir), "--split-samples"])
    assert done.returncode == 0, done.stderr[-3000:]
    rows = grid_rows(out_dir)
    assert len(rows) == 4 and all([r[0] for r in v] == [0, 1, 2, 3] for v in rows.values())
    manifest = json.loads((out_dir / f"{read_index(out_dir)[0]['label']}.tsv.json").read_text())
    assert manifest["distributed"] == {"split": "samples", "world_size": 2}


def test_a_densepure_member_runs_its_own_chain_once(classifier_path, denoiser_path):
    """Only members that classify the one-shot purified batch share it; DensePure is called as it is."""
    from diffsmooth.classifiers import load_classifier
    from diffsmooth.defenses import DensePure
    from diffsmooth.diffusion import MultiStepDenoiser, load_diffusion_model

    chain = MultiStepDenoiser(load_diffusion_model(denoiser_path), 0.25, steps=1, method="ddim")
    member = DensePure(chain, load_classifier(classifier_path), runs=1)
    calls = []
    chain.register_forward_hook(lambda *a: calls.append(1))
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        scores = Grid([member])(x)
        assert len(calls) == 1
        assert torch.equal(scores[:, 0], member(x))


# -- grid x sequential ------------------------------------------------------------------------------------


SEQUENTIAL = ["--sampling", "sequential", "--n-max", "300", "--max-radius", "0.3"]


def seq_grid_args(fmnist_dir, classifier_path, denoiser_path, out_dir, *extra):
    """``grid_args`` certifying sequentially (no --num-samples: the looks go up to --n-max)."""
    args = grid_args(fmnist_dir, classifier_path, denoiser_path, out_dir, *SEQUENTIAL, *extra)
    i = args.index("--num-samples")
    return args[:i] + args[i + 2:]


@pytest.fixture(scope="module")
def sequential_grid(tmp_path_factory, fmnist_dir, classifier_path, denoiser_path):
    out_dir = tmp_path_factory.mktemp("seqgrid") / "g"
    assert main(seq_grid_args(fmnist_dir, classifier_path, denoiser_path, out_dir)) == 0
    return out_dir


def test_sequential_grid_rows_equal_each_configurations_own_sequential_run(tmp_path, fmnist_dir, classifier_path,
                                                                          denoiser_path, sequential_grid):
    """Each configuration stops by its own counts, from the image's one noise stream: its rows, the
    samples it used included, are those of its own sequential run with the same seed."""
    index = read_index(sequential_grid)
    assert len(index) == 4 and all(e["spec"]["sampling"] == "sequential" for e in index)
    used = set()
    for entry in index:
        method = entry["spec"]["method"]
        alone = tmp_path / f"{entry['label']}.tsv"
        own = {"rs": [], "dds": ["--denoiser", str(denoiser_path)],
               "diffsmooth": ["--denoiser", str(denoiser_path), "--local-m", str(method["m"])]}[method["method"]]
        args = ["certify", "--method", method["method"], "--data-dir", str(fmnist_dir), "--sigma", "0.25",
                "--classifier", str(classifier_path), *own, "--n0", "8", "--batch", "40", "--max-images", "4",
                "--device", "cpu", "--quiet", "--out", str(alone), *SEQUENTIAL]
        assert main(args) == 0
        rows = read_rows(entry["path"])[1]
        assert [(r.idx, r.predict, r.radius, r.extra) for r in rows] == \
            [(r.idx, r.predict, r.radius, r.extra) for r in read_rows(alone)[1]], entry["label"]
        used |= {dict(r.extra)["samples"] for r in rows}
    assert len(used) > 1  # configurations and images stopped at different looks


def test_sequential_grid_refuses_noise_drawn_per_call(tmp_path, fmnist_dir, classifier_path, denoiser_path, capsys):
    out_dir = tmp_path / "g"
    args = seq_grid_args(fmnist_dir, classifier_path, denoiser_path, out_dir, "--local-noise", "fresh")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "drop --method densepure and --local-noise fresh" in err and len(err.strip().splitlines()) == 1
    assert not out_dir.exists()


@pytest.mark.slow  # one torchrun launch takes 5-15 s on 2 CPU cores
def test_sequential_grid_under_torchrun_equals_one_process(tmp_path, fmnist_dir, classifier_path, denoiser_path,
                                                           sequential_grid):
    from test_distributed import torchrun

    out_dir = tmp_path / "g"
    done = torchrun(seq_grid_args(fmnist_dir, classifier_path, denoiser_path, out_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    assert grid_rows(out_dir) == grid_rows(sequential_grid)


def test_several_classifiers_per_method_and_local_sigma_in_one_grid(tmp_path, fmnist_dir, classifier_path,
                                                                    second_classifier, denoiser_path, capsys):
    """RS with two classifiers, DiffSmooth with two local classifiers at one local sigma: one noise stream,
    one purification per batch, and each configuration's rows those of its own run."""
    common = ["--data-dir", str(fmnist_dir), "--sigma", "0.25", "--n0", "8", "--num-samples", "40", "--batch", "40",
              "--max-images", "2", "--device", "cpu", "--quiet"]
    a, b, ddpm = str(classifier_path), str(second_classifier), ["--denoiser", str(denoiser_path)]
    out_dir = tmp_path / "g"
    assert main(["certify", "--method", "rs", "diffsmooth", "--rs-classifier", a, b, "--local-classifier",
                 f"0.12={a}", f"0.12={b}", "--local-m", "2", *ddpm, *common, "--out-dir", str(out_dir)]) == 0
    index = read_index(out_dir)
    labels = [e["label"] for e in index]
    assert labels == ["rs_sigma0.25_tiny_cnn", "rs_sigma0.25_other_cnn", "diffsmooth_sigma0.25_m2_ls0.12_soft_tiny_cnn",
                      "diffsmooth_sigma0.25_m2_ls0.12_soft_other_cnn"]
    local = ["--method", "diffsmooth", *ddpm, "--local-sigma", "0.12", "--local-m", "2", "--classifier"]
    alone_args = {labels[0]: ["--method", "rs", "--classifier", a], labels[1]: ["--method", "rs", "--classifier", b],
                  labels[2]: [*local, a], labels[3]: [*local, b]}
    for entry in index:
        alone = tmp_path / f"{entry['label']}.tsv"
        assert main(["certify", *alone_args[entry["label"]], *common, "--out", str(alone)]) == 0
        assert strip(read_rows(entry["path"])[1]) == strip(read_rows(alone)[1]), entry["label"]
    assert main(["certify", "--method", "diffsmooth", "--local-classifier", f"0.12={a}", b, *ddpm, *common,
                 "--out-dir", str(tmp_path / "h")]) == 2
    assert "not a mix" in capsys.readouterr().err


def test_configuration_labels_tell_classifiers_apart():
    """Shipped names keep their dots (0.25 vs 0.50), generic file names get their folder's name."""
    def label(classifier):
        return configuration_label({"method": "rs", "sigma": 0.5, "classifier": classifier})

    names = ["fmnist_cnn_gaussian_0.25", "fmnist_cnn_gaussian_0.50", "models/noise_0.25/checkpoint.pth.tar",
             "models/noise_0.50/checkpoint.pth.tar", "runs/a/model", "runs/b/model", "x/tiny_cnn.safetensors"]
    labels = [label(n) for n in names]
    assert labels[0] == "rs_sigma0.5_fmnist_cnn_gaussian_0.25" and labels[2] == "rs_sigma0.5_noise_0.25-checkpoint"
    assert labels[6] == "rs_sigma0.5_tiny_cnn" and len(set(labels)) == len(labels)
