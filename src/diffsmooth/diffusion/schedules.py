"""DDPM noise schedules: the cumulative products ``abar_t`` and the sigma <-> t* map.

A schedule holds no weights and a model holds no schedule (diffusers' split). The
forward process in model space ([-1,1]) is ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``;
dividing by ``sqrt(abar_t)`` gives ``x_0 + eps * sqrt(1 - abar_t) / sqrt(abar_t)``, i.e. a
noise level of ``sqrt(1 - abar_t) / sqrt(abar_t)`` in [-1,1] space, half of that in [0,1]
pixel space. Randomized smoothing noise ``sigma`` (pixels) therefore corresponds to the
first ``t`` whose model-space level reaches ``2 * sigma``.

Betas are computed in float64 with numpy, the way improved- and guided-diffusion do,
so that ``t_star`` reproduces the reference tables to the step.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch

from diffsmooth import validate
from diffsmooth.validate import InputError


def _linear_betas(schedule: "NoiseSchedule") -> np.ndarray:
    # improved/guided-diffusion scale the 1000-step endpoints so any T gives the same process.
    scale = 1000.0 / schedule.num_timesteps
    start = schedule.beta_start if schedule.beta_start is not None else scale * 1e-4
    end = schedule.beta_end if schedule.beta_end is not None else scale * 0.02
    return np.linspace(start, end, schedule.num_timesteps, dtype=np.float64)


def _cosine_betas(schedule: "NoiseSchedule") -> np.ndarray:
    # Nichol & Dhariwal (2021): abar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2), s = 0.008,
    # discretised as betas capped at 0.999 to avoid the singularity at t = T.
    def abar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    steps = schedule.num_timesteps
    return np.array(
        [min(1.0 - abar((i + 1) / steps) / abar(i / steps), 0.999) for i in range(steps)],
        dtype=np.float64,
    )


_BETAS: dict[str, Callable[["NoiseSchedule"], np.ndarray]] = {
    "linear": _linear_betas,
    "cosine": _cosine_betas,
}


@dataclass(frozen=True)
class NoiseSchedule:
    """A discrete DDPM schedule with ``num_timesteps`` steps ``t = 0 .. T-1``.

    Args:
        name: ``"linear"`` (betas ``linspace(1e-4 * 1000/T, 0.02 * 1000/T)``, as in
            improved/guided-diffusion) or ``"cosine"`` (improved-diffusion, s = 0.008,
            betas capped at 0.999).
        num_timesteps: T, the number of training steps (4000 for improved CIFAR-10,
            1000 for guided ImageNet and diffusers DDPM).
        beta_start, beta_end: override the linear endpoints (diffusers configs state them);
            ``None`` keeps the T-scaled defaults. Ignored by ``"cosine"``.
    """

    name: str
    num_timesteps: int
    beta_start: float | None = None
    beta_end: float | None = None

    def __post_init__(self) -> None:
        validate.choice(self.name, "noise schedule", sorted(_BETAS))
        # Canonical int (a numpy integer from a config would not survive to_dict's JSON).
        object.__setattr__(self, "num_timesteps", validate.whole(self.num_timesteps, "num_timesteps", 2))

    @property
    def betas(self) -> torch.Tensor:
        """Betas, float64, shape (T,)."""
        return torch.from_numpy(_BETAS[self.name](self))

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """``abar_t = prod_{s <= t} (1 - beta_s)``, float64, shape (T,), decreasing in (0, 1)."""
        return torch.from_numpy(np.cumprod(1.0 - _BETAS[self.name](self), axis=0))

    def noise_levels(self) -> torch.Tensor:
        """Model-space ([-1,1]) noise level ``sqrt(1 - abar_t) / sqrt(abar_t)`` per t, float64 (T,)."""
        abar = self.alphas_cumprod
        return torch.sqrt(1.0 - abar) / torch.sqrt(abar)

    def t_star(self, sigma: float) -> int:
        """The first t with ``sqrt(1 - abar_t) / sqrt(abar_t) >= 2 * sigma``.

        ``sigma`` is the smoothing noise in [0,1] pixel space; the factor 2 converts it
        to the model's [-1,1] space. Raises ``InputError`` for ``sigma <= 0`` or a sigma
        larger than the schedule's last step reaches.
        """
        sigma = validate.sigma(sigma)
        levels = self.noise_levels()
        reached = torch.nonzero(levels >= 2.0 * float(sigma))
        if reached.numel() == 0:
            raise InputError(
                f"sigma={sigma} is beyond this {self.name} schedule (its largest pixel-space noise is "
                f"{float(levels[-1]) / 2:.4g}); use a smaller sigma or a schedule with more noise"
            )
        return int(reached[0, 0])

    def effective_sigma(self, t: int) -> float:
        """The pixel-space sigma that step t corresponds to: ``sqrt(1 - abar_t) / (2 sqrt(abar_t))``."""
        t = validate.whole(t, "timestep t", 0, self.num_timesteps - 1)
        return float(self.noise_levels()[t]) / 2.0

    # -- the forward process and its inverse, in model space [-1,1] --------------------------------

    def q_sample(self, x0: torch.Tensor, t: int | torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` for images ``x0`` (B, C, H, W) in [-1,1].

        ``t``: one step (int) or one per image (long tensor (B,)); ``eps`` (B, C, H, W) standard
        normal, or None to only scale (one-shot purification: the smoothing noise already is eps).
        Coefficients come from float64 and are applied in ``x0``'s dtype on its device.
        """
        a, s = self._coefficients(t, x0)
        return a * x0 if eps is None else a * x0 + s * eps

    def predict_x0(self, x_t: torch.Tensor, t: int | torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The clean image the noise estimate ``eps`` implies: ``(x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``
        (model space, unclipped); ``t`` as in ``q_sample``."""
        a, s = self._coefficients(t, x_t)
        return (x_t - s * eps) / a

    def predict_eps(self, x_t: torch.Tensor, t: int | torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """The noise that takes ``x0`` to ``x_t``: ``(x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)`` (model space)."""
        a, s = self._coefficients(t, x_t)
        return (x_t - a * x0) / s

    def posterior(self, x_t: torch.Tensor, t: int, x0: torch.Tensor, s: int) -> tuple[torch.Tensor, float]:
        """Mean and standard deviation of ``q(x_s | x_t, x0)`` for an earlier step ``s < t`` of a
        respaced chain (its beta is ``1 - abar_t / abar_s``): the DDPM reverse step's Gaussian."""
        # Python floats through the compile-constant accessor: reading the cached numpy array here
        # made torch.compile fail its own guard on the DensePure base (torch 2.14.1).
        abar_t, abar_s = _alpha_cumprod_at(self, int(t)), _alpha_cumprod_at(self, int(s))
        beta = 1.0 - abar_t / abar_s
        mean = (math.sqrt(abar_s) * beta / (1.0 - abar_t)) * x0 + (
            math.sqrt(1.0 - beta) * (1.0 - abar_s) / (1.0 - abar_t)) * x_t
        return mean, math.sqrt(beta * (1.0 - abar_s) / (1.0 - abar_t))

    def _coefficients(self, t: int | torch.Tensor, like: torch.Tensor) -> tuple[Any, Any]:
        if isinstance(t, torch.Tensor):
            abar = _alphas_cumprod(self)
            picked = torch.from_numpy(abar).to(like.device)[t.to(like.device)]
            shape = (-1,) + (1,) * (like.dim() - 1)
            return picked.sqrt().to(like.dtype).view(shape), (1 - picked).sqrt().to(like.dtype).view(shape)
        # Python floats: the scaling then runs in the input's dtype on its device.
        value = _alpha_cumprod_at(self, int(t))
        return math.sqrt(value), math.sqrt(1.0 - value)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields; ``from_dict`` inverts it."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "NoiseSchedule":
        known = {"name", "num_timesteps", "beta_start", "beta_end"}
        unknown = set(data) - known
        if unknown or "name" not in data or "num_timesteps" not in data:
            raise InputError(
                f"bad schedule description {data!r}; expected keys name, num_timesteps "
                "(optional beta_start, beta_end)"
            )
        return cls(**data)


@functools.lru_cache(maxsize=16)
def _alphas_cumprod(schedule: NoiseSchedule) -> np.ndarray:
    return np.cumprod(1.0 - _BETAS[schedule.name](schedule), axis=0)


@torch.compiler.assume_constant_result
def _alpha_cumprod_at(schedule: NoiseSchedule, t: int) -> float:
    """``abar_t`` as a Python float; a constant to ``torch.compile`` (no tracing into the cache)."""
    return float(_alphas_cumprod(schedule)[t])


def list_schedules() -> list[str]:
    """Names accepted by ``NoiseSchedule(name=...)``."""
    return sorted(_BETAS)
