"""Named recipes: the settings of the reference papers' certification runs, as data.

``recipes.json`` beside this module holds them (DiffSmooth on CIFAR-10 and ImageNet at each sigma of
the paper, DDS, DensePure, Cohen et al.); every value carries the reference file it was read from
(``owner/repository:path`` at the commit named under ``references``) and which flag or line of it.
A recipe has
- ``settings``: run settings by their library names (``MethodSpec`` / ``RunSpec`` fields and ``skip``),
  applied unless the user gives the option;
- ``predict``: replacements for a PREDICT run, where the reference has a PREDICT script of its own;
- ``files``: the checkpoints the reference loads (the user gives their paths);
- ``info``: facts that follow from the settings (t*, the classifier's input size), recorded only;
- ``differs``: what the reference run does that this recipe does not reproduce (``value``: the
  reference's; ``detail``: what we do instead and what it changes), recorded only;
- ``ours``: values the reference does not pin, and what the recipe takes for them (``value``: ours;
  ``detail``: why; ``source``: the file that leaves it open), recorded only;
- ``asks``: settings the reference leaves to its user (sigma, DensePure's steps).

``resolve`` merges a recipe with the options a user gave (given ones win) and says where each value
came from; its ``record()`` is what a results manifest stores.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from diffsmooth import validate
from diffsmooth.validate import InputError

SETTINGS = ("method", "dataset", "sigma", "n0", "n", "alpha", "batch_size", "skip", "m", "local_sigma", "vote",
            "local_noise", "local_noise_seed", "runs", "steps", "reverse_chain")
"""What a recipe may set, by library name (``MethodSpec`` / ``RunSpec`` fields; ``skip``: every skip-th image)."""
SECTIONS = ("settings", "predict", "files", "info", "differs", "ours")


@dataclass(frozen=True)
class Value:
    """One recipe value and where it was read: ``source`` = ``owner/repository:path``, ``detail`` = the
    flag, default or line of that file."""

    value: Any
    source: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "source": self.source, "detail": self.detail}


@dataclass(frozen=True)
class Recipe:
    """A reference run's settings (see the module docstring); ``reference`` is the repository, ``commit``
    the commit its values were read at."""

    name: str
    title: str
    reference: str
    commit: str
    settings: Mapping[str, Value]
    predict: Mapping[str, Value] = field(default_factory=dict)
    files: Mapping[str, Value] = field(default_factory=dict)
    info: Mapping[str, Value] = field(default_factory=dict)
    differs: Mapping[str, Value] = field(default_factory=dict)
    ours: Mapping[str, Value] = field(default_factory=dict)
    asks: tuple[str, ...] = ()

    @property
    def dataset(self) -> str:
        return self.settings["dataset"].value

    def for_mode(self, mode: str) -> dict[str, Value]:
        """The settings of a ``mode`` run ("certify" or "predict"): for predict, the reference's PREDICT
        values replace the certify ones, and there is no ``n0``."""
        if mode == "certify":
            return dict(self.settings)
        return {k: v for k, v in {**self.settings, **self.predict}.items() if k != "n0"}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "title": self.title,
                               "reference": {"repository": self.reference, "commit": self.commit}}
        for section in SECTIONS:
            out[section] = {k: v.to_dict() for k, v in getattr(self, section).items()}
        return {**out, "asks": list(self.asks)}


def list_recipes() -> list[str]:
    """The recipe names, sorted."""
    return sorted(_recipes())


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; an unknown name raises ``InputError`` listing the known ones."""
    return _recipes()[validate.choice(name, "recipe", list_recipes())]


@dataclass(frozen=True)
class Resolved:
    """A recipe merged with the options a user gave: ``values`` are the run's settings (given where given,
    else the recipe's), ``given`` the names the user gave."""

    recipe: Recipe
    mode: str
    values: dict[str, Any]
    given: frozenset[str]

    def record(self) -> dict[str, Any]:
        """What the manifest stores: the recipe, and per setting its value, whether it came from the recipe
        or the command line (with the recipe's value beside one that overrode it) and the recipe's source."""
        recipe, own = self.recipe, self.recipe.for_mode(self.mode)
        settings = {}
        for name, value in self.values.items():
            entry: dict[str, Any] = {"value": value, "from": "command line" if name in self.given else "recipe"}
            if name in own:
                if name in self.given:
                    entry["recipe_value"] = own[name].value
                entry.update(source=own[name].source, detail=own[name].detail)
            settings[name] = entry
        return {"name": recipe.name, "title": recipe.title, "mode": self.mode,
                "reference": {"repository": recipe.reference, "commit": recipe.commit}, "settings": settings,
                "files": {k: v.to_dict() for k, v in recipe.files.items()},
                **{section: {k: v.to_dict() for k, v in getattr(recipe, section).items()}
                   for section in ("info", "differs", "ours")}}


def resolve(recipe: Recipe, mode: str, given: Mapping[str, Any], flags: Mapping[str, str] | None = None) -> Resolved:
    """Merge ``recipe`` with ``given`` (setting name -> value the user gave): given values win.

    A different ``dataset`` is refused (a recipe is one dataset's run), and so is a setting of ``asks``
    that is not given. ``flags`` names the settings in messages (e.g. ``{"sigma": "--sigma"}``)."""
    def flag(name: str) -> str:
        return (flags or {}).get(name, name)

    validate.choice(mode, "mode", ("certify", "predict"))
    if "dataset" in given and given["dataset"] != recipe.dataset:
        same = [name for name in list_recipes() if get_recipe(name).dataset == given["dataset"]]
        raise InputError(f"recipe {recipe.name} is a {recipe.dataset} run, not {flag('dataset')} {given['dataset']}; "
                         f"drop {flag('dataset')}" + (f" or choose {', '.join(same)}" if same else ""))
    missing = [name for name in recipe.asks if given.get(name) is None]
    if missing:
        raise InputError(f"recipe {recipe.name} leaves {' and '.join(map(flag, missing))} to you (the reference "
                         f"takes {'them' if len(missing) > 1 else 'it'} as an argument); give "
                         + " ".join(f"{flag(name)} VALUE" for name in missing))
    own = {name: value.value for name, value in recipe.for_mode(mode).items()}
    values = {**own, **{name: value for name, value in given.items() if value is not None}}
    return Resolved(recipe, mode, values, frozenset(name for name in given if given[name] is not None))


# ---- reading recipes.json ------------------------------------------------------------------------

@cache
def _recipes() -> dict[str, Recipe]:
    doc = json.loads(resources.files("diffsmooth").joinpath("recipes.json").read_text())
    references, bases = doc["references"], doc["bases"]
    return {name: _build(name, entry, bases, references) for name, entry in doc["recipes"].items()}


def _merged(entry: dict[str, Any], bases: dict[str, Any], seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """``entry`` over the chain of its ``base`` entries: sections merge key by key, the rest is replaced."""
    if "base" not in entry:
        return entry
    name = entry["base"]
    if name in seen or name not in bases:
        raise ValueError(f"recipes.json: base {name!r} is missing or circular")
    parent = _merged(bases[name], bases, (*seen, name))
    out = {**parent, **{k: v for k, v in entry.items() if k != "base"}}
    for section in SECTIONS:
        out[section] = {**parent.get(section, {}), **entry.get(section, {})}
    return out


def _build(name: str, entry: dict[str, Any], bases: dict[str, Any], references: dict[str, Any]) -> Recipe:
    doc = _merged(entry, bases)
    sections = {section: {k: Value(**v) for k, v in doc.get(section, {}).items()} for section in SECTIONS}
    unknown = [k for section in ("settings", "predict") for k in sections[section] if k not in SETTINGS]
    if unknown or "dataset" not in sections["settings"]:
        raise ValueError(f"recipes.json: recipe {name!r} sets unknown {unknown} or no dataset")
    reference = doc["reference"]
    return Recipe(name, doc["title"], reference, references[reference]["commit"], asks=tuple(doc.get("asks", ())),
                  **sections)
