"""The ``diffsmooth`` command line.

Each subcommand lives in its own module with ``register(subparsers)``; the
modules parse arguments and call the library, nothing more.  Bad input (an
``InputError`` from anywhere below) becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from diffsmooth.validate import InputError

# Subcommand modules, in the order --help lists them.
_COMMANDS = ("demo", "certify", "attack", "analyze", "purify", "train", "recipes")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str:
        # a help text that says its default itself keeps its words, without argparse's second one
        text = action.help or ""
        return text if "(default" in text else super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the problem and where to look, no usage block."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line, with the set of options the user typed (``cli.options.typed_options``)."""
    from diffsmooth.cli.options import typed_dests

    parser = build_parser()
    args = parser.parse_args(argv)
    args._typed = typed_dests(parser, argv)
    return args


class _Terminated(BaseException):
    """SIGTERM (a scheduler's stop, torchrun stopping its group) as an exception, so that
    files are closed, locks released and temp files removed on the way out."""


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise _Terminated


def main(argv: list[str] | None = None) -> int:
    from diffsmooth.runtime import configure_cpu

    configure_cpu()  # before anything imports torch: OpenMP reads its settings when it loads
    try:
        args = parse_args(argv)
    except KeyboardInterrupt:
        print("diffsmooth: interrupted", file=sys.stderr)
        return 130
    import signal
    import threading

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _dispatch(args)
    except _Terminated:
        print(f"diffsmooth {args.command}: terminated; rerun with --resume to continue", file=sys.stderr)
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _dispatch(args: argparse.Namespace) -> int:
    from diffsmooth.cli.applies import check_applies

    try:
        if not getattr(args, "applies_after_recipe", False):
            check_applies(args)
        return int(args.func(args) or 0)
    except InputError as err:
        print(f"diffsmooth {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"diffsmooth {args.command}: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
    except OSError as err:
        # A full disk, a read-only folder, a vanished file: the system's words and the path.
        where = f" ({err.filename})" if err.filename else ""
        print(f"diffsmooth {args.command}: error: {err.strerror or err}{where}; free space or fix the path/"
              "permissions, then rerun (with --resume where results were being written)", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"diffsmooth {args.command}: error: out of memory; use a smaller --batch or --m", file=sys.stderr)
        return 2
    except RuntimeError as err:
        from diffsmooth.validate import out_of_memory

        if not out_of_memory(err):
            raise
        print(f"diffsmooth {args.command}: error: out of memory ({str(err).splitlines()[0][:160]}); "
              "use a smaller --batch or --m", file=sys.stderr)
        return 2
