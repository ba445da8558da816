"""Which option applies to which command and mode: one table, read by every command before it runs.

An option the user typed (``cli.options.typed_options``) where the table says it does not apply is
refused with one line that names it, what it is for and the fix (drop it), instead of being accepted
and ignored, or recorded in a manifest while it changed nothing. ``main`` reads the table before a
command runs; certify, predict and attack read it after their ``--recipe`` filled in its settings
(``applies_after_recipe``), since a recipe may choose the method.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass

from diffsmooth.validate import InputError

RUNS = ("certify", "predict", "attack")


@dataclass(frozen=True)
class Rule:
    """``options`` (dests) of ``commands`` apply only where ``applies(args)`` holds; ``needs`` says
    where they do apply, for the message."""

    commands: tuple[str, ...]
    options: tuple[str, ...]
    applies: Callable[[argparse.Namespace], bool]
    needs: str


def _methods(args: argparse.Namespace) -> set[str]:
    method = getattr(args, "method", None)
    return set(method) if isinstance(method, list) else {method}


def _for_methods(users: tuple[str, ...]) -> Callable[[argparse.Namespace], bool]:
    return lambda args: bool(_methods(args) & set(users))


def _under_torchrun(args: argparse.Namespace) -> bool:  # noqa: ARG001
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def _never(args: argparse.Namespace) -> bool:  # noqa: ARG001
    return False


# The methods each method-specific option of certify / predict / attack applies to.
USED_BY = {
    "denoiser": ("dds", "diffsmooth", "densepure", "denoised"),
    "denoiser_preset": ("dds", "diffsmooth", "densepure"),
    "m": ("diffsmooth",), "local_sigma": ("diffsmooth",), "vote": ("diffsmooth",), "local_noise": ("diffsmooth",),
    "local_noise_seed": ("diffsmooth",), "local_classifier": ("diffsmooth",),
    "dds_classifier": ("dds",), "rs_classifier": ("rs",),
    "runs": ("densepure",), "steps": ("densepure",), "reverse_chain": ("densepure",), "run_seed": ("densepure",),
}

RULES: tuple[Rule, ...] = (
    *(Rule(RUNS, (dest,), _for_methods(users), f"--method {' / '.join(users)}") for dest, users in USED_BY.items()),
    Rule(RUNS, ("skip", "max"), lambda a: a.indices is None,
         "a run without --indices (--indices names the images itself)"),
    Rule(("certify",), ("n",), lambda a: a.sampling == "fixed",
         "--sampling fixed (sequential sampling draws up to --n-max estimation samples per image)"),
    Rule(("certify",), ("n_max", "radii", "max_radius", "min_radius", "tolerance"),
         lambda a: a.sampling == "sequential", "--sampling sequential"),
    Rule(("attack",), ("fraction",), lambda a: a.audit is not None, "--audit RESULTS.tsv"),
    Rule(("certify",), ("split_samples",), _under_torchrun, "runs under torchrun (WORLD_SIZE > 1)"),
    Rule(("demo",), ("n",), lambda a: a.sampling == "fixed", "--sampling fixed"),
    Rule(("demo",), ("n_max",), lambda a: a.sampling == "sequential", "--sampling sequential (the default)"),
    Rule(("purify",), ("json", "draws", "runs", "steps"), lambda a: a.stats, "--stats"),
    Rule(("purify",), ("method", "classifier", "vote", "m", "reverse_chain", "run_seed", "compile", "cuda_graphs"),
         _never, "certify (purify shows the purifier alone: --denoiser, --sigma, --local-sigma, --local-noise)"),
    Rule(("analyze",), ("title", "overwrite"), lambda a: a.plot is not None, "--plot"),
    Rule(("train-classifier",), ("purify_sigma",), lambda a: a.purify is not None, "--finetune-on-purified"),
    Rule(("train-denoiser",), ("classifier",), lambda a: "stability" in a.objective,
         "--objective stability or mse+stability"),
)


def option_name(command: str, dest: str) -> str:
    """The flag of ``dest`` as the user types it on ``command``."""
    if dest == "steps" and command == "attack":
        return "--reverse-steps"
    return "--" + dest.replace("_", "-")


def check_applies(args: argparse.Namespace) -> None:
    """Refuse the first typed option of ``args.command`` that the table says does not apply here."""
    from diffsmooth.cli.options import typed_options

    command = getattr(args, "command", None)
    typed = typed_options(args)
    for rule in RULES:
        if command not in rule.commands:
            continue
        given = [dest for dest in rule.options if dest in typed]
        if given and not rule.applies(args):
            name = option_name(command, given[0])
            raise InputError(f"{name} does not apply to {_context(command, args, rule)} (it is for {rule.needs}); "
                             f"drop {name}")


def _context(command: str, args: argparse.Namespace, rule: Rule) -> str:
    if rule.needs.startswith("--method"):
        return "--method " + " ".join(sorted(m for m in _methods(args) if m))
    if "sampling" in rule.needs:
        return f"--sampling {args.sampling}"
    return f"`diffsmooth {command}` here"
