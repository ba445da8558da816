"""Randomized smoothing: CERTIFY and PREDICT of Cohen, Rosenfeld and Kolter (2019).

The smoothed classifier is ``g(x) = argmax_c P(h(x + d) = c)`` with
``d ~ N(0, sigma^2 I)`` added in [0,1] pixel space.  ``h`` (the *base*) is any
callable from a batch of noisy images to scores or labels: a plain classifier
(Gaussian RS), a purifier followed by a classifier (DDS), or DiffSmooth.

Guarantee (CERTIFY): with probability at least ``1 - alpha`` over the noise,
if the certificate does not abstain then ``g`` predicts ``prediction`` on the
whole l2 ball of radius ``radius`` around ``x``.  It holds because the class
is chosen on ``n0`` selection samples and its probability is bounded on a
fresh, independent draw of ``n`` estimation samples.

Noise for image i is drawn from its own generator, chunk by chunk, in chunks
whose sizes depend only on ``(n0, n, batch_size)``; forward batches pack
chunks of several images when ``n`` is small.  So an image's certificate
depends on its generator and ``batch_size`` only, not on which images share
its batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from diffsmooth.errors import InputError
from diffsmooth.stats import (
    FIRST_LOOK,
    LookSchedule,
    binomial_test_pvalue,
    certified_radius,
    certified_radius_separate,
    clopper_pearson_lower,
    clopper_pearson_upper,
    look_schedule,
    separate_pb_bounds,
    sequential_lower,
)

Base = Callable[[Tensor], Tensor]
"""Maps noisy images ``(B, C, H, W)`` to scores ``(B, num_classes)`` or labels ``(B,)``."""

Generators = torch.Generator | Sequence[torch.Generator | None] | None

BOUNDS = ("cohen", "separate-pb")
"""Certificates CERTIFY can issue: ``"cohen"`` bounds p_A alone (radius ``sigma Phi^-1(p_lower)``);
``"separate-pb"`` also bounds every other class (radius ``sigma/2 (Phi^-1(p_lower) - Phi^-1(p_b_upper))``,
see ``stats.separate_pb_bounds`` for how the two share alpha)."""


@dataclass(frozen=True)
class Certificate:
    """The outcome of CERTIFY for one image.

    ``prediction`` is the certified class, or ``None`` when the smoothed
    classifier abstains (then ``radius`` is 0).  ``selected_class`` is the class
    chosen on the selection draw either way; ``n_a`` counts it among the ``n``
    estimation samples and ``p_lower`` is its lower bound.  ``bound`` says which
    certificate was issued (``BOUNDS``); with ``"separate-pb"``, ``p_b_upper`` is the
    upper bound on every other class's probability (None with ``"cohen"``).
    """

    prediction: int | None
    radius: float
    p_lower: float
    selected_class: int
    n_a: int
    n0: int
    n: int
    alpha: float
    sigma: float
    counts: tuple[int, ...]
    selection_counts: tuple[int, ...]
    p_b_upper: float | None = None
    bound: str = "cohen"

    @property
    def abstained(self) -> bool:
        return self.prediction is None


@dataclass(frozen=True)
class Prediction:
    """The outcome of PREDICT for one image: the top class, or ``None`` (abstain)
    when the two-sided binomial test of the top two counts has p-value > alpha."""

    prediction: int | None
    p_value: float
    n: int
    alpha: float
    counts: tuple[int, ...]

    @property
    def abstained(self) -> bool:
        return self.prediction is None


@dataclass(frozen=True, kw_only=True)
class SequentialCertificate(Certificate):
    """The outcome of sequential CERTIFY (``certify_sequential``) for one image.

    The fields of ``Certificate`` keep their meaning, with ``n`` the estimation
    samples actually used (one of the schedule's look sizes, at most ``n_max``),
    ``counts`` their class counts and ``p_lower`` the anytime-valid lower bound
    read at the stopping time; ``radius`` is certified with probability at least
    1 - alpha like a fixed-n one.

    ``n_max``: the sample budget; ``looks``: looks taken; ``stop``: why the image
    stopped: ``"cap"`` (radius reached ``max_radius``, or every radius asked is
    certified), ``"futile"`` (even an optimistic continuation to ``n_max`` could
    not certify the smallest radius still open), ``"tolerance"`` (continuing
    would raise the radius by less than the tolerance), ``"budget"`` (``n_max``
    used).  ``radii``: fixed-radius mode only, ``(r, certified)`` for each radius
    asked (certified iff not abstaining and ``radius >= r``); empty otherwise.
    """

    n_max: int
    looks: int
    stop: str
    radii: tuple[tuple[float, bool], ...] = ()


_FUTILITY_ALPHA = 1e-3
"""Level of the optimistic upper bound behind the futility rule (spends no alpha: stopping
for futility only withholds a claim)."""


@dataclass(frozen=True)
class _StopRule:
    """When a sequential certification stops an image (see ``certify_sequential_batch``)."""

    sigma: float
    radii: tuple[float, ...]
    max_radius: float | None
    min_radius: float
    tolerance: float

    @classmethod
    def build(
        cls, sigma: float, radii: Sequence[float] | None, max_radius: float | None, min_radius: float, tolerance: float
    ) -> _StopRule:
        def number(name: str, value: object) -> float:
            real = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (real and value >= 0 and math.isfinite(value)):
                raise InputError(f"{name} must be a finite radius >= 0 in [0,1] pixel units, got {value!r}")
            return float(value)

        if radii is not None:
            if max_radius is not None or min_radius != 0.0 or tolerance != 0.0:
                raise InputError(
                    "radii (fixed-radius mode) excludes max_radius, min_radius and tolerance (radius mode); "
                    "give one mode"
                )
            if isinstance(radii, (str, bytes)) or not isinstance(radii, Sequence) or len(radii) == 0:
                raise InputError(f"radii must be a non-empty list of radii, got {radii!r}")
            return cls(sigma, tuple(sorted({number("radii", r) for r in radii})), None, 0.0, 0.0)
        cap = None if max_radius is None else number("max_radius", max_radius)
        low = number("min_radius", min_radius)
        if cap is not None and low > cap:
            raise InputError(f"min_radius {low} exceeds max_radius {cap}; lower min_radius or raise max_radius")
        return cls(sigma, (), cap, low, number("tolerance", tolerance))

    def radius(self, p_lower: float) -> float | None:
        """The radius a bound certifies, None when it abstains."""
        return None if p_lower < 0.5 else certified_radius(p_lower, self.sigma)

    def reaches(self, p_lower: float, r: float) -> bool:
        radius = self.radius(p_lower)
        return radius is not None and radius >= r

    def stop(self, p_lower: float, n_a: int, n: int, schedule: LookSchedule) -> str | None:
        """Why to stop after ``n_a`` of ``n`` samples with bound ``p_lower``, or None to go on."""
        last = len(schedule.sizes) - 1
        if self.radii:
            pending = [r for r in self.radii if not self.reaches(p_lower, r)]
            if not pending:
                return "cap"
        elif self.max_radius is not None and self.reaches(p_lower, self.max_radius):
            return "cap"
        if n >= schedule.n_max:
            return "budget"
        # Futility: the bound n_max would give if the rest came at an optimistic rate.
        rest = schedule.n_max - n
        upper = clopper_pearson_upper(n_a, n, _FUTILITY_ALPHA)
        best = max(p_lower, schedule.lower(last, n_a + math.floor(upper * rest)))
        if not self.reaches(best, pending[0] if self.radii else self.min_radius):
            return "futile"
        if self.tolerance > 0 and p_lower >= 0.5:
            # Tolerance (never while abstaining): the radius that n_max samples would give
            # if the observed proportion stayed.
            likely = max(p_lower, schedule.lower(last, n_a + math.floor(n_a / n * rest)))
            cap = math.inf if self.max_radius is None else self.max_radius
            gain = min(self.radius(likely) or 0.0, cap) - min(self.radius(p_lower) or 0.0, cap)
            if gain < self.tolerance:
                return "tolerance"
        return None


def check_sequential_options(sigma: float, radii: Sequence[float] | None, max_radius: float | None,
                             min_radius: float, tolerance: float) -> None:
    """Check the stopping options of ``certify_sequential_batch`` before anything runs."""
    _StopRule.build(sigma, radii, max_radius, min_radius, tolerance)


def _check_whole(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return value


def _check_alpha(alpha: object) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
        raise InputError(f"alpha must lie strictly between 0 and 1 (e.g. 0.001), got {alpha!r}")
    return float(alpha)


def shard_share(num: int, rank: int, world_size: int) -> int:
    """Samples that process ``rank`` of ``world_size`` draws out of ``num``: ``num // world_size``,
    plus one for the first ``num % world_size`` ranks, so the shares add up to ``num``."""
    return num // world_size + (1 if rank < num % world_size else 0)


def _check_shard(shard: object, reduce_counts: object) -> tuple[int, int] | None:
    if shard is None:
        return None
    if not (
        isinstance(shard, tuple) and len(shard) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in shard)
        and 0 <= shard[0] < shard[1]
    ):
        raise InputError(f"shard must be (rank, world_size) with 0 <= rank < world_size, got {shard!r}")
    if shard[1] > 1 and reduce_counts is None:
        # Without the sum, n_A would count one share while the certificate claims all n samples.
        raise InputError("shard with world_size > 1 needs reduce_counts that sums the counts of all shards")
    return shard


def _one_image(x: object, batch_method: str) -> Tensor:
    """``x`` (C, H, W) as a batch of one, or ``InputError`` pointing to ``batch_method``."""
    if not isinstance(x, Tensor) or x.dim() != 3:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise InputError(f"x must be one image of shape (C, H, W), got {shape}; use {batch_method} for a batch")
    return x.unsqueeze(0)


def per_image_generators(generators: Generators, k: int) -> list[torch.Generator | None]:
    """``k`` generators from one per image, a single one shared in order, or None (the default one)."""
    if generators is None or isinstance(generators, torch.Generator):
        return [generators] * k
    gens = list(generators)
    if len(gens) != k:
        raise InputError(f"generators must hold one generator per image: got {len(gens)} for {k} images")
    return gens


def check_images(xs: Tensor, name: str = "x") -> None:
    """Raise ``InputError`` unless ``xs`` is a finite ``(K, C, H, W)`` batch in [0,1]."""
    if not isinstance(xs, Tensor) or not xs.is_floating_point():
        raise InputError(f"{name} must be a floating-point torch.Tensor of pixels in [0,1]")
    if xs.dim() != 4:
        raise InputError(f"{name} must have shape (K, C, H, W), got {tuple(xs.shape)}")
    if not bool(torch.isfinite(xs).all()):
        raise InputError(f"{name} contains NaN or infinite pixels; clean the image before certifying")
    lo, hi = torch.aminmax(xs)
    if lo < 0.0 or hi > 1.0:
        raise InputError(
            f"{name} must hold pixels in [0,1], got values in [{float(lo):.3g}, {float(hi):.3g}];"
            " divide 8-bit images by 255 and do not normalize (normalization is the classifier's first layer)"
        )


class SmoothedClassifier:
    """The Gaussian-smoothed version ``g`` of a base classifier ``h``.

    Args:
        base: maps ``(B, C, H, W)`` noisy images (pixels, roughly [0,1] plus
            noise) to scores ``(B, num_classes)`` or labels ``(B,)``.  Put
            ``nn.Module`` bases in eval mode first.
        num_classes: number of classes of ``h``.
        sigma: standard deviation of the smoothing noise in [0,1] pixel space.
        reduce_counts: optional function applied to every count tensor
            ``(K, num_classes)`` before decisions are taken, e.g. an all-reduce
            that adds the counts of several processes sharing one image's
            samples.  Identity when ``None``.
        shard: ``(rank, world_size)`` when ``world_size`` processes share each
            image's samples: this one draws ``shard_share(num, rank, world_size)``
            of every ``num`` (from its own generators) and ``reduce_counts``
            must sum the shards, so that decisions see all ``n0``/``n`` samples.
        bound: the certificate CERTIFY issues, one of ``BOUNDS``: ``"cohen"`` (default)
            or ``"separate-pb"`` (larger radii when the mass not on the top class is
            spread over several classes).
    """

    def __init__(
        self,
        base: Base,
        num_classes: int,
        sigma: float,
        reduce_counts: Callable[[Tensor], Tensor] | None = None,
        shard: tuple[int, int] | None = None,
        bound: str = "cohen",
    ) -> None:
        if not callable(base):
            raise InputError("base must be callable: a function or nn.Module from images to scores or labels")
        _check_whole("num_classes", num_classes, minimum=2)
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (
            sigma > 0 and math.isfinite(sigma)
        ):
            raise InputError(f"sigma must be a positive finite noise level in [0,1] pixel units, got {sigma!r}")
        self.base = base
        self.num_classes = num_classes
        self.sigma = float(sigma)
        self.reduce_counts = reduce_counts
        self.shard = _check_shard(shard, reduce_counts)
        if bound not in BOUNDS:
            raise InputError(f"unknown bound {bound!r}; choose one of: {', '.join(BOUNDS)}")
        self.bound = bound
        self._nonfinite: Tensor | None = None  # on-device flag: did the base return NaN/inf scores?

    def sharded(self, rank: int, world_size: int, reduce_counts: Callable[[Tensor], Tensor]) -> SmoothedClassifier:
        """The same smoothed classifier as one of ``world_size`` processes that share each image's
        samples: this one draws its share, and ``reduce_counts`` sums the counts of all shares."""
        return SmoothedClassifier(self.base, self.num_classes, self.sigma, reduce_counts, (rank, world_size),
                                  bound=self.bound)

    # -- CERTIFY --------------------------------------------------------------

    def certify(
        self,
        x: Tensor,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int,
        generator: torch.Generator | None = None,
    ) -> Certificate:
        """CERTIFY one image ``x`` of shape ``(C, H, W)`` with pixels in [0,1]."""
        return self.certify_batch(_one_image(x, "certify_batch"), n0, n, alpha, batch_size, [generator])[0]

    def certify_batch(
        self,
        xs: Tensor,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int,
        generators: Generators = None,
    ) -> list[Certificate]:
        """CERTIFY each of ``xs`` ``(K, C, H, W)``, packing their samples into shared batches.

        ``generators``: one per image (results then do not depend on which
        images are certified together), a single one shared in order, or None.
        """
        n0, n, alpha, selection, estimation = self._draws(xs, n0, n, alpha, batch_size, generators)
        if selection.dim() != 2:
            raise InputError("this base scores several configurations; use certify_grid_batch")
        return [self._certificate(selection[i], estimation[i], n0, n, alpha) for i in range(xs.shape[0])]

    def _draws(self, xs: Tensor, n0: int, n: int, alpha: float, batch_size: int,
               generators: Generators) -> tuple[int, int, float, Tensor, Tensor]:
        """CERTIFY's two draws, checked settings first: (n0, n, alpha, selection, estimation counts)."""
        check_images(xs, "xs")
        n0 = _check_whole("n0", n0)
        n = _check_whole("n", n)
        alpha = _check_alpha(alpha)
        batch_size = _check_whole("batch_size", batch_size)
        gens = per_image_generators(generators, xs.shape[0])
        # Selection: guess the top class from n0 samples.
        selection = self.sample_counts(xs, n0, batch_size, gens).cpu()
        # Estimation: a fresh, independent draw of n samples bounds its probability.
        estimation = self.sample_counts(xs, n, batch_size, gens).cpu()
        return n0, n, alpha, selection, estimation

    def certify_grid_batch(
        self,
        xs: Tensor,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int,
        generators: Generators = None,
    ) -> list[list[Certificate]]:
        """CERTIFY each of ``xs`` under every configuration of a grid base (``defenses.Grid``, whose
        scores are ``(B, configurations, num_classes)``), from one noise stream.

        Each configuration keeps its own counts: its class is selected on its n0 selection counts
        and bounded on its n estimation counts, so its certificate is exactly the one a separate
        run with the same generators gives, and a (1 - alpha) statement on its own.  Choosing the
        best configuration per image afterwards is not covered by that guarantee.
        Returns ``certificates[i][k]`` for image i, configuration k.
        """
        # Selection, then a fresh, independent estimation draw; counts (K, configurations, classes).
        n0, n, alpha, selection, estimation = self._draws(xs, n0, n, alpha, batch_size, generators)
        if selection.dim() != 3:
            raise InputError("certify_grid_batch needs a grid base returning (B, configurations, num_classes) scores")
        return [[self._certificate(selection[i, k], estimation[i, k], n0, n, alpha) for k in range(selection.shape[1])]
                for i in range(xs.shape[0])]

    def _certificate(self, selection: Tensor, estimation: Tensor, n0: int, n: int, alpha: float) -> Certificate:
        """CERTIFY's decision from one image's selection and estimation counts (num_classes,)."""
        c_a = int(selection.argmax())
        n_a = int(estimation[c_a])
        p_b_upper = None
        if self.bound == "separate-pb":
            # p_A and every other class bounded together at a shared alpha.
            p_lower, p_b_upper = separate_pb_bounds(estimation.tolist(), c_a, alpha)
            radius = certified_radius_separate(p_lower, p_b_upper, self.sigma)
            abstain = p_lower <= p_b_upper
        else:
            p_lower = clopper_pearson_lower(n_a, n, alpha)
            abstain = p_lower < 0.5
            radius = 0.0 if abstain else certified_radius(p_lower, self.sigma)
        return Certificate(
            prediction=None if abstain else c_a,
            radius=0.0 if abstain else radius,
            p_lower=p_lower,
            selected_class=c_a,
            n_a=n_a,
            n0=n0,
            n=n,
            alpha=alpha,
            sigma=self.sigma,
            counts=tuple(int(c) for c in estimation),
            selection_counts=tuple(int(c) for c in selection),
            p_b_upper=p_b_upper,
            bound=self.bound,
        )

    # -- PREDICT --------------------------------------------------------------

    def predict(
        self,
        x: Tensor,
        n: int,
        alpha: float,
        batch_size: int,
        generator: torch.Generator | None = None,
    ) -> Prediction:
        """PREDICT for one image ``x`` ``(C, H, W)`` in [0,1]; abstains with probability
        at most alpha of returning a class other than ``g(x)``."""
        return self.predict_batch(_one_image(x, "predict_batch"), n, alpha, batch_size, [generator])[0]

    def predict_batch(
        self,
        xs: Tensor,
        n: int,
        alpha: float,
        batch_size: int,
        generators: Generators = None,
    ) -> list[Prediction]:
        """PREDICT for each of ``xs`` ``(K, C, H, W)``, packing samples into shared batches."""
        check_images(xs, "xs")
        n = _check_whole("n", n)
        alpha = _check_alpha(alpha)
        batch_size = _check_whole("batch_size", batch_size)
        gens = per_image_generators(generators, xs.shape[0])

        counts = self.sample_counts(xs, n, batch_size, gens).cpu()
        predictions = []
        for row in counts:
            top2 = torch.topk(row, 2)
            n1, n2 = int(top2.values[0]), int(top2.values[1])
            p_value = binomial_test_pvalue(n1, n1 + n2, 0.5)
            predictions.append(
                Prediction(
                    prediction=int(top2.indices[0]) if p_value <= alpha else None,
                    p_value=p_value,
                    n=n,
                    alpha=alpha,
                    counts=tuple(int(c) for c in row),
                )
            )
        return predictions

    # -- sequential CERTIFY ----------------------------------------------------

    def certify_sequential(
        self,
        x: Tensor,
        n0: int,
        n_max: int,
        alpha: float,
        batch_size: int,
        generator: torch.Generator | None = None,
        **options: Any,
    ) -> SequentialCertificate:
        """Sequential CERTIFY of one image ``x`` ``(C, H, W)`` in [0,1]; see ``certify_sequential_batch``."""
        return self.certify_sequential_batch(_one_image(x, "certify_sequential_batch"), n0, n_max, alpha, batch_size,
                                             [generator], **options)[0]

    def certify_sequential_batch(
        self,
        xs: Tensor,
        n0: int,
        n_max: int,
        alpha: float,
        batch_size: int,
        generators: Generators = None,
        *,
        radii: Sequence[float] | None = None,
        max_radius: float | None = None,
        min_radius: float = 0.0,
        tolerance: float = 0.0,
        n_first: int = FIRST_LOOK,
        ratio: float = 2.0,
    ) -> list[SequentialCertificate]:
        """CERTIFY each of ``xs`` ``(K, C, H, W)`` (pixels in [0,1]) with as few samples as the bound allows.

        As in ``certify_batch``, the class is selected on ``n0`` samples; the
        estimation draw that follows (fresh samples from the same generator) is
        taken in looks of ``n_first * ratio^j`` samples up to ``n_max``
        (``stats.look_schedule``), and each image stops at the first look where
        its question is settled.  Two questions:

        - radius mode (``radii`` None): the largest radius, stopping at
          ``max_radius`` (None: no cap), when no radius >= ``min_radius`` can
          be reached (abstain, or the radius it has), or when the radius that
          ``n_max`` samples would give if the observed proportion stayed exceeds
          the current one by less than ``tolerance`` (0: never stop for that;
          an image that still abstains never stops for tolerance);
        - fixed-radius mode (``radii`` given): decide "radius >= r" for each r,
          stopping once all are certified or the smallest uncertified one can
          no longer be.

        Guarantee: ``p_lower`` is read from an anytime-valid (1 - alpha) lower
        confidence sequence (``stats.sequential_lower``), valid at whatever
        look the counts make the image stop; so with probability at least
        1 - alpha, ``g`` predicts ``prediction`` on the l2 ball of ``radius``.
        All the radii of fixed-radius mode read that one bound, so their
        decisions hold together at 1 - alpha, with no split of alpha.
        Stopping for futility or tolerance only ever lowers a claim, so those
        rules use heuristic projections (an upper Clopper-Pearson bound at
        level 0.001, the observed proportion) without spending alpha.

        Packing: in each round every running image draws its next chunk and
        the chunks share forward batches of ``batch_size`` (``sample_counts``);
        images that stop leave the rounds.  An image's noise depends only on its
        generator and the settings, not on the other images.  With ``shard``,
        every process takes the same decisions from the reduced counts.
        """
        check_images(xs, "xs")
        n0 = _check_whole("n0", n0)
        n_max = _check_whole("n_max", n_max)
        alpha = _check_alpha(alpha)
        batch_size = _check_whole("batch_size", batch_size)
        n_first = _check_whole("n_first", n_first)
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not (ratio > 1 and math.isfinite(ratio)):
            raise InputError(f"ratio must be a finite number > 1 (the growth of the looks, e.g. 2), got {ratio!r}")
        rule = _StopRule.build(self.sigma, radii, max_radius, min_radius, tolerance)
        schedule = look_schedule(n_max, alpha, n_first=n_first, ratio=float(ratio))
        gens = per_image_generators(generators, xs.shape[0])
        k = xs.shape[0]

        # Selection: guess the top class from n0 samples.
        selection = self.sample_counts(xs, n0, batch_size, gens).cpu()
        selected = selection.argmax(dim=1)
        # Estimation: fresh samples, in looks, until each image's question is settled.
        estimation = torch.zeros(k, self.num_classes, dtype=torch.long)
        p_lower = [0.0] * k
        stops: list[str | None] = [None] * k
        successes: list[list[int]] = [[] for _ in range(k)]
        drawn = 0
        for size in schedule.sizes:
            running = [i for i in range(k) if stops[i] is None]
            if not running:
                break
            rows = torch.tensor(running, dtype=torch.long)
            chunk = self.sample_counts(xs[rows.to(xs.device)], size - drawn, batch_size, [gens[i] for i in running])
            estimation[rows] += chunk.cpu()
            drawn = size
            for i in running:
                successes[i].append(int(estimation[i, selected[i]]))
                p_lower[i] = sequential_lower(successes[i], schedule)[-1]
                stops[i] = rule.stop(p_lower[i], successes[i][-1], size, schedule)

        certificates = []
        for i in range(k):
            c_a = int(selected[i])
            abstain = p_lower[i] < 0.5
            radius = 0.0 if abstain else certified_radius(p_lower[i], self.sigma)
            certificates.append(
                SequentialCertificate(
                    prediction=None if abstain else c_a,
                    radius=radius,
                    p_lower=p_lower[i],
                    selected_class=c_a,
                    n_a=int(estimation[i, c_a]),
                    n0=n0,
                    n=schedule.sizes[len(successes[i]) - 1],
                    alpha=alpha,
                    sigma=self.sigma,
                    counts=tuple(int(c) for c in estimation[i]),
                    selection_counts=tuple(int(c) for c in selection[i]),
                    n_max=n_max,
                    looks=len(successes[i]),
                    stop=stops[i] or "budget",
                    radii=tuple((r, not abstain and radius >= r) for r in rule.radii),
                )
            )
        return certificates

    # -- sampling -------------------------------------------------------------

    def sample_counts(
        self,
        xs: Tensor,
        num: int,
        batch_size: int,
        generators: Sequence[torch.Generator | None],
    ) -> Tensor:
        """Class counts of ``h(x_i + d)`` over ``num`` noise draws per image.

        Args:
            xs: ``(K, C, H, W)`` images in [0,1].
            num: noise samples per image, over all shards (this process draws
                its share of them when ``shard`` is set).
            batch_size: largest number of noisy images per call of ``base``.
            generators: K generators (or None for the default one), one per image.
        Returns:
            ``(K, num_classes)`` int64 counts on ``xs.device`` (after ``reduce_counts``).
        """
        k = xs.shape[0]
        configurations = getattr(self.base, "num_configurations", None)
        shape = (k, self.num_classes) if configurations is None else (k, configurations, self.num_classes)
        counts = torch.zeros(shape, dtype=torch.long, device=xs.device)
        if self.shard is not None:
            num = shard_share(num, *self.shard)
        # Each image's noise comes in chunks that depend only on (num, batch_size) ...
        full, rest = divmod(num, batch_size)
        chunks = [(i, batch_size) for i in range(k) for _ in range(full)]
        # ... and the small remainders of several images share forward batches.
        chunks += [(i, rest) for i in range(k)] if rest else []
        pending: list[tuple[int, int]] = []
        filled = 0
        with torch.inference_mode():
            for i, size in chunks:
                if filled + size > batch_size:
                    self._count_batch(xs, pending, generators, counts)
                    pending, filled = [], 0
                pending.append((i, size))
                filled += size
            if pending:
                self._count_batch(xs, pending, generators, counts)
        self._raise_if_nonfinite()
        return counts if self.reduce_counts is None else self.reduce_counts(counts)

    def _raise_if_nonfinite(self) -> None:
        """One host synchronisation per phase: NaN or infinite scores must never become counts
        (their argmax is class 0, which would certify garbage)."""
        flag, self._nonfinite = self._nonfinite, None
        if flag is not None and bool(flag):
            name = type(self.base).__name__
            raise InputError(
                f"the base classifier ({name}) returned NaN or infinite scores; its weights or inputs are broken "
                "(check the checkpoint with torch.isfinite, or use float32 instead of float16)"
            )

    def _count_batch(
        self,
        xs: Tensor,
        pending: list[tuple[int, int]],
        generators: Sequence[torch.Generator | None],
        counts: Tensor,
    ) -> None:
        shape = xs.shape[1:]
        noisy = torch.cat(
            [
                xs[i] + self.sigma * torch.randn((size, *shape), generator=generators[i], device=xs.device, dtype=xs.dtype)
                for i, size in pending
            ]
        )
        labels = self._labels(self.base(noisy), noisy.shape[0])
        owners = torch.cat([torch.full((size,), i, dtype=torch.long, device=xs.device) for i, size in pending])
        # Counting stays on the device: no host synchronisation per batch.
        if labels.dim() == 1:
            counts.index_put_((owners, labels), torch.ones_like(labels), accumulate=True)
        else:  # a grid: labels (B, configurations)
            configs = torch.arange(labels.shape[1], device=labels.device).expand_as(labels)
            counts.index_put_((owners[:, None].expand_as(labels), configs, labels), torch.ones_like(labels),
                              accumulate=True)

    def _labels(self, out: Tensor, batch: int) -> Tensor:
        if not isinstance(out, Tensor):
            raise InputError(f"base must return a torch.Tensor, got {type(out).__name__}")
        if out.shape == (batch, self.num_classes) or (out.dim() == 3 and out.shape[0] == batch
                                                       and out.shape[2] == self.num_classes):
            if out.is_floating_point():
                # Stays on the device: checked once per phase by _raise_if_nonfinite.
                bad = ~torch.isfinite(out).all()
                self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad
            return out.argmax(dim=-1)
        if out.shape == (batch,) and not out.is_floating_point():
            return out.long()
        raise InputError(
            f"base returned shape {tuple(out.shape)} for a batch of {batch}; expected scores "
            f"({batch}, num_classes={self.num_classes}) or integer labels ({batch},)"
        )

