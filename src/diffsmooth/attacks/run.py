"""An attack over a dataset (``diffsmooth attack --out-dir``) as a task of the runner.

Each image is attacked at every eps and PREDICT runs at each attacked point
(``empirical_accuracy``); the rows of eps ``e`` go to their own PREDICT TSV with the columns
``norm`` (the perturbation's l2 norm) and ``loss`` (``results.attack_store``).  Resuming, torchrun
image sharding and per-image seeding are the runner's, as for certify.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffsmooth.attacks.empirical import EmpiricalSettings, check_eps_list, empirical_accuracy
from diffsmooth.attacks.pgd import AttackConfig
from diffsmooth.methods import MethodSpec
from diffsmooth.results import ResultsStore, Row, StoreSet, attack_label, attack_store
from diffsmooth.runner import Group, RunSpec
from diffsmooth.smoothing import SmoothedClassifier
from diffsmooth.validate import InputError


@dataclass(frozen=True)
class AttackTask:
    """Attack every image at each of ``eps`` with ``config``, then PREDICT with ``spec``'s ``n``,
    ``alpha`` and ``batch_size`` (``spec.mode`` is "predict"; ``spec.method`` is attacked).

    Each eps file's manifest records ``spec`` with ``eps`` (all radii: an image's radii share its
    generator), ``attack`` (the config) and ``file_eps`` (the file's radius).
    """

    spec: RunSpec
    eps: tuple[float, ...]
    config: AttackConfig
    grid: tuple[MethodSpec, ...] | None = None
    shares_samples: bool = False  # the ranks' attacks would have to agree step by step

    def validate(self) -> None:
        self.spec.validate()
        if self.spec.mode != "predict":
            raise InputError("an attack run predicts at the attacked points: mode must be 'predict'")
        if self.grid is not None:
            raise InputError("an attack run attacks one configuration; give one value per method option")
        check_eps_list(list(self.eps))

    def to_dict(self) -> dict[str, Any]:
        return {**self.spec.to_dict(), "eps": list(self.eps), "attack": self.config.to_dict()}

    def store(self, out: Path, *, resume: bool, overwrite: bool) -> ResultsStore | StoreSet:
        return attack_store(self.to_dict(), self.eps, out, resume=resume, overwrite=overwrite,
                            defaults=self.spec.defaults())

    def rows(self, smoothed: SmoothedClassifier, group: Group) -> dict[str | None, list[Row]]:
        spec = self.spec
        settings = EmpiricalSettings(self.config, spec.n, spec.alpha, spec.batch_size)
        records = empirical_accuracy(smoothed, group.xs, group.labels, list(self.eps), settings, group.generators,
                                     indices=group.indices)
        rows: dict[str | None, list[Row]] = {attack_label(e): [] for e in self.eps}
        for r in records:
            predict = -1 if r.predict is None else int(r.predict)
            rows[attack_label(r.eps)].append(Row(r.idx, r.label, predict, int(predict == r.label), r.seconds, None,
                                                 (("norm", f"{r.perturbation_norm:.6g}"), ("loss", f"{r.loss:.6g}"))))
        return rows
