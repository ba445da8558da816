"""Empirical robust accuracy: attack each image, then PREDICT at the attacked point.

An image counts as robust at ``eps`` when the smoothed classifier's PREDICT (n samples,
abstain unless the binomial test passes at alpha) returns its label at the attacked
point.  This is an upper bound on the true robust accuracy (a stronger attack may do
better), to be read beside the certified accuracy at radius ``eps``, a lower bound
(with probability 1 - alpha per image).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from diffsmooth.attacks.pgd import AttackConfig, attack, check_eps
from diffsmooth.sampling import Generators, per_image_generators
from diffsmooth.smoothing import SmoothedClassifier
from diffsmooth.validate import InputError


@dataclass(frozen=True)
class EmpiricalRecord:
    """One image attacked at one radius, and PREDICT at the attacked point.

    ``predict`` is None when PREDICT abstains (then ``correct`` is False);
    ``perturbation_norm`` is the l2 norm of the perturbation found (<= ``eps``);
    ``loss`` the attack's final cross-entropy; ``seconds`` the attack plus PREDICT time.
    """

    idx: int
    label: int
    eps: float
    predict: int | None
    correct: bool
    perturbation_norm: float
    loss: float
    p_value: float
    seconds: float


def check_eps_list(eps: Sequence[float]) -> list[float]:
    """The radii of a run, each checked; at least one, no repeats."""
    values = [check_eps(e) for e in eps]
    if not values:
        raise InputError("give at least one eps (l2 radius in [0,1] pixel units), e.g. 0.25 0.5 1.0")
    if len(set(values)) != len(values):
        raise InputError(f"eps values repeat: {values}; give each radius once")
    return values


@dataclass(frozen=True)
class EmpiricalSettings:
    """How empirical robustness is measured: the ``attack`` and PREDICT's ``n``, ``alpha`` and
    ``batch_size`` at the attacked point."""

    attack: AttackConfig
    n: int
    alpha: float
    batch_size: int


def empirical_accuracy(
    smoothed: SmoothedClassifier,
    xs: Tensor,
    labels: Sequence[int],
    eps: Sequence[float],
    settings: EmpiricalSettings,
    generators: Generators = None,
    indices: Sequence[int] | None = None,
    sample_generators: Generators = None,
) -> list[EmpiricalRecord]:
    """Attack each of ``xs`` at each radius in ``eps`` and PREDICT at the attacked point.

    Args:
        smoothed: the smoothed classifier (its base is attacked and predicts).
        xs: ``(K, C, H, W)`` clean images in [0,1].
        labels: their ``K`` true classes.
        eps: l2 radii (> 0, [0,1] pixel units), attacked one after the other.
        settings: the attack's settings and PREDICT's at the attacked point.
        generators: one per image: its attacks and then PREDICT's noise, eps by eps,
            draw from it in turn (so an image's rows depend on its generator only).
        indices: dataset indices for the records (0..K-1 when None).
        sample_generators: PREDICT's generators instead of ``generators``, for
            processes that share each image's samples (``SmoothedClassifier.shard``):
            their attacks must agree, so they attack with the same ``generators``
            and sample with their own streams.
    Returns:
        ``K * len(eps)`` records, image by image, each image's in the order of ``eps``.
    """
    radii = check_eps_list(eps)
    k = xs.shape[0]
    labels = [int(y) for y in labels]
    idx = list(range(k)) if indices is None else [int(i) for i in indices]
    if len(labels) != k or len(idx) != k:
        raise InputError(f"labels and indices must hold one entry per image: got {len(labels)}, {len(idx)} for {k}")
    gens = per_image_generators(generators, k)
    sample_gens = gens if sample_generators is None else per_image_generators(sample_generators, k)
    by_image: list[list[EmpiricalRecord]] = [[] for _ in range(k)]
    for radius in radii:
        start = time.perf_counter()
        result = attack(smoothed, xs, labels, radius, settings.attack, gens)
        predictions = smoothed.predict_batch(result.x_adv, settings.n, settings.alpha, settings.batch_size,
                                             sample_gens)
        seconds = (time.perf_counter() - start) / k
        for i, pred in enumerate(predictions):
            by_image[i].append(
                EmpiricalRecord(
                    idx=idx[i],
                    label=labels[i],
                    eps=radius,
                    predict=pred.prediction,
                    correct=pred.prediction == labels[i],
                    perturbation_norm=float(result.perturbation_norm[i]),
                    loss=float(result.loss[i]),
                    p_value=pred.p_value,
                    seconds=seconds,
                )
            )
    return [record for records in by_image for record in records]

