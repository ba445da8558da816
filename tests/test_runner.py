"""The runner: per-index seeding, resumable TSV + manifest, no output on bad input."""

import json

import pytest
import torch

from diffsmooth.methods import MethodSpec
from diffsmooth.results import read_rows
from diffsmooth.runner import Job, RunSpec, run, select_indices
from diffsmooth.sampling import generator_for
from diffsmooth.validate import InputError


def images(idx):
    g = torch.Generator().manual_seed(idx)
    return torch.rand(1, 2, 2, generator=g), idx % 2


class Threshold(torch.nn.Module):
    """Two classes by the mean pixel; deterministic, so the rows are reproducible exactly."""

    def forward(self, x):
        return (x.mean(dim=(1, 2, 3)) > 0.5).long()

    def describe(self):
        return {"method": "threshold"}


SPEC = RunSpec("certify", MethodSpec("rs", "toy", 0.25), n0=20, n=200, alpha=0.01, batch_size=64, seed=3)


def certify(out, indices=range(6), **kw):
    return run(Job(SPEC, images, list(indices), out, num_classes=2, base=Threshold(), progress=False, **kw))


def strip_time(rows):
    return [(r.idx, r.label, r.predict, r.radius, r.correct) for r in rows]


def test_rows_manifest_and_per_index_seeding(tmp_path):
    out = tmp_path / "r.tsv"
    certify(out)
    mode, rows = read_rows(out)
    assert mode == "certify" and [r.idx for r in rows] == list(range(6))
    assert out.read_text().splitlines()[0] == "idx\tlabel\tpredict\tradius\tcorrect\ttime"
    manifest = json.loads((tmp_path / "r.tsv.json").read_text())
    assert manifest["status"] == "finished" and manifest["spec"]["n"] == 200
    assert manifest["base"] == {"method": "threshold"} and manifest["throughput"]["images"] == 6
    # The same images in another order and grouping give the same rows: seeding is per (seed, idx).
    other = tmp_path / "o.tsv"
    run(Job(SPEC, images, [5, 3, 1, 0, 2, 4], other, num_classes=2, base=Threshold(), progress=False))
    assert sorted(strip_time(read_rows(other)[1])) == strip_time(rows)


def test_resume_after_a_crash_gives_the_uninterrupted_rows(tmp_path):
    full = tmp_path / "full.tsv"
    certify(full)
    part = tmp_path / "part.tsv"
    certify(part, indices=range(3))
    with part.open("a") as f:
        f.write("3\t1\t1\t0.1")  # a torn line, as a kill mid-write leaves it
    report = certify(part, resume=True)
    assert report.skipped == 3 and len(report.rows) == 3
    assert strip_time(read_rows(part)[1]) == strip_time(read_rows(full)[1])


def test_existing_file_needs_resume_or_overwrite_and_resume_refuses_other_settings(tmp_path):
    out = tmp_path / "r.tsv"
    certify(out, indices=range(2))
    before = out.read_text()
    with pytest.raises(InputError, match="exists; pass --resume"):
        certify(out)
    other = RunSpec("certify", MethodSpec("rs", "toy", 0.5), n0=20, n=300, alpha=0.01, batch_size=64, seed=3)
    with pytest.raises(InputError, match=r"different settings \(method.sigma, n\)"):
        run(Job(other, images, [0, 1, 2], out, num_classes=2, base=Threshold(), progress=False, resume=True))
    assert out.read_text() == before
    certify(out, indices=range(1), overwrite=True)
    assert len(read_rows(out)[1]) == 1


def test_bad_input_leaves_no_file(tmp_path):
    out = tmp_path / "r.tsv"
    bad = RunSpec("certify", MethodSpec("rs", "toy", 0.25), n0=20, n=0, alpha=0.01, batch_size=64)
    with pytest.raises(InputError, match="^--n must"):
        run(Job(bad, images, [0], out, num_classes=2, base=Threshold(), progress=False))
    with pytest.raises(InputError, match="gives .* scores per image but the dataset has 3 classes"):
        run(Job(SPEC, images, [0], out, num_classes=3, base=lambda x: torch.zeros(x.shape[0], 5), progress=False))
    assert list(tmp_path.iterdir()) == []


def test_predict_rows(tmp_path):
    out = tmp_path / "p.tsv"
    spec = RunSpec("predict", MethodSpec("rs", "toy", 0.25), n=100, alpha=0.01, batch_size=64)
    run(Job(spec, images, [0, 1], out, num_classes=2, base=Threshold(), progress=False))
    assert out.read_text().splitlines()[0] == "idx\tlabel\tpredict\tcorrect\ttime"
    assert read_rows(out)[0] == "predict"


def test_generators_differ_by_index_and_seed():
    draw = lambda s, i: torch.randn(4, generator=generator_for(s, i, "cpu"))  # noqa: E731
    assert torch.equal(draw(0, 1), draw(0, 1))
    assert not torch.equal(draw(0, 1), draw(0, 2))
    assert not torch.equal(draw(0, 1), draw(1, 1))


def test_select_indices():
    assert select_indices(10, skip=3) == [0, 3, 6, 9]
    assert select_indices(10, skip=2, max_count=2) == [0, 2]
    assert select_indices(10, indices=[4, 4, 1]) == [4, 1]
    with pytest.raises(InputError, match="outside the dataset"):
        select_indices(10, indices=[10])


def test_resume_accepts_a_manifest_from_before_a_setting_existed(tmp_path):
    out = tmp_path / "r.tsv"
    certify(out, indices=range(2))
    manifest = tmp_path / "r.tsv.json"
    doc = json.loads(manifest.read_text())
    del doc["spec"]["method"]["channels_last"], doc["spec"]["method"]["compile"]
    manifest.write_text(json.dumps(doc))
    assert len(certify(out, indices=range(3), resume=True).rows) == 1
    doc["spec"]["method"]["precision"] = "bfloat16"
    manifest.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"different settings \(method.precision\)"):
        certify(out, indices=range(4), resume=True)


def test_resume_reads_a_saved_file_with_bom_and_crlf_and_refuses_other_columns(tmp_path):
    full = tmp_path / "full.tsv"
    certify(full)
    out = tmp_path / "r.tsv"
    certify(out, indices=range(3))
    text = out.read_text()
    out.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())  # saved by a Windows editor
    report = certify(out, resume=True)
    assert report.skipped == 3 and strip_time(read_rows(out)[1]) == strip_time(read_rows(full)[1])
    # the same rows with the columns in another order: appending ours would misalign them
    lines = [line.split("\t") for line in text.splitlines()]
    out.write_text("".join("\t".join([f[4], *f[:4], f[5]]) + "\n" for f in lines))
    before = out.read_bytes()
    with pytest.raises(InputError, match=r"cannot resume .*r\.tsv: its columns \(correct idx label predict radius "
                                         r"time\) are not the ones this run appends \(idx label predict radius "
                                         r"correct time\); use a new --out, or --overwrite"):
        certify(out, resume=True)
    assert out.read_bytes() == before
