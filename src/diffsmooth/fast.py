"""A fast path for base classifiers: reduced precision, channels-last, torch.compile, CUDA graphs.

``accelerate(base, ...)`` wraps any base ``h`` (``Gaussian``, ``DenoisedSmoothing``,
``DiffSmooth``, a bare classifier) and keeps its call contract: noisy images
``(B, C, H, W)`` in [0,1] pixel space (plus noise, so values leave [0,1]) -> scores
``(B, num_classes)`` in float32.  Everything it changes is recorded by ``describe()`` for
the results manifest, because a certificate is a statement about the base that ran.

- ``precision``: ``"float32"`` (exact, the default everywhere), or ``"bfloat16"`` /
  ``"float16"`` autocast.  Reduced precision may flip the label of a sample that sits on
  a decision boundary; the certificate is still sound for the base that ran (the
  reduced-precision one), which is why the precision goes into the manifest.
- ``channels_last``: converts the 4-d weights *in place* and feeds NHWC inputs, the
  layout tensor cores and oneDNN prefer for convolutions.
- ``compile``: ``torch.compile`` with ``dynamic=False`` (``True`` or a mode name).
- ``cuda_graphs``: captures one forward per batch shape and replays it, removing the
  per-kernel launch cost that dominates small networks.
- ``workers``: on the CPU, splits each call into row blocks run by single-threaded workers
  (``diffsmooth.workers``): no OpenMP barriers inside a forward.  Eager bases whose rows are
  independent only (``rows_independent``: no noise drawn per call).

Compiled code and graphs are specialised to one batch shape (the run's batch size, so that it
compiles once); shorter calls run eagerly, or padded where a CUDA graph must replay; calls are split into a
static batch (the ``static_batch`` argument, or else the largest batch seen so far):
the last rows are repeated and their outputs dropped.  Rows of a base never interact
(eval-mode normalisation, per-image attention), so the real rows are unaffected.

``auto_batch_size`` picks the largest batch that fits the free CUDA memory by probing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from diffsmooth import validate
from diffsmooth.validate import InputError
from diffsmooth.workers import RowWorkers

PRECISIONS: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class FastConfig:
    """How ``accelerate`` runs a base (saved in the manifest through ``describe()``).

    Attributes:
        precision: "float32", "bfloat16" or "float16" (autocast).
        channels_last: NHWC weights and inputs.
        compile: None (eager) or a ``torch.compile`` mode from ``COMPILE_MODES``.
        cuda_graphs: capture and replay one CUDA graph per batch shape (CUDA inputs only).
        static_batch: pad every call to this many rows (split larger ones); None pads to the
            largest batch seen so far when ``compile`` or ``cuda_graphs`` is on, else never.
        workers: row blocks of a CPU call run concurrently on single-threaded workers (1: off).
    """

    precision: str = "float32"
    channels_last: bool = False
    compile: str | None = None
    cuda_graphs: bool = False
    static_batch: int | None = None
    workers: int = 1

    def __post_init__(self) -> None:
        validate.choice(self.precision, "precision", PRECISIONS)
        if self.compile is not None:
            validate.choice(self.compile, "compile mode", COMPILE_MODES)
        if self.static_batch is not None:
            validate.whole(self.static_batch, "static_batch")
        validate.whole(self.workers, "workers")
        if self.workers > 1 and self.fixed_shapes:
            raise InputError(f"{self.workers} CPU workers run a base eagerly on row blocks of each call; "
                             "drop the workers or the compilation, CUDA graphs and static batch")

    @property
    def fixed_shapes(self) -> bool:
        """Whether calls are padded to one batch size."""
        return self.static_batch is not None or self.compile is not None or self.cuda_graphs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pad_batch(x: Tensor, size: int) -> Tensor:
    """``x`` (B, ...) with B <= size, extended to (size, ...) by repeating its last row.

    Repeating a real row rather than zeros keeps the padding inside the input range the
    model was built for (no extreme activations, no NaN from degenerate normalisation).
    """
    b = x.shape[0]
    if b > size:
        raise InputError(f"cannot pad a batch of {b} down to {size} rows; split it first")
    if b == size:
        return x
    return torch.cat([x, x[-1:].expand(size - b, *x.shape[1:])])


class _GraphedForward:
    """One CUDA graph of ``fn`` at a fixed input shape; calls copy in, replay, copy out."""

    def __init__(self, fn: Callable[[Tensor], Tensor], example: Tensor, warmup: int = 3) -> None:
        self.static_in = example.clone()
        device = example.device
        side = torch.cuda.Stream(device)
        # Warm-up on a side stream, as capture requires: lazy initialisation (cuBLAS handles,
        # autotuning, cached local noise) must not happen inside the graph.
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn(self.static_in)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_out = fn(self.static_in)

    def __call__(self, x: Tensor) -> Tensor:
        self.static_in.copy_(x)
        self.graph.replay()
        # The output buffer is overwritten by the next replay.
        return self.static_out.clone()


class FastBase(nn.Module):
    """``base`` run as ``config`` says; same contract: (B, C, H, W) noisy pixels -> (B, K) float32 scores."""

    def __init__(self, base: nn.Module, config: FastConfig) -> None:
        super().__init__()
        self.base = base
        self.config = config
        self.dtype = PRECISIONS[config.precision]
        self._static = config.static_batch
        self._graphs: dict[tuple, _GraphedForward] = {}
        self._forward: Callable[[Tensor], Tensor] = self._eager
        self._rows = RowWorkers(config.workers)
        if config.compile is not None:
            mode = None if config.compile == "default" else config.compile
            self._forward = torch.compile(self._eager, mode=mode, dynamic=False)

    def _eager(self, x: Tensor) -> Tensor:
        if self.dtype is None:
            out = self.base(x)
        else:
            # No weight-cast cache: a cache entry made during graph capture would be stale later.
            with torch.autocast(device_type=x.device.type, dtype=self.dtype, cache_enabled=False):
                out = self.base(x)
        return out.float() if out.is_floating_point() else out

    def _run(self, x: Tensor) -> Tensor:
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if not (self.config.cuda_graphs and x.is_cuda):
            return self._forward(x)
        key = (tuple(x.shape), x.dtype, x.device)
        if key not in self._graphs:
            if self.config.static_batch is None:
                self._graphs.clear()  # the static size grew: the smaller graph is never replayed again
            self._graphs[key] = _GraphedForward(self._forward, x)
        return self._graphs[key](x)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise InputError(f"expected a batch of noisy images (B, C, H, W), got shape {tuple(x.shape)}")
        b = x.shape[0]
        if not self.config.fixed_shapes:
            return self._rows(self._run, x)
        if self._static is None or (self.config.static_batch is None and b > self._static):
            self._static = b
        size = self._static
        outs = []
        for i in range(0, b, size):
            chunk = x[i:i + size]
            if chunk.shape[0] == size or (self.config.cuda_graphs and x.is_cuda):
                # Graph replay needs the captured shape: a short chunk is padded to it.
                outs.append(self._run(pad_batch(chunk, size))[: chunk.shape[0]])
            else:
                # A short chunk runs eagerly rather than padded (or compiled anew for its shape).
                outs.append(self._eager(chunk.contiguous(memory_format=torch.channels_last)
                                        if self.config.channels_last else chunk))
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def only(self, active: Sequence[int]) -> contextlib.AbstractContextManager:
        """A grid base's ``only`` (compute only some configurations) where the inner base has one and
        runs eagerly; compiled or graphed bases compute every configuration (their captured work)."""
        inner = getattr(self.base, "only", None)
        if inner is None or self.config.compile is not None or self.config.cuda_graphs:
            return contextlib.nullcontext()
        return inner(active)

    @property
    def num_configurations(self) -> int | None:
        """A grid base's configuration count (scores (B, configurations, K)), else None."""
        return getattr(self.base, "num_configurations", None)

    @property
    def static_batch(self) -> int | None:
        """The batch size calls are padded to (None until the first call fixes it, or if unpadded)."""
        return self._static

    @property
    def workers(self) -> int:
        """CPU row-block workers (1: none)."""
        return self.config.workers

    def describe(self) -> dict[str, Any]:
        """The base's description plus the settings it ran with that could change its scores: row-block
        workers change none (the run's manifest records them under ``environment``), so a base with
        only workers is described as the base itself."""
        inner = dict(self.base.describe()) if hasattr(self.base, "describe") else {"type": type(self.base).__name__}
        if replace(self.config, workers=1) == FastConfig() and self._static is None:
            return inner
        settings = {**self.config.to_dict(), "static_batch": self._static}
        del settings["workers"]
        return {**inner, "precision": self.config.precision, "acceleration": settings}


def accelerate(
    base: nn.Module,
    *,
    precision: str = "float32",
    channels_last: bool = False,
    compile: bool | str = False,
    cuda_graphs: bool = False,
    static_batch: int | None = None,
    workers: int = 1,
) -> FastBase:
    """The fast path of ``base``: same call contract, settings recorded by ``describe()``.

    Args:
        base: an ``nn.Module`` mapping noisy images (B, C, H, W) (pixels in [0,1] plus noise)
            to scores (B, K) or labels (B,); put it in eval mode and on its device first.
            ``channels_last`` converts its weights in place.
        precision: "float32" (exact; the default, and the right choice on CPU), "bfloat16" or
            "float16" autocast (CUDA; bf16 also works on CPUs with bf16 instructions).
        channels_last: NHWC memory layout for weights and inputs.
        compile: ``torch.compile`` it: True for the default mode, or a mode name.
        cuda_graphs: replay one captured CUDA graph per batch shape (ignored for CPU inputs).
            Needs a base without host synchronisation or per-call host randomness in forward
            (DiffSmooth's fixed local noise is fine; its "fresh" noise uses a host-side seed
            only once, which graphs would freeze, so that combination is refused).
        static_batch: pad calls to this many rows; by default the largest batch seen so far
            when compiling or graphing.
        workers: on the CPU, run each call as this many row blocks on single-threaded workers
            (``diffsmooth.workers``); needs an eager base whose ``rows_independent`` is not False.

    Returns:
        ``FastBase``: (B, C, H, W) -> (B, K) float32 scores (labels stay integer).
    """
    if not isinstance(base, nn.Module):
        raise InputError(f"accelerate needs an nn.Module base, got {type(base).__name__}; wrap functions in a Module")
    if isinstance(compile, str):
        mode: str | None = compile
    else:
        mode = "default" if compile else None
    if cuda_graphs and getattr(base, "local_noise", None) == "fresh":
        raise InputError("cuda_graphs would replay the same 'fresh' local noise on every call; "
                         "use local_noise='fixed' or turn cuda_graphs off")
    if workers > 1 and getattr(base, "rows_independent", True) is False:
        raise InputError("this base draws noise per call (--method densepure or --local-noise fresh), so row blocks "
                         "on CPU workers would change its rows; use one worker")
    config = FastConfig(precision, bool(channels_last), mode, bool(cuda_graphs), static_batch, workers)
    if channels_last:
        base.to(memory_format=torch.channels_last)
    return FastBase(base, config)


def _largest_fitting(fits: Callable[[int], bool], max_batch: int, multiple: int = 8, refine: int = 4) -> int:
    """The largest batch ``b <= max_batch`` with ``fits(b)``, assuming fitting is monotone.

    Doubles from 1 until a probe fails, then bisects the last interval ``refine`` times on
    multiples of ``multiple``.  Returns 0 when not even one row fits.
    """
    good, bad = 0, None
    b = 1
    while True:
        if fits(b):
            good = b
            if b >= max_batch:
                return good
            b = min(2 * b, max_batch)
        else:
            bad = b
            break
    for _ in range(refine):
        mid = (good + bad) // 2
        if mid >= multiple:
            mid -= mid % multiple
        if mid <= good or mid >= bad:
            break
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


def auto_batch_size(
    base: Callable[[Tensor], Tensor],
    image_shape: tuple[int, int, int],
    device: torch.device | str,
    *,
    max_batch: int = 4096,
    fraction: float = 0.85,
    cpu_default: int = 256,
    multiple: int = 8,
) -> int:
    """The largest batch of noisy images the base can take at once on ``device``.

    On CUDA, probes forwards on random inputs (C, H, W) = ``image_shape`` at doubling, then
    bisected sizes, and keeps the largest whose peak memory stays within ``fraction`` of the
    memory that was free (plus what PyTorch's cache already holds) and that does not raise
    ``torch.cuda.OutOfMemoryError``.  Probe an uncompiled base with the precision and layout
    you will run (compilation specialises to each probed shape).  On other devices returns
    ``min(max_batch, cpu_default)``: there memory is rarely the limit and larger batches stop
    paying off early.

    Raises ``InputError`` when not even one image fits.
    """
    device = torch.device(device)
    if max_batch < 1 or not 0.0 < fraction <= 1.0:
        raise InputError(f"max_batch must be >= 1 and fraction in (0, 1], got {max_batch} and {fraction}")
    if device.type != "cuda":
        return min(max_batch, cpu_default)
    torch.cuda.synchronize(device)
    free, _ = torch.cuda.mem_get_info(device)
    baseline = torch.cuda.memory_allocated(device)
    budget = fraction * (free + torch.cuda.memory_reserved(device) - baseline)

    def fits(b: int) -> bool:
        x = torch.rand((b, *image_shape), device=device)
        torch.cuda.reset_peak_memory_stats(device)
        try:
            with torch.inference_mode():
                base(x)
            torch.cuda.synchronize(device)
            return torch.cuda.max_memory_allocated(device) - baseline <= budget
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            del x
            torch.cuda.empty_cache()

    best = _largest_fitting(fits, max_batch, multiple)
    if best == 0:
        raise InputError(f"not even one image of shape {tuple(image_shape)} fits in the free memory of {device}; "
                         "free GPU memory or use a smaller model")
    return best
