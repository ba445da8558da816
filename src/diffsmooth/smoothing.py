"""Randomized smoothing: CERTIFY and PREDICT of Cohen, Rosenfeld and Kolter (2019).

The smoothed classifier is ``g(x) = argmax_c P(h(x + d) = c)`` with
``d ~ N(0, sigma^2 I)`` added in [0,1] pixel space.  ``h`` (the *base*) is any
callable from a batch of noisy images to scores or labels: a plain classifier
(Gaussian RS), a purifier followed by a classifier (DDS), or DiffSmooth.

This module holds the procedures and the one decision that turns bounds into a
certificate (``decide``).  How noise is drawn, packed into batches and shared
between processes is ``sampling``'s job; when a sequential certification stops
an image is ``sequential``'s; the bounds themselves are ``stats``'.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from diffsmooth import validate
from diffsmooth.sampling import Base, Generators, Sampler, per_image_generators
from diffsmooth.sequential import Looked, SequentialOptions, StopRule, estimate_in_looks
from diffsmooth.stats import (
    LookSchedule,
    binomial_test_pvalue,
    certified_radius,
    certified_radius_separate,
    clopper_pearson_lower,
    look_schedule,
    separate_pb_bounds,
)
from diffsmooth.validate import InputError

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
    stopped (``sequential.STOPS``).  ``radii``: fixed-radius mode only, ``(r, certified)``
    for each radius asked (certified iff not abstaining and ``radius >= r``); empty otherwise.
    """

    n_max: int
    looks: int
    stop: str
    radii: tuple[tuple[float, bool], ...] = ()


def decide(p_lower: float, sigma: float, p_b_upper: float | None = None) -> float | None:
    """The certificate's one decision: the l2 radius that the bounds certify, or None (abstain).

    ``p_lower`` bounds the selected class's probability from below; alone (Cohen et al.), g
    abstains below 1/2 and certifies ``sigma Phi^-1(p_lower)`` otherwise.  With ``p_b_upper``, an
    upper bound on every other class's probability, g abstains unless ``p_lower > p_b_upper`` and
    certifies ``sigma/2 (Phi^-1(p_lower) - Phi^-1(p_b_upper))``.
    """
    if p_b_upper is None:
        return None if p_lower < 0.5 else certified_radius(p_lower, sigma)
    return None if p_lower <= p_b_upper else certified_radius_separate(p_lower, p_b_upper, sigma)


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


def _one_image(x: object, batch_method: str) -> Tensor:
    """``x`` (C, H, W) as a batch of one, or ``InputError`` pointing to ``batch_method``."""
    if not isinstance(x, Tensor) or x.dim() != 3:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise InputError(f"x must be one image of shape (C, H, W), got {shape}; use {batch_method} for a batch")
    return x.unsqueeze(0)


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
            image's samples: this one draws ``sampling.shard_share(num, rank, world_size)``
            of every ``num`` (from its own generators) and ``reduce_counts``
            must sum the shards, so that decisions see all ``n0``/``n`` samples.
        bound: the certificate CERTIFY issues, one of ``BOUNDS``: ``"cohen"`` (default)
            or ``"separate-pb"`` (larger radii when the mass not on the top class is
            spread over several classes).
    """

    def __init__(self, base: Base, num_classes: int, sigma: float,
                 reduce_counts: Callable[[Tensor], Tensor] | None = None,
                 shard: tuple[int, int] | None = None, bound: str = "cohen") -> None:
        if not callable(base):
            raise InputError("base must be callable: a function or nn.Module from images to scores or labels")
        self.num_classes = validate.whole(num_classes, "num_classes", minimum=2)
        self.sigma = validate.sigma(sigma)
        self.bound = validate.choice(bound, "bound", BOUNDS)
        self.sampler = Sampler(base, self.num_classes, self.sigma, reduce_counts, shard)

    @property
    def base(self) -> Base:
        return self.sampler.base

    @property
    def shard(self) -> tuple[int, int] | None:
        return self.sampler.shard

    def sharded(self, rank: int, world_size: int, reduce_counts: Callable[[Tensor], Tensor]) -> SmoothedClassifier:
        """The same smoothed classifier as one of ``world_size`` processes that share each image's
        samples: this one draws its share, and ``reduce_counts`` sums the counts of all shares."""
        return SmoothedClassifier(self.base, self.num_classes, self.sigma, reduce_counts, (rank, world_size),
                                  bound=self.bound)

    def sample_counts(self, xs: Tensor, num: int, batch_size: int,
                      generators: Sequence[torch.Generator | None]) -> Tensor:
        """Class counts ``(K, num_classes)`` of ``h(x_i + d)`` over ``num`` draws per image of ``xs``
        ``(K, C, H, W)`` in [0,1], one generator per image (``sampling.Sampler.counts``)."""
        return self.sampler.counts(xs, num, batch_size, generators)

    # -- CERTIFY --------------------------------------------------------------

    def certify(self, x: Tensor, n0: int, n: int, alpha: float, batch_size: int,
                generator: torch.Generator | None = None) -> Certificate:
        """CERTIFY one image ``x`` of shape ``(C, H, W)`` with pixels in [0,1] (Cohen et al., CERTIFY).

        Guarantee: with probability at least ``1 - alpha`` over the noise, if the certificate does
        not abstain then ``g`` predicts ``prediction`` on the whole l2 ball of radius ``radius``
        (in [0,1] pixel units) around ``x``.  It holds because the class is chosen on ``n0``
        selection samples and its probability is bounded on a fresh, independent draw of ``n``
        estimation samples; ``bound`` decides which bound (``BOUNDS``), ``decide`` the radius.
        """
        return self.certify_batch(_one_image(x, "certify_batch"), n0, n, alpha, batch_size, [generator])[0]

    def certify_batch(self, xs: Tensor, n0: int, n: int, alpha: float, batch_size: int,
                      generators: Generators = None) -> list[Certificate]:
        """CERTIFY each of ``xs`` ``(K, C, H, W)`` (pixels in [0,1]), packing their samples into shared
        batches; each certificate carries ``certify``'s (1 - alpha) guarantee.

        ``generators``: one per image (results then do not depend on which images are
        certified together), a single one shared in order, or None.
        """
        selection, estimation = self._draws(xs, n0, n, alpha, batch_size, generators)
        if selection.dim() != 2:
            raise InputError("this base scores several configurations; use certify_grid_batch")
        return [self._certificate(selection[i], estimation[i], n0, n, alpha) for i in range(xs.shape[0])]

    def certify_grid_batch(self, xs: Tensor, n0: int, n: int, alpha: float, batch_size: int,
                           generators: Generators = None) -> list[list[Certificate]]:
        """CERTIFY each of ``xs`` under every configuration of a grid base (``defenses.Grid``, whose
        scores are ``(B, configurations, num_classes)``), from one noise stream.

        Each configuration keeps its own counts: its class is selected on its n0 selection counts
        and bounded on its n estimation counts, so its certificate is exactly the one a separate
        run with the same generators gives, and a (1 - alpha) statement on its own.  Choosing the
        best configuration per image afterwards is not covered by that guarantee.
        Returns ``certificates[i][k]`` for image i, configuration k.
        """
        selection, estimation = self._draws(xs, n0, n, alpha, batch_size, generators)
        if selection.dim() != 3:
            raise InputError("certify_grid_batch needs a grid base returning (B, configurations, num_classes) scores")
        return [[self._certificate(selection[i, k], estimation[i, k], n0, n, alpha) for k in range(selection.shape[1])]
                for i in range(xs.shape[0])]

    def _draws(self, xs: Tensor, n0: int, n: int, alpha: float, batch_size: int,
               generators: Generators) -> tuple[Tensor, Tensor]:
        """CERTIFY's two draws (selection, estimation counts), its settings checked first."""
        check_images(xs, "xs")
        validate.whole(n0, "n0", 1, validate.MAX_SAMPLES)
        validate.whole(n, "n", 1, validate.MAX_SAMPLES)
        validate.alpha(alpha)
        validate.whole(batch_size, "batch_size")
        gens = per_image_generators(generators, xs.shape[0])
        # Selection: guess the top class from n0 samples.
        selection = self.sample_counts(xs, n0, batch_size, gens).cpu()
        # Estimation: a fresh, independent draw of n samples bounds its probability.
        estimation = self.sample_counts(xs, n, batch_size, gens).cpu()
        return selection, estimation

    def _certificate(self, selection: Tensor, estimation: Tensor, n0: int, n: int, alpha: float) -> Certificate:
        """CERTIFY's decision from one image's selection and estimation counts (num_classes,)."""
        c_a = int(selection.argmax())
        counts = estimation.tolist()
        p_b_upper = None
        if self.bound == "separate-pb":
            # p_A and every other class bounded together at a shared alpha.
            p_lower, p_b_upper = separate_pb_bounds(counts, c_a, alpha)
        else:
            p_lower = clopper_pearson_lower(counts[c_a], n, alpha)
        radius = decide(p_lower, self.sigma, p_b_upper)
        return Certificate(prediction=None if radius is None else c_a, radius=radius or 0.0, p_lower=p_lower,
                           selected_class=c_a, n_a=counts[c_a], n0=n0, n=n, alpha=alpha, sigma=self.sigma,
                           counts=tuple(counts), selection_counts=tuple(selection.tolist()), p_b_upper=p_b_upper,
                           bound=self.bound)

    # -- sequential CERTIFY -----------------------------------------------------

    def certify_sequential(self, x: Tensor, n0: int, n_max: int, alpha: float, batch_size: int,
                           generator: torch.Generator | None = None,
                           options: SequentialOptions = SequentialOptions()) -> SequentialCertificate:
        """Sequential CERTIFY of one image ``x`` ``(C, H, W)`` in [0,1]; see ``certify_sequential_batch``."""
        return self.certify_sequential_batch(_one_image(x, "certify_sequential_batch"), n0, n_max, alpha, batch_size,
                                             [generator], options)[0]

    def certify_sequential_batch(self, xs: Tensor, n0: int, n_max: int, alpha: float, batch_size: int,
                                 generators: Generators = None,
                                 options: SequentialOptions = SequentialOptions()) -> list[SequentialCertificate]:
        """CERTIFY each of ``xs`` ``(K, C, H, W)`` (pixels in [0,1]) with as few samples as the bound allows.

        As in ``certify_batch``, the class is selected on ``n0`` samples; the estimation draw that
        follows (fresh samples from the same generator) is taken in looks of ``options.n_first *
        options.ratio^j`` samples up to ``n_max`` (``stats.look_schedule``), and each image stops
        at the first look where the question of ``options`` (``sequential.SequentialOptions``: the
        largest radius, or "radius >= r" for given radii) is settled.

        Guarantee: ``p_lower`` is read from an anytime-valid (1 - alpha) lower confidence
        sequence (``stats.sequential_lower``), valid at whatever look the counts make the image
        stop; so with probability at least 1 - alpha, ``g`` predicts ``prediction`` on the l2
        ball of ``radius``.  All the radii of fixed-radius mode read that one bound, so their
        decisions hold together at 1 - alpha, with no split of alpha.  Stopping only ever
        withholds a claim, so the stopping rules spend no alpha.

        Packing: in each round every running image draws its next chunk and the chunks share
        forward batches of ``batch_size``; images that stop leave the rounds.  An image's noise
        depends only on its generator and the settings, not on the other images.  With
        ``shard``, every process takes the same decisions from the reduced counts.
        """
        return [per_image[0] for per_image in self._sequential(xs, n0, n_max, alpha, batch_size, generators,
                                                               options, grid=False)]

    def certify_sequential_grid_batch(self, xs: Tensor, n0: int, n_max: int, alpha: float, batch_size: int,
                                      generators: Generators = None,
                                      options: SequentialOptions = SequentialOptions()) -> list[list[SequentialCertificate]]:
        """Sequential CERTIFY of each of ``xs`` under every configuration of a grid base, from one noise
        stream: ``certificates[i][k]`` for image i, configuration k.

        Each configuration selects its class on its own ``n0`` counts and stops by its own counts;
        an image draws its next look while any of its configurations runs (one purification of a
        noisy batch serves them all; a base with ``only``, as ``Grid``, computes just the configurations
        still running: no purification once only RS runs), and a configuration that stopped ignores
        what is drawn after, so its certificate is exactly the one ``certify_sequential_batch`` gives it alone with the
        same generators, a (1 - alpha) statement on its own.  Needs a base whose scores depend on
        each noisy image alone (no noise drawn per call, as DiffSmooth's ``local_noise="fresh"``).
        """
        return self._sequential(xs, n0, n_max, alpha, batch_size, generators, options, grid=True)

    def _sequential(self, xs: Tensor, n0: int, n_max: int, alpha: float, batch_size: int, generators: Generators,
                    options: SequentialOptions, grid: bool) -> list[list[SequentialCertificate]]:
        check_images(xs, "xs")
        validate.whole(n0, "n0", 1, validate.MAX_SAMPLES)
        validate.whole(n_max, "n_max", 1, validate.MAX_SAMPLES)
        validate.alpha(alpha)
        validate.whole(batch_size, "batch_size")
        if not isinstance(options, SequentialOptions):
            raise InputError(f"options must be a SequentialOptions, got {type(options).__name__}")
        schedule = look_schedule(n_max, alpha, n_first=options.n_first, ratio=options.ratio)
        rule = StopRule(options, lambda p_lower: decide(p_lower, self.sigma))
        gens = per_image_generators(generators, xs.shape[0])

        def counts(rows: list[int], num: int, configs: tuple[int, ...] | None = None) -> Tensor:
            """(len(rows), configurations, num_classes) counts of ``num`` fresh samples per image; a grid
            base computes only ``configs`` (None: all, as the selection draw needs; the others' counts
            are meaningless) where it can."""
            index = torch.tensor(rows, dtype=torch.long, device=xs.device)
            only = getattr(self.base, "only", None) if grid and configs is not None else None
            with only(configs) if only is not None else contextlib.nullcontext():
                drawn = self.sample_counts(xs[index], num, batch_size, [gens[i] for i in rows]).cpu()
            if (drawn.dim() == 3) != grid:
                raise InputError("certify_sequential_grid_batch needs a grid base; certify_sequential_batch a plain one")
            return drawn if grid else drawn[:, None]

        # Selection: guess the top class from n0 samples (per configuration of a grid).
        selection = counts(list(range(xs.shape[0])), n0)
        selected = selection.argmax(dim=-1).tolist()
        # Estimation: fresh samples, in looks, until each question is settled.
        looked = estimate_in_looks(counts, selected, self.num_classes, schedule, rule)
        return [[self._sequential_certificate(image, selected[i][k], selection[i, k], n0, n_max, alpha, schedule,
                                              options) for k, image in enumerate(per_image)]
                for i, per_image in enumerate(looked)]

    def _sequential_certificate(self, image: Looked, c_a: int, selection: Tensor, n0: int, n_max: int, alpha: float,
                                schedule: LookSchedule, options: SequentialOptions) -> SequentialCertificate:
        radius = decide(image.p_lower, self.sigma)
        return SequentialCertificate(
            prediction=None if radius is None else c_a, radius=radius or 0.0, p_lower=image.p_lower,
            selected_class=c_a, n_a=int(image.counts[c_a]), n0=n0, n=schedule.sizes[len(image.successes) - 1],
            alpha=alpha, sigma=self.sigma, counts=tuple(image.counts.tolist()),
            selection_counts=tuple(selection.tolist()), n_max=n_max, looks=len(image.successes),
            stop=image.stop, radii=tuple((r, radius is not None and radius >= r) for r in options.radii or ()))

    # -- PREDICT --------------------------------------------------------------

    def predict(self, x: Tensor, n: int, alpha: float, batch_size: int,
                generator: torch.Generator | None = None) -> Prediction:
        """PREDICT for one image ``x`` ``(C, H, W)`` in [0,1]; abstains with probability
        at most alpha of returning a class other than ``g(x)``."""
        return self.predict_batch(_one_image(x, "predict_batch"), n, alpha, batch_size, [generator])[0]

    def predict_batch(self, xs: Tensor, n: int, alpha: float, batch_size: int,
                      generators: Generators = None) -> list[Prediction]:
        """PREDICT for each of ``xs`` ``(K, C, H, W)`` (pixels in [0,1]), packing samples into shared
        batches: the top class of ``n`` samples unless the two-sided binomial test of the top two
        counts has p-value above ``alpha`` (abstain)."""
        check_images(xs, "xs")
        validate.whole(n, "n", 1, validate.MAX_SAMPLES)
        validate.alpha(alpha)
        validate.whole(batch_size, "batch_size")
        gens = per_image_generators(generators, xs.shape[0])
        counts = self.sample_counts(xs, n, batch_size, gens).cpu()
        predictions = []
        for row in counts:
            top2 = torch.topk(row, 2)
            n1, n2 = int(top2.values[0]), int(top2.values[1])
            p_value = binomial_test_pvalue(n1, n1 + n2, 0.5)
            predictions.append(Prediction(prediction=int(top2.indices[0]) if p_value <= alpha else None,
                                          p_value=p_value, n=n, alpha=alpha, counts=tuple(row.tolist())))
        return predictions
