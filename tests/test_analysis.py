"""analyze: numbers against a hand computation on a fixed TSV; tables; the plot is a PNG."""

import pytest

from diffsmooth.analysis import plot, summarize, table
from diffsmooth.errors import InputError

TSV = """idx\tlabel\tpredict\tradius\tcorrect\ttime
0\t3\t3\t0.8\t1\t0:00:01.500000
10\t1\t1\t0.3\t1\t0:00:01.500000
20\t2\t-1\t0.0\t0\t0:00:01.000000
30\t4\t5\t0.6\t0\t0:00:02.000000
40\t7\t7\t0.0\t1\t0:00:01.000000
"""


@pytest.fixture
def results(tmp_path):
    path = tmp_path / "run.tsv"
    path.write_text(TSV)
    return path


def test_summary_against_hand_computation(results):
    s = summarize(results, [0.0, 0.25, 0.5, 1.0])
    # correct: rows 0, 10, 40 (radii 0.8, 0.3, 0.0) of 5.
    assert s.certified == {0.0: 3 / 5, 0.25: 2 / 5, 0.5: 1 / 5, 1.0: 0.0}
    assert s.acr == pytest.approx((0.8 + 0.3) / 5)
    assert s.abstention_rate == 1 / 5 and s.clean_accuracy == 3 / 5
    assert s.seconds_per_image == pytest.approx(7.0 / 5)


def test_tables(results):
    s = [summarize(results, [0.0, 0.5], "DiffSmooth_x")]
    md = table(s, [0.0, 0.5])
    assert md.splitlines()[0].split("|")[1:-1] == [" run          ", " images ", " r=0  ", " r=0.5 ", " ACR   ", " abstain ", " clean acc ", " s/img "]
    assert "| DiffSmooth_x | 5      | 60.0 | 20.0  | 0.220 | 20.0    | 60.0      | 1.40  |" in md
    assert table(s, [0.0, 0.5], "csv").splitlines()[1] == "DiffSmooth_x,5,60.0,20.0,0.220,20.0,60.0,1.40"
    assert r"DiffSmooth\_x & 5 & 60.0 & 20.0" in table(s, [0.0, 0.5], "latex")


def test_plot_is_a_png(results, tmp_path):
    out = tmp_path / "curve.png"
    plot([results, results], ["a", "b"], out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def test_not_a_results_file(tmp_path):
    bad = tmp_path / "x.tsv"
    bad.write_text("a\tb\n1\t2\n")
    with pytest.raises(InputError, match="does not start with a results header"):
        summarize(bad, [0.0])
    with pytest.raises(InputError, match="does not exist"):
        summarize(tmp_path / "missing.tsv", [0.0])
