"""DDPM training of our ADM UNet: epsilon prediction, MSE, optionally focused timesteps, EMA, AdamW.

The objective (Ho et al. 2020, "simple" loss): for x_0 in [-1,1] model space, t ~ p(t)
and eps ~ N(0, I), minimize ``|| eps - unet(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t) ||^2``.
p(t) is uniform on {0..T-1} by default. With a focus range (``focus_sigmas``), a fixed fraction
of the draws falls uniformly on the steps t*(sigma_lo)..t*(sigma_hi) that one-shot purification
at those smoothing sigmas uses, the rest uniformly on the other steps (``timestep_probabilities``).
Every t keeps a positive probability and the per-t minimiser of the loss is the same
(E[eps | x_t] at each t), so the network stays a valid epsilon-prediction DDPM over all t;
only the share of training signal per t changes (Nichol & Dhariwal 2021 reweight t similarly).
Only the first C output channels are trained (the epsilon half when the UNet also has
variance channels); one-shot purification needs nothing else. The EMA weights are what
``train_diffusion`` saves with ``save_diffusion_model``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffsmooth import validate
from diffsmooth.diffusion.adm import adm_unet
from diffsmooth.diffusion.checkpoints import save_diffusion_model
from diffsmooth.diffusion.schedules import NoiseSchedule
from diffsmooth.training.loop import (
    batches,
    checkpoint_folder,
    cosine_lr,
    global_rng_from,
    load_train_tensors,
    resolve_device,
    seeded_generators,
    set_lr,
)
from diffsmooth.training.state import TrainState, git_commit, resume_state, save_state, trained_seconds
from diffsmooth.validate import InputError


@dataclass(frozen=True)
class DiffusionTrainConfig:
    """A DDPM training run (saved in checkpoints and in the model's config.json ``extra``).

    Attributes:
        variant, num_channels, channel_mult, num_res_blocks, attention_resolutions, num_heads,
            dropout, learn_sigma: official ADM flags of the UNet (``image_size`` and
            ``in_channels`` come from the dataset).
        schedule, diffusion_steps: the noise schedule (``cosine`` or ``linear``, T steps).
        steps, batch_size, lr, weight_decay, warmup_steps: AdamW, linear warm-up then cosine decay.
        ema: decay of the exponential moving average of the weights.
        amp: bf16 autocast on CUDA (ignored on CPU).
        norm_groups: GroupNorm groups of the UNet (None = the official 32).
        focus_sigmas: ``"lo,hi"`` smoothing sigmas in [0,1] pixel units whose t* range gets
            ``focus_fraction`` of the timestep draws (None = uniform timesteps).
        focus_fraction: share of draws in the focus range, in (0, 1); required with ``focus_sigmas``.
        train_limit: train on the first N training images only (e.g. hold out the rest for pilots).
    """

    dataset: str = "fashion-mnist"
    variant: str = "improved"
    num_channels: int = 32
    channel_mult: str = "1,2,2"
    num_res_blocks: int = 1
    attention_resolutions: str = "7"
    num_heads: int = 1
    dropout: float = 0.0
    learn_sigma: bool = False
    schedule: str = "cosine"
    diffusion_steps: int = 1000
    steps: int = 5000
    batch_size: int = 64
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    ema: float = 0.999
    amp: bool = False
    seed: int = 0
    data_dir: str | None = None
    train_limit: int | None = None
    # None defaults: checkpoints written before these settings existed resume unchanged.
    norm_groups: int | None = None
    focus_sigmas: str | None = None
    focus_fraction: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        validate.whole(self.steps, "--steps")
        validate.whole(self.batch_size, "--batch-size")
        if not 0 <= self.ema < 1:
            raise InputError(f"--ema must be in [0, 1), got {self.ema}")
        validate.optimizer(self.lr, self.weight_decay)
        validate.seed(self.seed, "--seed")
        if self.norm_groups is not None:
            validate.whole(self.norm_groups, "--norm-groups")
        validate.whole(self.warmup_steps, "--warmup-steps", 0)
        validate.limit(self.train_limit, "--train-limit")
        for flag, value in (("--num-channels", self.num_channels), ("--num-res-blocks", self.num_res_blocks),
                            ("--num-heads", self.num_heads), ("--diffusion-steps", self.diffusion_steps)):
            validate.whole(value, flag)
        if not 0 <= self.dropout < 1:
            raise InputError(f"--dropout must be in [0, 1), got {self.dropout}")
        if (self.focus_sigmas is None) != (self.focus_fraction is None):
            raise InputError("--focus-sigmas and --focus-fraction go together; give both or neither")
        if self.focus_sigmas is not None:
            self.focus_range()

    def focus_range(self) -> tuple[float, float] | None:
        """``focus_sigmas`` parsed as (lo, hi) pixel-space sigmas, or None."""
        if self.focus_sigmas is None:
            return None
        try:
            lo, hi = (float(p) for p in str(self.focus_sigmas).split(","))
        except ValueError:
            raise InputError(f"--focus-sigmas must be two sigmas 'lo,hi' like '0.12,1.0', got "
                             f"{self.focus_sigmas!r}") from None
        return lo, hi

    def unet_flags(self, image_size: int, in_channels: int) -> dict[str, Any]:
        """The official flags that ``adm_unet(variant, **flags)`` builds this UNet from."""
        flags = {"image_size": image_size, "in_channels": in_channels, "num_channels": self.num_channels,
                 "channel_mult": self.channel_mult, "num_res_blocks": self.num_res_blocks,
                 "attention_resolutions": self.attention_resolutions, "num_heads": self.num_heads,
                 "dropout": self.dropout, "learn_sigma": self.learn_sigma, "use_scale_shift_norm": True}
        if self.norm_groups is not None:
            flags["norm_groups"] = self.norm_groups
        return flags


def timestep_probabilities(schedule: NoiseSchedule, focus_sigmas: tuple[float, float] | None = None,
                           focus_fraction: float | None = None) -> torch.Tensor:
    """The distribution p(t) that DDPM training draws timesteps from: (T,) float64, sums to 1.

    Without ``focus_sigmas``: uniform, 1/T each. With ``focus_sigmas = (lo, hi)`` (smoothing
    sigmas in [0,1] pixel units): the K steps ``t*(lo) .. t*(hi)`` (inclusive, t* from
    ``schedule.t_star``) share ``focus_fraction`` of the mass uniformly (each ``f / K``) and the
    other T - K steps share the rest (each ``(1 - f) / (T - K)``). ``0 < f < 1`` keeps every t
    reachable; if the range covers all T steps the result is uniform.
    """
    num = schedule.num_timesteps
    if focus_sigmas is None:
        return torch.full((num,), 1.0 / num, dtype=torch.float64)
    lo, hi = focus_sigmas
    if not 0 < lo < hi:
        raise InputError(f"--focus-sigmas needs 0 < lo < hi, got {lo:g},{hi:g}")
    if focus_fraction is None or not 0 < focus_fraction < 1:
        raise InputError(f"--focus-fraction must be in (0, 1) so that every timestep stays reachable, "
                         f"got {focus_fraction}")
    t_lo, t_hi = schedule.t_star(lo), schedule.t_star(hi)
    inside = t_hi - t_lo + 1
    if inside == num:
        return torch.full((num,), 1.0 / num, dtype=torch.float64)
    probs = torch.full((num,), (1.0 - focus_fraction) / (num - inside), dtype=torch.float64)
    probs[t_lo:t_hi + 1] = focus_fraction / inside
    return probs


def sample_timesteps(num_timesteps: int, count: int, generator: torch.Generator, device: torch.device,
                     t_probs: torch.Tensor | None = None) -> torch.Tensor:
    """``count`` timesteps (int64, on ``device``) drawn i.i.d. from ``t_probs`` ((T,), e.g.
    ``timestep_probabilities``), or uniformly from {0..T-1} when it is None."""
    if t_probs is None:
        return torch.randint(0, num_timesteps, (count,), generator=generator, device=device)
    return torch.multinomial(t_probs.to(device=device, dtype=torch.float64), count, replacement=True,
                             generator=generator)


def ddpm_loss(unet: nn.Module, x0: torch.Tensor, schedule: NoiseSchedule,
              generator: torch.Generator, t_probs: torch.Tensor | None = None) -> torch.Tensor:
    """The simple DDPM loss on a batch.

    Args:
        x0: (B, C, H, W) clean images in [-1,1] model space.
        schedule: the noise schedule; its ``q_sample`` makes x_t (coefficients from float64, cast to x0's dtype).
        generator: draws t ~ p(t) and eps ~ N(0, I) on x0's device.
        t_probs: (T,) p(t) from ``timestep_probabilities``; None = uniform U{0..T-1}.

    Returns:
        scalar mean over pixels of (eps - eps_hat)^2, eps_hat the first C output channels.
    """
    b, c = x0.shape[:2]
    t = sample_timesteps(schedule.num_timesteps, b, generator, x0.device, t_probs)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    pred = unet(schedule.q_sample(x0, t, eps), t)[:, :c]
    return torch.mean((pred.float() - eps.float()) ** 2)


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter (buffers copied)."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach(), 1 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


@dataclass
class DiffusionTrainResult:
    """``path``: the saved model directory; ``ema``: the EMA UNet; ``history``: mean loss per logged window."""

    path: Path
    ema: nn.Module
    history: list[float]
    info: dict[str, Any]


def train_diffusion(config: DiffusionTrainConfig, out: str | Path, *, checkpoint_dir: str | Path | None = None,
                    device: str | torch.device = "cpu", resume: bool = False, quiet: bool = False,
                    checkpoint_every: int = 500, stop_after: int | None = None) -> DiffusionTrainResult:
    """Train ``config.steps`` AdamW steps; checkpoint every ``checkpoint_every`` steps and at the end
    into ``checkpoint_dir`` (default ``<out>.train``); save the EMA model to ``out`` with
    ``save_diffusion_model`` (config.json + model.safetensors). ``resume`` continues the run;
    ``stop_after`` ends this call after that many steps (at a checkpoint: make it a multiple of
    ``checkpoint_every``), saving the model marked ``"finished": false``."""
    from tqdm.auto import tqdm

    config.validate()
    validate.whole(checkpoint_every, "--checkpoint-every")
    if stop_after is not None and validate.whole(stop_after, "--stop-after") % checkpoint_every:
        # a later --resume continues from the last checkpoint: stopping between two would lose steps
        raise InputError(f"--stop-after {stop_after} must be a multiple of --checkpoint-every {checkpoint_every} "
                         "(a resume continues from a checkpoint); change either")
    dev = resolve_device(device)
    out = Path(out)
    ckpt = checkpoint_folder(out, checkpoint_dir)
    images, _, info = load_train_tensors(config.dataset, config.data_dir, "train", config.train_limit)
    flags = config.unet_flags(info.image_size, info.channels)
    schedule = NoiseSchedule(config.schedule, config.diffusion_steps)
    focus = config.focus_range()
    t_probs = None if focus is None else timestep_probabilities(schedule, focus, config.focus_fraction).to(dev)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
        torch.manual_seed(config.seed)
        model = adm_unet(config.variant, **flags).to(dev)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    state = TrainState(model, optimizer, seeded_generators(config.seed, dev), config.to_dict(), ema)
    order_gen, noise_gen = state.generators["order"], state.generators["noise"]
    step = 0
    before = 0.0  # wall seconds of the earlier runs of this training
    if resume:
        before = trained_seconds(ckpt)
        step, _ = resume_state(ckpt, state)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=config.amp and dev.type == "cuda")
    started, history, window, first_step = time.time(), [], [], step
    last = config.steps if stop_after is None else min(config.steps, step + stop_after)
    bar = tqdm(total=config.steps, initial=step, disable=quiet, desc="ddpm", unit="step", dynamic_ncols=True)

    def checkpoint() -> None:
        save_state(ckpt, state, step=step, epoch=0, extra={"loss": history[-1] if history else None},
                   train_seconds=before + time.time() - started)

    model.train()
    # An "epoch" is one shuffled pass; the order generator alone decides it, so a resumed run
    # replays the data order from its saved state. Mid-epoch resumes start a fresh pass.
    while step < last:
        with global_rng_from(order_gen, dev):
            for idx in batches(len(images), config.batch_size, order_gen):
                x0 = images[idx].to(dev) * 2 - 1
                set_lr(optimizer, cosine_lr(config.lr, step, config.steps, config.warmup_steps))
                with autocast:
                    loss = ddpm_loss(model, x0, schedule, noise_gen, t_probs)
                if not torch.isfinite(loss):
                    raise InputError(f"the loss became {float(loss.detach())} at step {step} (training diverged); lower --lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                ema_update(ema, model, config.ema)
                step += 1
                window.append(float(loss.detach()))
                bar.set_postfix(loss=f"{sum(window[-100:]) / len(window[-100:]):.4f}")
                bar.update(1)
                if step % 100 == 0 or step >= last:
                    history.append(sum(window) / len(window))
                    window = []
                if step % checkpoint_every == 0 or step >= last:
                    checkpoint()
                    break  # start the next pass from the checkpointed generator state
    bar.close()
    info_out = {"task": "diffusion", "finished": step >= config.steps, "steps_this_run": step - first_step,
                "dataset": config.dataset, "config": config.to_dict(),
                "git_commit": git_commit(), "steps_done": step, "final_loss": history[-1] if history else float("nan"),
                "train_seconds_this_run": round(time.time() - started, 1),
                "train_seconds_total": round(before + time.time() - started, 1), "torch": torch.__version__}
    path = save_diffusion_model(out, ema.eval(), config.variant, flags, schedule, rescale_timesteps=False,
                                extra=info_out)
    return DiffusionTrainResult(path, ema, history, info_out)
