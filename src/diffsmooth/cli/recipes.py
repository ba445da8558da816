"""``diffsmooth recipes``: the named settings of the reference runs; and ``--recipe`` for certify/predict.

A recipe's values apply to the options the user did not type. To tell a typed option from its
default, ``add_recipe_argument`` marks the defaults of the options a recipe may set
(``cli.options.mark_defaults``); ``apply_recipe`` reads which were typed (``typed_options``, which
removes the marks), so that everything after it sees plain values.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from diffsmooth.cli.options import mark_defaults, typed_options
from diffsmooth.validate import InputError

FLAGS = {"method": "--method", "dataset": "--dataset", "sigma": "--sigma", "n0": "--n0", "n": "--n",
         "alpha": "--alpha", "batch_size": "--batch", "skip": "--skip", "m": "--m", "local_sigma": "--local-sigma",
         "vote": "--vote", "local_noise": "--local-noise", "local_noise_seed": "--local-noise-seed",
         "runs": "--runs", "steps": "--steps", "reverse_chain": "--reverse-chain"}
"""The option of each setting a recipe may set (``recipes.SETTINGS``)."""
LISTS = ("method", "m", "local_sigma", "vote", "local_noise")
"""Settings whose option takes a list in certify/predict (a grid of configurations)."""
NEEDS_DENOISER = ("dds", "diffsmooth", "densepure", "denoised")


def _dest(setting: str) -> str:
    """The attribute of the parsed arguments that holds ``setting`` (its name, but ``batch`` for batch_size)."""
    return "batch" if setting == "batch_size" else setting


def add_recipe_argument(p: argparse.ArgumentParser, mode: str) -> None:
    """``--recipe NAME`` on the certify / predict parser ``p``, after all its options are added."""
    p.add_argument("--recipe", metavar="NAME", default=None,
                   help="the settings of a reference run (`diffsmooth recipes` lists them, with the file each "
                   "value comes from); options you give override it; the manifest records the recipe and every "
                   "value's origin")
    mark_defaults(p, [_dest(s) for s in FLAGS if mode == "certify" or s != "n0"])


def apply_recipe(args: argparse.Namespace) -> dict[str, Any] | None:
    """Put ``args.recipe``'s settings on ``args`` where the user typed no option (every mark is removed,
    recipe or not) and check that the recipe's checkpoints are given. Returns the manifest's record of the
    recipe (None without one)."""
    from diffsmooth.recipes import get_recipe, resolve

    typed = typed_options(args)
    given = {setting: getattr(args, _dest(setting)) for setting in FLAGS if _dest(setting) in typed}
    if args.recipe is None:
        return None
    recipe = get_recipe(args.recipe)
    resolved = resolve(recipe, args.mode, given, FLAGS)
    for setting, value in resolved.values.items():
        if setting not in resolved.given:
            setattr(args, _dest(setting), [value] if setting in LISTS else value)
    _check_files(recipe, args)
    return resolved.record()


def _check_files(recipe, args: argparse.Namespace) -> None:
    """The checkpoints the recipe's reference loads must be given: name them where they are not."""
    if args.denoiser is None and set(args.method) & set(NEEDS_DENOISER) and "denoiser" in recipe.files:
        raise InputError(_missing(recipe, "denoiser"))
    # a grid's per-method classifiers stand in for --classifier where they cover the recipe's method
    own = {"diffsmooth": "local_classifier", "dds": "dds_classifier", "rs": "rs_classifier"}
    covered = all(getattr(args, own[m], None) for m in args.method if m in own) and set(args.method) <= set(own)
    if args.classifier is None and not covered and "classifier" in recipe.files:
        raise InputError(_missing(recipe, "classifier"))


def _missing(recipe, what: str) -> str:
    file = recipe.files[what]
    return (f"recipe {recipe.name} needs --{what}: the reference loads {file.value} ({file.source}: {file.detail}); "
            f"give its path with --{what} PATH")


# ---- diffsmooth recipes ---------------------------------------------------------------------------

def register(sub, formatter) -> None:
    p = sub.add_parser("recipes", formatter_class=formatter, help="list the named settings of the reference runs",
                       description="The settings of the reference papers' certification runs (DiffSmooth, DDS, "
                       "DensePure, Cohen et al.), each value with the reference file it was read from. Use one with "
                       "`diffsmooth certify --recipe NAME ...`; options you give override its values.")
    p.add_argument("name", nargs="?", default=None, help="show this recipe's every value and its source")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from diffsmooth.recipes import get_recipe, list_recipes

    recipes = [get_recipe(args.name)] if args.name else [get_recipe(name) for name in list_recipes()]
    if args.json:
        json.dump([r.to_dict() for r in recipes], sys.stdout, indent=2)
        print()
    elif args.name:
        print(_details(recipes[0]))
    else:
        print(_table(recipes))
    return 0


def _table(recipes) -> str:
    columns = ("method", "sigma", "n0", "n", "alpha", "batch_size", "skip", "m", "local_sigma", "runs", "steps")
    rows = [["recipe", "dataset", *(c.replace("batch_size", "batch") for c in columns), "reference"]]
    for r in recipes:
        shown = {name: "give" for name in r.asks} | {name: str(v.value) for name, v in r.settings.items()}
        rows.append([r.name, r.dataset, *(shown.get(c, "") for c in columns), r.reference])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines + ["", "give: the reference leaves it to you; `diffsmooth recipes NAME` shows the sources"])


def _details(r) -> str:
    lines = [f"{r.name}: {r.title}", f"reference: {r.reference} at {r.commit}"]
    # (heading, values, whether the keys are our settings, shown as our flags; differs names the reference's)
    sections = (("certify settings", r.settings, True), ("predict replaces", r.predict, True),
                ("checkpoints (give their paths)", r.files, True), ("facts (recorded, not applied)", r.info, True),
                ("the reference does, this recipe does not (recorded)", r.differs, False),
                ("the reference leaves open, the recipe takes (recorded)", r.ours, True))
    for heading, values, ours in sections:
        if values:
            lines.append(f"{heading}:")
            lines += [f"  {FLAGS.get(k, k) if ours else k} {v.value}    <- {v.source}: {v.detail}"
                      for k, v in values.items()]
    if r.asks:
        lines.append("you give: " + " ".join(FLAGS[name] for name in r.asks))
    return "\n".join(lines)
