"""What the subcommands share about options: defaults read from the library's dataclasses, so
that the command line and the library cannot drift apart."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


def default_of(source: type | Callable[..., Any], name: str) -> Any:
    """The library's default of ``name``: a field of the dataclass ``source`` (e.g. ``RunSpec``'s
    ``n0``) or a parameter of the function ``source``."""
    if dataclasses.is_dataclass(source):
        for f in dataclasses.fields(source):
            if f.name == name:
                if f.default is not dataclasses.MISSING:
                    return f.default
                if f.default_factory is not dataclasses.MISSING:
                    return f.default_factory()
                raise TypeError(f"{source.__name__}.{name} has no default")
        raise TypeError(f"{source.__name__} has no field {name!r}")
    default = inspect.signature(source).parameters[name].default
    if default is inspect.Parameter.empty:
        raise TypeError(f"{source.__name__}() has no default for {name!r}")
    return default


def add_image_arguments(p: argparse.ArgumentParser) -> None:
    """Which dataset images a run covers (``runner.select_indices``): certify, predict and attack."""
    g = p.add_argument_group("images")
    g.add_argument("--split", choices=("test", "train"), default="test", help="dataset split")
    g.add_argument("--skip", type=int, default=1, help="take every skip-th image (Cohen's --skip)")
    g.add_argument("--max", "--max-images", type=int, default=None,
                   help="at most this many images, counted after --skip (--max-images under torchrun); unlike "
                   "the --max of Cohen et al.'s scripts, which bounds the dataset index")
    g.add_argument("--indices", type=int, nargs="+", default=None, help="explicit dataset indices instead")


# ---- which options the user typed ----------------------------------------------------------------


@dataclass(frozen=True)
class Default:
    """An option's default, marked so that a typed value can be told from it; prints as the value."""

    value: Any

    def __str__(self) -> str:
        return str(self.value)


def add_cpu_workers(p: argparse.ArgumentParser) -> None:
    """``--cpu-workers N``: row-block workers of the base on the CPU (``diffsmooth.workers``); None: auto."""
    p.add_argument("--cpu-workers", type=int, default=None, metavar="N",
                   help="CPU: run each batch as N row blocks on single-threaded workers, results unchanged "
                        "(default: one per thread where the base draws no noise per call; 1: off)")


def checked_cpu_workers(value: int | None) -> int | None:
    """``--cpu-workers`` checked (None stays None: the default)."""
    from diffsmooth import validate

    return None if value is None else validate.whole(value, "--cpu-workers")


def mark_defaults(p: argparse.ArgumentParser, dests: Iterable[str]) -> None:
    """Mark the defaults of the options with these ``dests`` (``Default``), so that ``typed_options``
    can tell which ones the user typed (also when typing the default value)."""
    dests = [d for d in dests if not isinstance(p.get_default(d), Default)]
    marked = tuple(p.get_default("_marked") or ()) + tuple(dests)
    p.set_defaults(**{d: Default(p.get_default(d)) for d in dests}, _marked=marked)


def typed_options(args: argparse.Namespace) -> set[str]:
    """The options the user typed: every one, where ``main`` parsed the command line (``typed_dests``),
    else the marked ones typed; removes every mark, so that everything after sees plain values (call it
    first; later calls return the same set)."""
    if not hasattr(args, "_typed") or not getattr(args, "_marks_removed", False):
        typed = set()
        for dest in getattr(args, "_marked", ()):
            value = getattr(args, dest)
            if isinstance(value, Default):
                setattr(args, dest, value.value)
            else:
                typed.add(dest)
        if not hasattr(args, "_typed"):
            args._typed = typed
        args._marks_removed = True
    return args._typed


def typed_dests(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The ``dest`` of every option typed on ``argv`` (a command line that ``parser`` accepts): it is
    parsed again with every default suppressed, so that what remains was typed (also when typed with
    its default value, abbreviated or as ``--opt=value``)."""
    saved: list[tuple[argparse.ArgumentParser, dict[str, Any], list[tuple[argparse.Action, Any]]]] = []

    def suppress(p: argparse.ArgumentParser) -> None:
        saved.append((p, dict(p._defaults), [(a, a.default) for a in p._actions]))
        p._defaults.clear()
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in dict.fromkeys(action.choices.values()):
                    suppress(child)
            action.default = argparse.SUPPRESS

    suppress(parser)
    try:
        typed = vars(parser.parse_args(argv))
    finally:
        for p, defaults, actions in saved:
            p._defaults.clear()
            p._defaults.update(defaults)
            for action, default in actions:
                action.default = default
    return set(typed) - {"command"}


def flag(dest: str) -> str:
    """The option of ``dest`` as the user types it (``local_sigma`` -> ``--local-sigma``)."""
    return "--" + dest.replace("_", "-")
