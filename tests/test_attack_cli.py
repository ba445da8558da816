"""``diffsmooth attack``: resumable attack folders, the audit of a certify run, analyze beside
certified accuracy, and bad input."""

from __future__ import annotations

import pytest

from diffsmooth.cli import main
from diffsmooth.results import read_index, read_rows


def attack_args(fmnist_dir, classifier_path, out_dir, *extra):
    return ["attack", "--method", "rs", "--data-dir", str(fmnist_dir), "--sigma", "0.25",
            "--classifier", str(classifier_path), "--eps", "0.25", "0.5", "--steps", "3", "--eot", "2",
            "--n", "40", "--batch", "80", "--max", "3", "--device", "cpu", "--quiet", "--out-dir", str(out_dir), *extra]


def strip(rows):
    return [(r.idx, r.label, r.predict, r.correct, r.extra) for r in rows]


def test_attack_writes_one_predict_file_per_eps_and_resumes(tmp_path, fmnist_dir, classifier_path, capsys):
    full = tmp_path / "full"
    assert main(attack_args(fmnist_dir, classifier_path, full)) == 0
    index = read_index(full)
    assert [e["label"] for e in index] == ["eps0.25", "eps0.5"]
    for entry in index:
        mode, rows = read_rows(entry["path"])
        assert mode == "predict" and [r.idx for r in rows] == [0, 1, 2]
        assert all(float(dict(r.extra)["norm"]) <= entry["spec"]["file_eps"] + 1e-6 for r in rows)
    part = tmp_path / "part"
    assert main(attack_args(fmnist_dir, classifier_path, part, "--max", "1")) == 0
    assert main(attack_args(fmnist_dir, classifier_path, part)) == 2  # exists: --resume or --overwrite
    assert main(attack_args(fmnist_dir, classifier_path, part, "--resume")) == 0
    for a, b in zip(read_index(full), read_index(part)):
        assert strip(read_rows(a["path"])[1]) == strip(read_rows(b["path"])[1])
    capsys.readouterr()
    png = tmp_path / "robust.png"
    assert main(["analyze", str(full), "--format", "csv", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "empirical: full" in out and "r=0.25,r=0.5" in out
    assert png.read_bytes()[:4] == b"\x89PNG"
    # certified accuracy beside the attack is read on the attacked images (idx 0-2) only: a certify
    # file over five images, the last two abstained, reads 100% there (60% over all five)
    certified = tmp_path / "cert.tsv"
    certified.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
                         + "".join(f"{i}\t{i}\t{i}\t1.0\t1\t0:00:01\n" for i in range(3))
                         + "".join(f"{i}\t{i}\t-1\t0.0\t0\t0:00:01\n" for i in (3, 4)))
    assert main(["analyze", str(full), str(certified), "--format", "csv", "--errors"]) == 0
    robust = capsys.readouterr().out.split("\n\n")[-1]
    assert "certified: cert,3,100.0 ± 0.0,100.0 ± 0.0" in robust
    assert main(["analyze", str(full), str(certified), "--plot", str(png), "--overwrite"]) == 0
    other = tmp_path / "other.tsv"  # none of the attacked images: one line, exit 2
    other.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n7\t7\t7\t1.0\t1\t0:00:01\n")
    capsys.readouterr()
    assert main(["analyze", str(full), str(other)]) == 2
    err = capsys.readouterr().err
    assert "holds none of the attacked images" in err and len(err.strip().splitlines()) == 1


def test_audit_of_a_correct_run_finds_nothing(tmp_path, capsys):
    """The shipped RS model on real Fashion-MNIST test images (`make data` fetched them)."""
    certified = tmp_path / "c.tsv"
    assert main(["certify", "--method", "rs", "--sigma", "0.25", "--n0", "10", "--n", "200", "--batch", "200",
                 "--max", "6", "--device", "cpu", "--quiet", "--out", str(certified)]) == 0
    report = tmp_path / "audit.tsv"
    capsys.readouterr()
    assert main(["attack", "--audit", str(certified), "--steps", "3", "--eot", "2",
                 "--n", "200", "--batch", "200", "--device", "cpu", "--out", str(report)]) == 0
    printed = capsys.readouterr().out
    assert " 0 flipped" in printed and " 0 below Cohen's bound" in printed
    audited = [r for r in read_rows(certified)[1] if r.correct and r.radius > 0]
    assert len(audited) >= 3 and len(report.read_text().splitlines()) == 1 + len(audited)
    # --max K audits the certified-correct rows among the file's first K images (in file order)
    first = tmp_path / "first.tsv"
    assert main(["attack", "--audit", str(certified), "--max", "3", "--steps", "1", "--eot", "1",
                 "--n", "20", "--batch", "20", "--device", "cpu", "--out", str(first)]) == 0
    wanted = [r.idx for r in read_rows(certified)[1][:3] if r.correct and r.radius > 0]
    assert [int(line.split("\t")[0]) for line in first.read_text().splitlines()[1:]] == wanted


@pytest.mark.parametrize("extra,message", [
    (["--eps", "0"], "eps"),
    (["--eps", "0.5", "0.5"], "repeat"),
    (["--steps", "0"], "steps must be a whole number >= 1"),
])
def test_bad_attack_input_gets_one_line(tmp_path, fmnist_dir, classifier_path, capsys, extra, message):
    args = attack_args(fmnist_dir, classifier_path, tmp_path / "a")
    i = args.index(extra[0])
    j = i + 1
    while j < len(args) and not args[j].startswith("--"):
        j += 1
    args[i:j] = extra
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "a").exists()


def test_audit_refuses_a_file_that_is_not_a_certify_result(tmp_path, capsys):
    predict = tmp_path / "p.tsv"
    predict.write_text("idx\tlabel\tpredict\tcorrect\ttime\n0\t1\t1\t1\t0:00:01.0\n")
    assert main(["attack", "--audit", str(predict)]) == 2
    assert "needs a certify results file" in capsys.readouterr().err
