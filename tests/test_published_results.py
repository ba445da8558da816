"""Results files of the Cohen family read as published: the reference repository's own files give
its published tables; every time form, column order, extra column, BOM and CRLF; bad lines named."""

from __future__ import annotations

import datetime
import re
import subprocess
import sys
from pathlib import Path

import pytest

from diffsmooth.analysis import certified_accuracy, summarize, table
from diffsmooth.results import Row, format_time, parse_time, read_results, write_results
from diffsmooth.validate import InputError

COHEN = Path(__file__).parent / "fixtures" / "published" / "locuslab_smoothing"
TABLES = {  # table file -> the results file of each of its sigma rows
    "cifar10": ("resnet110", ("0.12", "0.25", "0.50", "1.00")),
    "imagenet": ("resnet50", ("0.25", "0.50", "1.00")),
}


def published_table(dataset: str) -> tuple[list[float], dict[str, list[float]]]:
    """Radii and sigma -> values of analysis/markdown/vary_noise_<dataset>."""
    lines = (COHEN / "analysis" / "markdown" / f"vary_noise_{dataset}").read_text().splitlines()
    radii = [float(r) for r in re.findall(r"r = ([0-9.]+)", lines[0])]
    rows = {}
    for line in lines[2:]:
        sigma = re.search(r"&sigma; = ([0-9.]+)", line).group(1)
        rows[sigma] = [float(v) for v in re.findall(r"\|\s*([0-9.]+)", line)]
    return radii, rows


@pytest.mark.parametrize("dataset", sorted(TABLES))
def test_the_reference_files_give_the_tables_published_beside_them(dataset):
    arch, sigmas = TABLES[dataset]
    radii, published = published_table(dataset)
    assert sorted(published) == list(sigmas) and len(radii) == 6
    for sigma in sigmas:
        path = COHEN / "data" / "certify" / dataset / arch / f"noise_{sigma}" / "test" / f"sigma_{sigma}"
        rows = read_results(path).rows
        ours = [round(certified_accuracy(rows, r), 2) for r in radii]
        assert ours == pytest.approx(published[sigma], abs=1e-9), (dataset, sigma)


def test_plain_seconds_and_clock_times_in_one_published_file_set():
    plain = read_results(COHEN / "data/certify/cifar10/resnet110/noise_0.25/test/sigma_0.25")
    clock = read_results(COHEN / "data/certify/imagenet/resnet50/noise_0.25/test/sigma_0.25")
    assert plain.rows[0] == Row(0, 3, 3, 1, 15.4, 0.378)
    assert len(plain.rows) == 500 and len(clock.rows) == 427
    assert clock.rows[0].seconds == pytest.approx(151.238689)
    predict = read_results(COHEN / "data/predict/imagenet/resnet50/noise_0.25/test/N_100")
    assert predict.mode == "predict" and predict.rows[0] == Row(0, 0, 0, 1, pytest.approx(1.737771))


def test_analyze_reads_a_published_file_from_the_command_line():
    path = COHEN / "data/certify/cifar10/resnet110/noise_0.50/test/sigma_0.50"
    done = subprocess.run([sys.executable, "-m", "diffsmooth", "analyze", str(path), "--radii", "0.5", "1.0"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # published: 0.41 and 0.23 at r = 0.5 / 1.0 on these 500 images; the name keeps its ".50"
    row = next(line for line in done.stdout.splitlines() if line.startswith("| sigma_0.50 "))
    assert [cell.strip() for cell in row.split("|")[2:5]] == ["500", "41.4", "23.4"]


@pytest.mark.parametrize("text, seconds", [
    ("15.4", 15.4), ("0", 0.0), ("0:00:15.400000", 15.4), ("1:02:03", 3723.0), ("12:00:00.5", 43200.5),
    ("1 day, 0:00:01.000000", 86401.0), ("3 days, 2:00:00", 3 * 86400 + 7200.0), (" 7.25 ", 7.25),
])
def test_every_time_form_the_tools_write_reads(text, seconds):
    assert parse_time(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text, why", [
    ("-3", "not a finite number of seconds >= 0"), ("nan", "not a finite number"), ("inf", "not a finite"),
    ("1:2", "neither seconds nor h:mm:ss"), ("0:61:00", "neither seconds"), ("soon", "neither seconds"),
])
def test_a_bad_time_is_named(text, why):
    with pytest.raises(ValueError, match=why):
        parse_time(text)


@pytest.mark.parametrize("seconds", [0.0, 0.5, 59.999999, 3599.25, 86399.0, 86400.0, 86401.0, 2 * 86400 + 1.5,
                                     40 * 86400 + 12345.678901])
def test_every_time_our_writer_prints_reads_back(seconds, tmp_path):
    assert parse_time(format_time(seconds)) == pytest.approx(seconds, abs=1e-6)
    path = tmp_path / "r.tsv"
    write_results(path, "certify", [Row(0, 1, 1, 1, seconds, 0.5)])
    assert read_results(path).rows[0].seconds == pytest.approx(seconds, abs=1e-6)
    assert format_time(86401.0) == "1 day, 0:00:01.000000"


def test_columns_by_name_extra_columns_kept_bom_and_crlf(tmp_path):
    path = tmp_path / "r.tsv"
    text = ("idx\tlabel\tpredict\tradius\tcorrect\ttime\tpA\n0\t3\t3\t0.5\t1\t2.0\t0.93\n"
            "1\t2\t-1\t0.0\t0\t0:00:01.5\t0.41\n")
    path.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    got = read_results(path)
    assert got.mode == "certify" and got.columns == ("pA",)
    assert got.rows == [Row(0, 3, 3, 1, 2.0, 0.5, (("pA", "0.93"),)), Row(1, 2, -1, 0, 1.5, 0.0, (("pA", "0.41"),))]
    # another order, no time column: seconds unknown, shown as "-" in the table
    path.write_text("correct\tradius\tidx\tpredict\tlabel\n1\t0.5\t0\t3\t3\n0\t0\t1\t-1\t2\n")
    got = read_results(path)
    assert got.rows == [Row(0, 3, 3, 1, None, 0.5), Row(1, 2, -1, 0, None, 0.0)]
    summary = summarize(path, [0.0, 0.5])
    assert summary.certified == {0.0: 0.5, 0.5: 0.5} and summary.seconds_per_image is None
    assert table([summary], [0.0, 0.5]).splitlines()[2].rstrip().endswith("| -     |")


@pytest.mark.parametrize("header, why", [
    ("idx\tlabel\tpredict\tcorrect\ttime\tradius\tradius", "the column radius twice"),
    ("idx\tlabel\tradius\tcorrect", "no predict column"),
    ("a\tb", "no idx label predict correct columns"),
    ("idx\tlabel\t\tpredict\tcorrect", "an empty column name"),
])
def test_a_header_that_is_not_a_results_header_says_why(header, why, tmp_path):
    path = tmp_path / "r.tsv"
    path.write_text(header + "\n")
    with pytest.raises(InputError, match=f"does not start with a results header \\({why}; needs the columns"):
        read_results(path)


def test_each_bad_line_is_still_named(tmp_path):
    path = tmp_path / "r.tsv"
    path.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t3\t3\t0.5\t1\t1.0\n1\t2\t2\t0.5\t1\t-4\n")
    with pytest.raises(InputError, match=r"line 3 is not a valid certify row \(time '-4' is not a finite number "
                                         r"of seconds >= 0\)"):
        read_results(path)
    path.write_text("idx\tlabel\tpredict\tradius\tcorrect\n0\t3\t3\t0.5\t1\t1.0\n")
    with pytest.raises(InputError, match=r"line 2 is not a valid certify row \(6 columns instead of 5\)"):
        read_results(path)


def test_a_timedelta_of_days_is_what_format_time_prints():
    assert format_time(2 * 86400 + 3.25) == str(datetime.timedelta(days=2, seconds=3.25)) == "2 days, 0:00:03.250000"


# ---- a run beside the paper ----------------------------------------------------------------------

from diffsmooth.published import beside, get_published, list_published  # noqa: E402


@pytest.mark.parametrize("name", list_published())
def test_every_bundled_entry_is_met_by_the_reference_run_it_came_from(name):
    entry = get_published(name)
    assert entry.paper["title"] and entry.setting and len(entry.commit) == 40 and entry.recipe
    arch = TABLES[entry.dataset][0]
    sigma = f"{entry.sigma:.2f}"
    path = COHEN / "data" / "certify" / entry.dataset / arch / f"noise_{sigma}" / "test" / f"sigma_{sigma}"
    rows = read_results(path).rows
    assert len(rows) == entry.images
    result = beside(entry, {r: certified_accuracy(rows, r) for r in entry.certified}, len(rows))
    for radius, ours, se, theirs, diff in result.rows:
        assert abs(diff) <= 0.005 + 1e-12, (name, radius)  # the published value is ours rounded to 2 decimals
        assert se == pytest.approx((ours * (1 - ours) / len(rows)) ** 0.5, abs=1e-12)


def published_cli(*args):
    return subprocess.run([sys.executable, "-m", "diffsmooth", "analyze", *map(str, args)], capture_output=True,
                          text=True)


def test_analyze_published_prints_the_run_beside_the_row():
    path = COHEN / "data/certify/imagenet/resnet50/noise_1.00/test/sigma_1.00"
    done = published_cli(path, "--published", "cohen-imagenet-1.00")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    at = lines.index("| radius | run | published | run - published |")
    # published 0.38 0.33 0.26 0.19 0.15 0.12 at r = 0.5 ... 3.0
    assert [line.split("|")[3].strip() for line in lines[at + 2:at + 8]] == ["38", "33", "26", "19", "15", "12"]
    assert any(line.startswith("published: analysis/markdown/vary_noise_imagenet") for line in lines)
    done = published_cli(path, "--published", "cohen-imagenet-1.00", "--radii", "1.0")
    assert done.returncode == 0 and "| 1 | " in done.stdout and "| 0.5 | " not in done.stdout.split("beside")[1]


def test_a_recipe_name_finds_the_row_of_the_runs_sigma(tmp_path):
    run = tmp_path / "r.tsv"
    run.write_bytes((COHEN / "data/certify/cifar10/resnet110/noise_0.25/test/sigma_0.25").read_bytes())
    done = published_cli(run, "--published", "cohen-cifar10")
    assert done.returncode == 2 and "recipe cohen-cifar10 has published rows at sigma 0.12, 0.25, 0.5, 1" in done.stderr
    # a run of ours records its sigma in its manifest: the recipe's row at that sigma is taken
    from diffsmooth.results import write_manifest

    write_manifest(tmp_path / "r.tsv.json", {"spec": {"mode": "certify", "method": {"sigma": 0.25, "dataset": "cifar10"}}})
    done = published_cli(run, "--published", "cohen-cifar10")
    assert done.returncode == 0, done.stderr
    assert "beside cohen-cifar10-0.25" in done.stdout
    done = published_cli(run, "--published", "cohen-cifar10-0.50")
    assert done.returncode == 2 and "certified at sigma 0.25, cohen-cifar10-0.50 at sigma 0.5" in done.stderr


@pytest.mark.parametrize("args, message", [
    (["--published", "nobody-2020"], "unknown published entry (or recipe) 'nobody-2020'; choose one of: cohen-cifar10"),
    (["--published", "cohen-cifar10-0.50", "--radii", "0.3"], "publishes no value at radius 0.3"),
])
def test_a_bad_published_request_is_one_line(args, message):
    done = published_cli(COHEN / "data/certify/cifar10/resnet110/noise_0.50/test/sigma_0.50", *args)
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert done.stdout == ""
