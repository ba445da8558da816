"""Training a DnCNN denoiser for Denoised Smoothing (Salman et al., NeurIPS 2020).

Objectives, on noisy images ``x + d``, ``d ~ N(0, sigma^2 I)`` in [0,1] pixels (noise drawn fresh
every batch from a seeded generator):
- ``mse``: ``|| D(x + d) - x ||^2`` averaged over pixels (their "denoising" objective);
- ``stability``: cross-entropy of a frozen classifier f on ``D(x + d)`` against f's prediction
  on the clean x (their "stability" objective; f in eval mode, no gradient to its weights);
- ``mse+stability``: MSE for the first ``mse_epochs`` epochs, then stability (their best
  recipe: a denoiser trained with MSE, fine-tuned with the stability objective).
Adam with a cosine learning rate; a resumable state after every epoch; the final model with
``save_denoiser`` (``out.safetensors`` + ``out.json``) recording the test MSE and, with a
classifier, f's accuracy on denoised noisy test images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diffsmooth import validate
from diffsmooth.denoisers import PRESETS, DnCNN, create_dncnn, load_denoiser, save_denoiser
from diffsmooth.shipped import resolve_model
from diffsmooth.training import loop
from diffsmooth.training.loop import EpochPlan, TrainResult
from diffsmooth.training.state import TrainState
from diffsmooth.validate import InputError

OBJECTIVES = ("mse", "stability", "mse+stability")


def denoiser_mse_loss(denoiser: nn.Module, x: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Mean squared error of ``D(x + d)`` against the clean ``x`` (B, C, H, W) in [0,1]."""
    noisy = x + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return F.mse_loss(denoiser(noisy), x)


def denoiser_stability_loss(denoiser: nn.Module, classifier: nn.Module, x: torch.Tensor, sigma: float,
                            generator: torch.Generator) -> torch.Tensor:
    """Cross-entropy of the frozen ``classifier`` on ``D(x + d)`` against its own label for the clean ``x``."""
    with torch.no_grad():
        target = classifier(x).argmax(dim=1)
    noisy = x + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return F.cross_entropy(classifier(denoiser(noisy)), target)


@dataclass(frozen=True)
class DenoiserTrainConfig:
    """Everything that defines a denoiser training run (saved in checkpoints and the model JSON).

    Attributes:
        arch: ``"dncnn"`` (depth 17, width 64) or ``"dncnn-wide"`` (width 128); ``depth``/``width``
            override the preset (smaller denoisers for CPU budgets).
        objective: one of ``OBJECTIVES``; ``mse_epochs``: MSE epochs before stability for
            ``mse+stability`` (default: half of ``epochs``, at least 1).
        sigma: training noise in [0,1] pixel units (> 0).
        classifier: frozen classifier for the stability objective (a checkpoint path or a shipped
            name; default on fashion-mnist: the shipped clean classifier).
        init: a denoiser checkpoint to start from (ours or Salman et al.'s), e.g. an MSE-trained one.
        epochs, batch_size, lr, weight_decay: Adam with cosine decay to 0 (Salman et al.: Adam, lr 1e-3).
        seed: seeds the initialization, the data order and the noise.
        train_limit: use only the first N training images.
    """

    arch: str = "dncnn"
    dataset: str = "fashion-mnist"
    objective: str = "mse"
    sigma: float = 0.25
    classifier: str | None = None
    mse_epochs: int | None = None
    init: str | None = None
    depth: int | None = None
    width: int | None = None
    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    data_dir: str | None = None
    train_limit: int | None = None

    def validate(self) -> None:
        validate.choice(self.objective, "denoiser objective", OBJECTIVES)
        validate.choice(self.arch, "denoiser", PRESETS)
        validate.sigma(self.sigma, "--sigma")
        validate.whole(self.epochs, "--epochs")
        validate.whole(self.batch_size, "--batch-size")
        validate.optimizer(self.lr, self.weight_decay)
        validate.seed(self.seed, "--seed")
        validate.limit(self.train_limit, "--train-limit")
        if self.mse_epochs is not None and not (self.objective == "mse+stability" and 0 <= self.mse_epochs <= self.epochs):
            raise InputError(f"--mse-epochs applies to --objective mse+stability only and must lie in "
                             f"0..--epochs ({self.epochs}), got {self.mse_epochs}")

    def phase_switch(self) -> int:
        """The first epoch trained with the stability objective (``epochs`` when there is none)."""
        if self.objective == "mse":
            return self.epochs
        if self.objective == "stability":
            return 0
        return self.mse_epochs if self.mse_epochs is not None else max(1, self.epochs // 2)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _load_frozen_classifier(config: DenoiserTrainConfig, device: torch.device) -> nn.Module | None:
    from diffsmooth import shipped
    from diffsmooth.classifiers import load_classifier

    source = config.classifier
    if source is None:
        if config.objective == "mse":
            return None
        if config.dataset != "fashion-mnist":
            raise InputError(f"--objective {config.objective} needs --classifier for dataset {config.dataset!r}")
        path = shipped.shipped_classifier("clean")
    else:
        path = resolve_model(source, "--classifier")
    classifier = load_classifier(path).to(device).eval()
    return classifier.requires_grad_(False)


def _build(config: DenoiserTrainConfig, in_channels: int) -> DnCNN:
    if config.init is not None:
        model = load_denoiser(resolve_model(config.init, "--init"))
        if model.config.in_channels != in_channels:
            raise InputError(f"--init {config.init} denoises {model.config.in_channels}-channel images, "
                             f"{config.dataset} has {in_channels}; start from a matching denoiser")
        return model
    overrides = {k: v for k, v in (("depth", config.depth), ("width", config.width)) if v is not None}
    return create_dncnn(config.arch, in_channels, generator=torch.Generator().manual_seed(config.seed),
                        sigma=config.sigma, dataset=config.dataset, **overrides)


@torch.no_grad()
def evaluate_denoiser(denoiser: nn.Module, images: torch.Tensor, labels: torch.Tensor, sigma: float,
                      classifier: nn.Module | None = None, generator: torch.Generator | None = None,
                      batch_size: int = 500) -> dict[str, float]:
    """Test MSE of ``D(x + d)`` and of ``x + d`` against x, and f's accuracy on ``D(x + d)`` (with f).

    images (N, C, H, W) in [0,1], labels (N,); noise from ``generator`` on the denoiser's device.
    """
    denoiser.eval()
    device = next(denoiser.parameters()).device
    sq_denoised = sq_noisy = correct = 0.0
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device)
        noisy = x + sigma * torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)
        out = denoiser(noisy)
        sq_denoised += float(((out - x) ** 2).sum())
        sq_noisy += float(((noisy - x) ** 2).sum())
        if classifier is not None:
            correct += int((classifier(out).argmax(1).cpu() == labels[i:i + batch_size]).sum())
    pixels = max(images.numel(), 1)
    info = {"test_mse": sq_denoised / pixels, "test_mse_noisy_input": sq_noisy / pixels}
    if classifier is not None:
        info["denoised_noisy_test_accuracy"] = correct / max(len(images), 1)
    return info


def train_denoiser(config: DenoiserTrainConfig, out: str | Path, *, checkpoint_dir: str | Path | None = None,
                   device: str | torch.device = "cpu", resume: bool = False, quiet: bool = False,
                   eval_limit: int | None = None, stop_after: int | None = None) -> TrainResult:
    """Train, checkpoint every epoch, save ``out.safetensors`` + ``out.json``; see the module docstring.

    ``checkpoint_dir`` defaults to ``<out>.train/``; ``resume`` continues from it (same config,
    ``epochs`` may grow); ``eval_limit`` caps the test images of the recorded numbers;
    ``stop_after`` ends this call after that many epochs (the saved model says ``"finished": false``).
    """
    config.validate()
    validate.limit(eval_limit, "--eval-limit")
    dev = loop.resolve_device(device)
    out = Path(out)
    images, labels, info = loop.load_train_tensors(config.dataset, config.data_dir, "train", config.train_limit)
    model = _build(config, info.channels).to(dev)
    classifier = _load_frozen_classifier(config, dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    state = TrainState(model, optimizer, loop.seeded_generators(config.seed, dev), config.to_dict())
    noise_gen = state.generators["noise"]
    switch = config.phase_switch()

    def loss_of(idx: torch.Tensor, epoch: int) -> torch.Tensor:
        x = images[idx].to(dev)
        if epoch >= switch:
            return denoiser_stability_loss(model, classifier, x, config.sigma, noise_gen)
        return denoiser_mse_loss(model, x, config.sigma, noise_gen)

    plan = EpochPlan(config.epochs, len(images), config.batch_size, config.lr, loop.checkpoint_folder(out, checkpoint_dir),
                     dev, resume, stop_after, quiet, desc=f"{config.arch} {config.objective} sigma={config.sigma}")
    run = loop.run_epochs(loss_of, state, plan)
    test_x, test_y, _ = loop.load_train_tensors(config.dataset, config.data_dir, "test", eval_limit)
    model.eval()
    info_out = {
        "task": "denoiser", **run.summary(config.epochs), "objective": config.objective, "sigma": config.sigma,
        "config": config.to_dict(), "test_images": len(test_x),
        **evaluate_denoiser(model, test_x, test_y, config.sigma, classifier,
                            torch.Generator(device=dev).manual_seed(1234)),
    }
    if classifier is not None:
        info_out["classifier_sha256"] = getattr(classifier, "checkpoint_sha256", None)
    path = save_denoiser(out, model, info_out)
    return TrainResult(path, model, run.history, info_out)
