"""Pieces shared by the training loops: data, batches, learning rate, RNG, checkpoint folders, and
the epoch loop of the classifier and denoiser trainers (``run_epochs``) with what it returns."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffsmooth.data import DatasetInfo, load_dataset
from diffsmooth.files import resolve_device  # noqa: F401  (re-exported for the trainers)
from diffsmooth.training.state import TrainState, git_commit, resume_state, save_state, trained_seconds
from diffsmooth.validate import InputError


def load_train_tensors(dataset: str, data_dir: str | Path | None, split: str = "train",
                       limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor, DatasetInfo]:
    """All images (N, C, H, W) float32 in [0,1], labels (N,) int64 and the dataset's info."""
    ds = load_dataset(dataset, split=split, data_dir=data_dir)
    if hasattr(ds, "tensors"):
        images, labels = ds.tensors()
    else:
        items = [ds[i] for i in range(len(ds) if limit is None else min(limit, len(ds)))]
        images = torch.stack([im for im, _ in items])
        labels = torch.tensor([lab for _, lab in items], dtype=torch.long)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels, ds.info


def checkpoint_folder(out: Path, checkpoint_dir: str | Path | None) -> Path:
    """Where a run keeps its resumable state: ``checkpoint_dir``, by default ``<out>.train`` beside ``out``."""
    return Path(checkpoint_dir) if checkpoint_dir is not None else out.with_name(out.name + ".train")


def seeded_generators(seed: int, device: torch.device) -> dict[str, torch.Generator]:
    """A run's two random streams: ``"order"`` (data order, on the CPU) seeded with ``seed`` and
    ``"noise"`` (all training noise, on ``device``) seeded with ``seed + 1``."""
    return {"order": torch.Generator().manual_seed(seed),
            "noise": torch.Generator(device=device).manual_seed(seed + 1)}


def batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches of one shuffled epoch (the last, smaller batch is dropped if n > batch)."""
    order = torch.randperm(n, generator=generator)
    full = n // batch_size if n >= batch_size else 1
    for i in range(full):
        yield order[i * batch_size:(i + 1) * batch_size]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return n // batch_size if n >= batch_size else 1


def cosine_lr(base_lr: float, step: int, total: int, warmup: int = 0) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay from ``base_lr`` to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    frac = (step - warmup) / max(total - warmup, 1)
    return base_lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@contextlib.contextmanager
def global_rng_from(generator: torch.Generator, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNG from ``generator`` for the block, restoring the caller's state after.

    Layers such as dropout draw from the global RNG; seeding it once per epoch/pass from our
    saved generator makes a resumed run replay exactly what the uninterrupted run did.
    """
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        yield


@dataclass(frozen=True)
class EpochPlan:
    """How ``run_epochs`` trains: the schedule and where the resumable state goes.

    Attributes:
        epochs: epochs in total (all runs); the cosine learning rate falls from ``lr`` to 0 over them.
        num_images, batch_size: each epoch is one shuffled pass over ``num_images`` in batches
            (see ``batches``).
        checkpoint_dir: the folder of the state written after every epoch.
        device: the training device (its global RNG is seeded per epoch, see ``global_rng_from``).
        resume: continue from the state in ``checkpoint_dir`` (same config required).
        stop_after: end this call after that many epochs (None: train to ``epochs``).
        quiet, desc: no progress bar; the bar's label.
    """

    epochs: int
    num_images: int
    batch_size: int
    lr: float
    checkpoint_dir: Path
    device: torch.device
    resume: bool = False
    stop_after: int | None = None
    quiet: bool = False
    desc: str = ""


@dataclass
class EpochRun:
    """Where an epoch-based training stands after ``run_epochs``: steps and epochs done (all runs),
    mean loss of each epoch of this run, and wall seconds of this run and of all runs together."""

    step: int
    epoch: int
    history: list[float]
    seconds_this_run: float
    seconds_total: float

    def summary(self, epochs: int) -> dict[str, Any]:
        """What a model trained for ``epochs`` records about its training run in its saved JSON."""
        return {"finished": self.epoch >= epochs, "git_commit": git_commit(), "epochs_done": self.epoch,
                "steps_done": self.step, "train_seconds_this_run": self.seconds_this_run,
                "train_seconds_total": self.seconds_total,
                "final_epoch_loss": self.history[-1] if self.history else None, "torch": torch.__version__}


@dataclass
class TrainResult:
    """What ``train_classifier`` and ``train_denoiser`` return.

    ``path``: the saved weights; ``model``: the trained model (eval mode); ``history``: mean loss
    per epoch of this run; ``info``: the training record saved beside the weights."""

    path: Path
    model: nn.Module
    history: list[float]
    info: dict[str, Any]


def run_epochs(loss_of: Callable[[torch.Tensor, int], torch.Tensor], state: TrainState,
               plan: EpochPlan) -> EpochRun:
    """The epoch loop the classifier and denoiser trainers share.

    Each epoch draws a shuffled order of ``plan.num_images`` from ``state.generators["order"]``
    (torch's global RNG seeded from it for the epoch, see ``global_rng_from``); per batch of indices
    ``idx`` (long (B,)) it sets the cosine learning rate, takes ``loss = loss_of(idx, epoch)`` (a
    finite scalar, or ``RuntimeError``) and one step of ``state.optimizer``. After every epoch
    ``state`` goes to ``plan.checkpoint_dir`` (``save_state``, with the wall seconds of all runs).
    """
    from tqdm.auto import tqdm

    model, optimizer, order = state.model, state.optimizer, state.generators["order"]
    total = steps_per_epoch(plan.num_images, plan.batch_size) * plan.epochs
    step, epoch, history, before = 0, 0, [], 0.0
    if plan.resume:
        before = trained_seconds(plan.checkpoint_dir)
        step, epoch = resume_state(plan.checkpoint_dir, state)
    started, first_epoch = time.time(), epoch
    bar = tqdm(total=total, initial=step, disable=plan.quiet, desc=plan.desc, unit="step", dynamic_ncols=True)
    while epoch < plan.epochs and (plan.stop_after is None or epoch - first_epoch < plan.stop_after):
        model.train()
        running, count = 0.0, 0
        with global_rng_from(order, plan.device):
            for idx in batches(plan.num_images, plan.batch_size, order):
                set_lr(optimizer, cosine_lr(plan.lr, step, total))
                loss = loss_of(idx, epoch)
                if not torch.isfinite(loss):
                    raise InputError(f"the loss became {float(loss.detach())} at step {step} (training diverged); lower --lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                running, count = running + float(loss.detach()), count + 1
                bar.set_postfix(epoch=epoch + 1, loss=f"{running / count:.4f}")
                bar.update(1)
        epoch += 1
        history.append(running / max(count, 1))
        save_state(plan.checkpoint_dir, state, step=step, epoch=epoch, extra={"loss": history[-1]},
                   train_seconds=before + time.time() - started)
    bar.close()
    seconds = time.time() - started
    return EpochRun(step, epoch, history, round(seconds, 1), round(before + seconds, 1))
