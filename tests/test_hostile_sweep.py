"""Every numeric option of every command, given a value no option accepts (issue #40: "the same classes
looked for across every command"): NaN for a float, -1 for a count or seed.  Each must give one line
and exit 2 before any file is written; the options come from the parsers themselves, so an option
added later is swept too."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from diffsmooth.cli import build_parser, main

# A valid, small run of each command ({d}: an empty folder; {data}: the Fashion-MNIST folder).
BASE = {
    "certify": "certify --method rs --sigma 0.25 --n0 10 --n 50 --max 1 --quiet --out {d}/x.tsv",
    "predict": "predict --method rs --sigma 0.25 --n 50 --max 1 --quiet --out {d}/x.tsv",
    "attack": "attack --method rs --sigma 0.25 --eps 0.25 --steps 1 --eot 1 --n 20 --max 1 --quiet --out-dir {d}/a",
    "purify": "purify --sigma 0.25 --indices 0 --out {d}/g.png",
    "demo": "demo --max 1 --quiet --out-dir {d}/demo",
    "analyze": "analyze {results}",
    "train-classifier": "train-classifier --sigma 0.25 --epochs 1 --train-limit 32 --eval-limit 32 --batch-size 32 "
                        "--quiet --out {d}/c",
    "train-denoiser": "train-denoiser --sigma 0.25 --epochs 1 --train-limit 16 --eval-limit 16 --batch-size 8 "
                      "--quiet --out {d}/dn",
    "train-diffusion": "train-diffusion --steps 2 --batch-size 4 --num-channels 8 --norm-groups 8 --quiet --out {d}/dd",
}
BAD = {float: "nan", int: "-1"}


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def _cases() -> list[tuple[str, str, str]]:
    cases = []
    for command, parser in _commands().items():
        for action in parser._actions:
            if action.option_strings and action.type in BAD:
                cases.append((command, action.option_strings[0], BAD[action.type]))
    return cases


def test_every_command_with_numeric_options_has_a_base_run():
    swept = {command for command, _, _ in _cases()}
    assert swept == set(BASE), "give the new command a small valid run in BASE"


@pytest.fixture(scope="module")
def results(tmp_path_factory, fmnist_dir) -> Path:
    out = tmp_path_factory.mktemp("results") / "r.tsv"
    assert main(BASE["certify"].format(d=out.parent).replace("x.tsv", "r.tsv").split()
                + ["--data-dir", str(fmnist_dir)]) == 0
    return out


@pytest.mark.parametrize("command, option, value", _cases())
def test_a_value_no_option_accepts_is_one_line_and_exit_2(command, option, value, tmp_path, fmnist_dir, results,
                                                          capsys):
    argv = BASE[command].format(d=tmp_path, results=results).split()
    if option in argv:
        argv[argv.index(option) + 1] = value
    else:
        argv += [option, value]
    if any("--data-dir" in a.option_strings for a in _commands()[command]._actions):
        argv += ["--data-dir", str(fmnist_dir)]
    capsys.readouterr()
    assert main(argv) == 2, f"{command} {option} {value} was accepted"
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"diffsmooth {command}: error: "), err
    assert list(tmp_path.iterdir()) == []
