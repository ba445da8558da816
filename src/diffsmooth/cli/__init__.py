"""The ``diffsmooth`` command line.

Each subcommand lives in its own module with ``register(subparsers)``; the
modules parse arguments and call the library, nothing more.  Bad input (an
``InputError`` from anywhere below) becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from diffsmooth.errors import InputError

# Subcommand modules, in the order --help lists them.
_COMMANDS = ("demo", "certify", "analyze", "purify", "train")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffsmooth",
        formatter_class=_Formatter,
        description="Certified l2 robustness by randomized smoothing: Gaussian RS, diffusion denoised "
        "smoothing (DDS) and DiffSmooth (diffusion purification + local smoothing).",
        epilog="Run `diffsmooth COMMAND --help` for each command's options.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMANDS:
        try:
            module = importlib.import_module(f"diffsmooth.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"diffsmooth.cli.{name}":
                raise
            continue
        module.register(sub, _Formatter)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as err:
        print(f"diffsmooth {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"diffsmooth {args.command}: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
