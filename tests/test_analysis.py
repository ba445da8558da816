"""analyze: numbers against a hand computation on a fixed TSV; tables; the plot is a PNG."""

import math

import pytest

from diffsmooth.analysis import plot, summarize, table
from diffsmooth.validate import InputError

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


OTHER = """idx\tlabel\tpredict\tradius\tcorrect\ttime
40\t7\t7\t0.9\t1\t0:00:01.000000
0\t3\t3\t0.2\t1\t0:00:01.500000
10\t1\t0\t0.5\t0\t0:00:01.500000
20\t2\t2\t0.7\t1\t0:00:01.000000
30\t4\t4\t0.6\t1\t0:00:02.000000
"""


def test_table_with_standard_errors(results):
    s = [summarize(results, [0.0, 0.5], "x")]
    # 3/5 at r=0: sqrt(0.6 * 0.4 / 5) = 0.219; 1/5 at r=0.5: sqrt(0.2 * 0.8 / 5) = 0.179
    assert "| x   | 5      | 60.0 ± 21.9 | 20.0 ± 17.9 |" in table(s, [0.0, 0.5], errors=True)
    assert r"60.0 $\pm$ 21.9" in table(s, [0.0, 0.5], "latex", errors=True)


def test_paired_comparison_matches_images_by_idx(results, tmp_path):
    from diffsmooth.analysis import paired_comparison, paired_table

    other = tmp_path / "other.tsv"
    other.write_text(OTHER)  # rows in another order: pairing goes by idx
    c = paired_comparison(other, results, [0.0, 0.5], "B", "A")
    # at r=0.5, per idx 0..40: other passes 30, 20, 40; run passes 0 -> d = -1, 0, 1, 1, 1: mean 0.4
    assert c.images == 5 and c.difference[0.5] == pytest.approx(0.4)
    assert c.standard_error[0.5] == pytest.approx(math.sqrt(((1.4 ** 2) + 0.16 + 3 * 0.36) / 4 / 5))
    # at r=0: other passes 0, 20, 30, 40; run 0, 10, 40 -> d = 0, -1, 1, 1, 0: mean 0.2
    assert c.difference[0.0] == pytest.approx(0.2)
    assert not c.significant(0.5) and paired_comparison(results, results, [0.5]).difference[0.5] == 0.0
    text = paired_table([c], [0.0, 0.5])
    assert "| B - A          | 5      | +20.0 ± 37.4 | +40.0 ± 40.0 |" in text


def test_paired_comparison_refuses_different_images(results, tmp_path):
    from diffsmooth.analysis import paired_comparison

    other = tmp_path / "other.tsv"
    other.write_text(OTHER.replace("40\t7", "50\t7"))
    with pytest.raises(InputError, match="hold different images .*idx 40"):
        paired_comparison(results, other, [0.0])
