"""Noise samples and their class counts: per-image generators, packing into batches, sharding.

Noise for image i is drawn from its own generator, chunk by chunk, in chunks whose sizes
depend only on ``(num, batch_size)``; forward batches pack the chunks of several images
when ``num`` is small.  So an image's counts depend on its generator and ``batch_size``
only, not on which images share its batches.  Processes that share each image's samples
(``shard``) draw ``shard_share`` of them each, from their own streams, and sum the counts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from diffsmooth.validate import InputError

Base = Callable[[Tensor], Tensor]
"""Maps noisy images ``(B, C, H, W)`` to scores ``(B, num_classes)`` or labels ``(B,)``; a grid
base (``defenses.Grid``) to scores ``(B, configurations, num_classes)``."""

Generators = torch.Generator | Sequence[torch.Generator | None] | None
"""One generator per image, a single one shared in order, or None (torch's default one)."""


def generator_for(seed: int, idx: int, device: torch.device | str, rank: int | None = None) -> torch.Generator:
    """The noise generator of image ``idx`` under run seed ``seed``, on ``device``.

    ``rank``: the process's rank when several processes share each image's samples
    (``--split-samples``); each then draws from its own stream.
    """
    entropy = [int(seed), int(idx)] + ([] if rank is None else [int(rank)])
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state) & (2**63 - 1))


def per_image_generators(generators: Generators, k: int) -> list[torch.Generator | None]:
    """``k`` generators from one per image, a single one shared in order, or None (the default one)."""
    if generators is None or isinstance(generators, torch.Generator):
        return [generators] * k
    gens = list(generators)
    if len(gens) != k:
        raise InputError(f"generators must hold one generator per image: got {len(gens)} for {k} images")
    return gens


def shard_share(num: int, rank: int, world_size: int) -> int:
    """Samples that process ``rank`` of ``world_size`` draws out of ``num``: ``num // world_size``,
    plus one for the first ``num % world_size`` ranks, so the shares add up to ``num``."""
    return num // world_size + (1 if rank < num % world_size else 0)


def check_shard(shard: object, reduce_counts: object) -> tuple[int, int] | None:
    """``(rank, world_size)`` or None, refusing a shard whose counts are never summed."""
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


class Sampler:
    """Draws ``h(x_i + d)``, ``d ~ N(0, sigma^2 I)`` in [0,1] pixel space, and counts the classes.

    Args:
        base: see ``Base``; ``nn.Module`` bases should be in eval mode.
        num_classes: number of classes of ``h``.
        sigma: the smoothing noise's standard deviation (checked by the caller).
        reduce_counts: applied to every count tensor before it is returned, e.g. an all-reduce
            that adds the counts of processes sharing each image's samples; identity when None.
        shard: ``(rank, world_size)`` when ``world_size`` processes share each image's samples.
    """

    def __init__(self, base: Base, num_classes: int, sigma: float,
                 reduce_counts: Callable[[Tensor], Tensor] | None = None,
                 shard: tuple[int, int] | None = None) -> None:
        self.base = base
        self.num_classes = num_classes
        self.sigma = sigma
        self.reduce_counts = reduce_counts
        self.shard = check_shard(shard, reduce_counts)
        self._nonfinite: Tensor | None = None  # on-device flag: did the base return NaN/inf scores?

    def counts(self, xs: Tensor, num: int, batch_size: int, generators: Sequence[torch.Generator | None]) -> Tensor:
        """Class counts of ``h(x_i + d)`` over ``num`` noise draws per image.

        Args:
            xs: ``(K, C, H, W)`` images in [0,1].
            num: noise samples per image, over all shards (this process draws its share).
            batch_size: largest number of noisy images per call of ``base``.
            generators: K generators (or None for the default one), one per image.
        Returns:
            ``(K, num_classes)`` int64 counts on ``xs.device`` (``(K, configurations, num_classes)``
            for a grid base), after ``reduce_counts``.
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

    def _count_batch(self, xs: Tensor, pending: list[tuple[int, int]],
                     generators: Sequence[torch.Generator | None], counts: Tensor) -> None:
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
