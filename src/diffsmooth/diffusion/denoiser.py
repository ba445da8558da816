"""One-shot diffusion purification (Carlini et al. 2023; DiffSmooth's first stage).

Randomized smoothing feeds ``x~ = x + d``, ``d ~ N(0, sigma^2 I)`` in [0,1] pixels. In model
space that is ``x' = 2 x~ - 1 = x0 + 2d``: a noise level of ``2 sigma``. Scaling by
``sqrt(abar_t*)`` turns it into a valid DDPM state ``x_t*`` (no further noise is drawn: ``d``
already is the noise), where t* is the first step whose level reaches ``2 sigma``. One
network call predicts epsilon and gives the posterior-mean estimate of ``x0``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from diffsmooth import validate
from diffsmooth.diffusion.presets import DiffusionModel
from diffsmooth.validate import InputError


class OneShotDenoiser(nn.Module):
    """Purifier ``D``: noisy images (B, C, H, W) in [0,1] pixels -> purified images in [0,1].

    Steps (model space is [-1,1]):
        x' = 2 x~ - 1;  x_t = sqrt(abar*) x';
        eps = first C channels of unet(x_t, t*)   (t* rescaled to t* 1000/T where the
                                                   checkpoint expects it);
        x0 = clip((x_t - sqrt(1 - abar*) eps) / sqrt(abar*), -1, 1);  return (x0 + 1) / 2.

    Inputs are checked for rank and channel count only: a noisy image
    ``x + d`` legitimately leaves [0,1], so its range is not checked. Device and dtype
    follow the input; move the module with ``.to()`` like any other.

    Args:
        model: a ``DiffusionModel`` (``load_diffusion_model``, ``build_preset``).
        sigma: the smoothing noise in [0,1] pixel units; > 0 and within the schedule.
    """

    def __init__(self, model: DiffusionModel, sigma: float) -> None:
        super().__init__()
        self.unet = model.unet
        self.model = model
        self._sigma = float(sigma)
        self._t_star = model.schedule.t_star(self._sigma)

    @property
    def sigma(self) -> float:
        """Smoothing noise in [0,1] pixel units."""
        return self._sigma

    @property
    def t_star(self) -> int:
        """The schedule step matched to ``sigma`` (before any timestep rescaling)."""
        return self._t_star

    @property
    def effective_sigma(self) -> float:
        """The pixel-space noise level step t* stands for (>= sigma, close to it)."""
        return self.model.schedule.effective_sigma(self._t_star)

    @property
    def in_channels(self) -> int:
        return self.model.in_channels

    def describe(self) -> dict[str, Any]:
        """JSON-able description recorded with results."""
        return {
            "type": type(self).__name__,
            "mode": "one-shot",
            "name": self.model.name,
            "sigma": self._sigma,
            "t_star": self._t_star,
            "network_timestep": float(self.model.network_timesteps(torch.tensor([self._t_star]))[0]),
            "effective_sigma": self.effective_sigma,
            "schedule": self.model.schedule.to_dict(),
            "rescale_timesteps": self.model.rescale_timesteps,
            "sha256": self.model.sha256,
            "pixel_range": "[0,1] in and out; [-1,1] inside the model",
        }

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) noisy images in [0,1] pixel units (values outside allowed) -> (B, C, H, W) in [0,1]."""
        self._check(x)
        c, schedule = self.model.in_channels, self.model.schedule
        # x~ = x + d already holds the noise: scaled into model space it is a valid x_t*.
        x_t = schedule.q_sample(2.0 * x - 1.0, self._t_star)
        t = torch.full((x.shape[0],), self._t_star, dtype=torch.long, device=x.device)
        eps = self.unet(x_t, self.model.network_timesteps(t))[:, :c]
        x0 = schedule.predict_x0(x_t, self._t_star, eps).clamp(-1.0, 1.0)
        return (x0 + 1.0) / 2.0

    def _check(self, x: Tensor) -> None:
        # Rank and channels only: noisy inputs x + d legitimately leave [0,1], and a finiteness
        # check would cost a host synchronisation per batch (the certifier checks the clean images).
        c = self.model.in_channels
        if x.dim() != 4 or x.shape[1] != c:
            raise InputError(f"the denoiser expects noisy images (B, {c}, H, W), got shape {tuple(x.shape)}; "
                             f"pass {c}-channel images in [0,1] plus noise")

    def extra_repr(self) -> str:
        return f"name={self.model.name!r}, sigma={self._sigma}, t_star={self._t_star}"


REVERSE_CHAINS = ("ddim", "ddpm")


class MultiStepDenoiser(OneShotDenoiser):
    """Purifier running the reverse chain from t* down to 0 in ``steps`` respaced steps.

    The chain visits ``steps`` timesteps evenly spaced from t* to 0 (rounded, t* first). At
    each step x0 is predicted as in ``OneShotDenoiser`` (clipped to [-1,1]); the state then
    moves to the next timestep s by
      - ``"ddim"`` (deterministic, eta = 0): ``x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s) eps``
        with eps re-derived from the clipped x0;
      - ``"ddpm"`` (stochastic): a draw from the posterior q(x_s | x_t, x0) of the respaced
        chain, with noise from ``generator`` (on the input's device; the default generator
        when None).
    The x0 prediction at the last timestep is returned, in [0,1]. ``steps=1`` is one-shot.
    """

    def __init__(self, model: DiffusionModel, sigma: float, steps: int, method: str = "ddim") -> None:
        super().__init__(model, sigma)
        validate.choice(method, "reverse-chain method", REVERSE_CHAINS)
        # At most one network call per schedule step from t* down to 0.
        steps = validate.whole(steps, f"steps (t*={self._t_star} for sigma={sigma})", 1, self._t_star + 1)
        self.steps, self.method = steps, method
        spaced = torch.linspace(float(self._t_star), 0.0, steps, dtype=torch.float64).round().long()
        self.timesteps = [int(t) for t in spaced]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "mode": f"multi-step-{self.method}", "steps": self.steps,
                "timesteps": list(self.timesteps)}

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:  # type: ignore[override]
        """x (B, C, H, W) noisy images in [0,1] pixels -> (B, C, H, W) purified in [0,1]."""
        self._check(x)
        c, schedule = self.model.in_channels, self.model.schedule
        x_t = schedule.q_sample(2.0 * x - 1.0, self._t_star)
        for i, t in enumerate(self.timesteps):
            steps_t = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
            eps = self.unet(x_t, self.model.network_timesteps(steps_t))[:, :c]
            x0 = schedule.predict_x0(x_t, t, eps).clamp(-1.0, 1.0)
            if i == len(self.timesteps) - 1:
                break
            prev_t = self.timesteps[i + 1]
            if self.method == "ddim":
                # The noise that the clipped x0 implies, carried to the next visited step.
                x_t = schedule.q_sample(x0, prev_t, schedule.predict_eps(x_t, t, x0))
            else:
                mean, std = schedule.posterior(x_t, t, x0, prev_t)
                noise = torch.randn(x_t.shape, generator=generator, device=x.device, dtype=x.dtype)
                x_t = mean + std * noise
        return (x0 + 1.0) / 2.0
