"""Training a base classifier f for randomized smoothing (any method in ``losses``).

``train_classifier(config, out)`` trains ``config.arch`` on ``config.dataset`` with the
loss ``config.method`` (noise drawn fresh every batch from a seeded ``torch.Generator``),
SGD with Nesterov momentum and a cosine learning rate, writes a resumable checkpoint at the
end of every epoch and finally the model with ``save_classifier`` (``out.safetensors`` +
``out.json``), recording the config, the git commit and the test accuracy clean and under noise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffsmooth import validate
from diffsmooth.classifiers import (
    Classifier,
    create_classifier,
    load_classifier,
    save_classifier,
)
from diffsmooth.shipped import resolve_model
from diffsmooth.training.loop import (
    EpochPlan,
    TrainResult,
    checkpoint_folder,
    load_train_tensors,
    resolve_device,
    run_epochs,
    seeded_generators,
)
from diffsmooth.training.losses import check_hparams
from diffsmooth.training.losses import LossInput, get_loss, loss_defaults
from diffsmooth.training.state import TrainState
from diffsmooth.validate import InputError


@dataclass(frozen=True)
class ClassifierTrainConfig:
    """Everything that defines a classifier training run (saved in checkpoints and the model JSON).

    Attributes:
        arch, dataset: registry names (``fmnist_cnn``, ``fashion-mnist`` ...).
        method: a name from ``list_losses()``; ``hparams`` overrides its defaults.
        sigma: training noise level in [0,1] pixel units (0: clean training).
        epochs, batch_size, lr, momentum, weight_decay: SGD (Nesterov) with cosine decay to 0.
        seed: seeds the data order and the noise generators.
        init: optional classifier checkpoint to start from (fine-tuning).
        purify: optional diffusion model (``load_diffusion_model`` source or a shipped name): every
            batch is replaced by purify(x + N(0, purify_sigma^2)) before the method's loss, whose own
            noise (``sigma``) comes on top: a purifier-aware local classifier for DiffSmooth, or with
            sigma 0 DDS's clean classifier fine-tuned on purified images.  The training info records
            the purifier's weights as ``purifier_sha256``.
        purify_draws: with ``purify``, purify K noise draws per training image once before training
            (``training.purified``) and give each image of a batch one of them; None: purify every
            batch afresh.  ``purify_cache``: a folder keeping those draws for later runs (where they
            are kept decides nothing: resuming ignores it, as it ignores the device).
        train_limit: use only the first N training images (tests, quick runs).
    """

    arch: str = "fmnist_cnn"
    dataset: str = "fashion-mnist"
    method: str = "gaussian"
    sigma: float = 0.25
    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    hparams: dict[str, float] = field(default_factory=dict)
    init: str | None = None
    purify: str | None = None
    purify_sigma: float | None = None
    purify_draws: int | None = None
    purify_cache: str | None = None
    data_dir: str | None = None
    train_limit: int | None = None

    def validate(self) -> None:
        get_loss(self.method)
        unknown = set(self.hparams) - set(loss_defaults(self.method))
        if unknown:
            raise InputError(f"{self.method} has no hyper-parameter(s) {', '.join(sorted(unknown))}; "
                             f"it takes: {', '.join(sorted(loss_defaults(self.method))) or 'none'}")
        check_hparams(self.hparams)
        validate.sigma(self.sigma, "--sigma", zero_ok=True)
        validate.optimizer(self.lr, self.weight_decay, self.momentum)
        validate.seed(self.seed, "--seed")
        validate.whole(self.epochs, "--epochs")
        validate.whole(self.batch_size, "--batch-size")
        validate.limit(self.train_limit, "--train-limit")
        if self.purify is not None and not (self.purify_sigma or self.sigma) > 0:
            raise InputError("--finetune-on-purified needs a noise level > 0: set --purify-sigma or --sigma")
        if self.purify_sigma is not None:
            validate.sigma(self.purify_sigma, "--purify-sigma")
        if self.purify_draws is not None:
            if self.purify is None:
                raise InputError("--purify-draws needs --finetune-on-purified DENOISER")
            validate.whole(self.purify_draws, "--purify-draws")
        if self.purify_cache is not None and self.purify_draws is None:
            raise InputError("--purify-cache keeps the draws of --purify-draws; give --purify-draws K too")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _purifier(config: ClassifierTrainConfig, device: torch.device):
    if config.purify is None:
        return None
    from diffsmooth.diffusion import OneShotDenoiser, load_diffusion_model

    sigma = config.purify_sigma or config.sigma
    model = load_diffusion_model(resolve_model(config.purify, "denoiser"))
    denoiser = OneShotDenoiser(model, sigma).to(device).eval()
    return denoiser.requires_grad_(False), sigma


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, sigma: float = 0.0,
             generator: torch.Generator | None = None, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` on images (N, C, H, W) in [0,1], with N(0, sigma^2) noise if sigma > 0."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device)
        if sigma > 0:
            x = x + sigma * torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)
        correct += int((model(x).argmax(1).cpu() == labels[i:i + batch_size]).sum())
    return correct / max(len(images), 1)


def _build(config: ClassifierTrainConfig, num_classes: int) -> Classifier:
    if config.init is not None:
        model = load_classifier(resolve_model(str(config.init), "--init"))
        if model.config.num_classes != num_classes:
            raise InputError(f"--init {config.init} has {model.config.num_classes} classes, "
                             f"{config.dataset} has {num_classes}; start from a matching classifier")
        return model
    return create_classifier(config.arch, num_classes, dataset=config.dataset)


def train_classifier(config: ClassifierTrainConfig, out: str | Path, *, checkpoint_dir: str | Path | None = None,
                     device: str | torch.device = "cpu", resume: bool = False, quiet: bool = False,
                     eval_limit: int | None = None, stop_after: int | None = None) -> TrainResult:
    """Train, checkpoint every epoch, save ``out.safetensors`` + ``out.json``; see the module docstring.

    ``checkpoint_dir`` defaults to ``<out>.train/``; with ``resume`` training continues from the
    checkpoint there (same config required, ``epochs`` may grow). ``eval_limit`` caps the test
    images used for the recorded accuracies. ``stop_after`` ends this call after that many
    epochs (time-sliced jobs); the model saved then is marked ``"finished": false``.
    """
    config.validate()
    validate.limit(eval_limit, "--eval-limit")
    dev = resolve_device(device)
    out = Path(out)
    images, labels, info = load_train_tensors(config.dataset, config.data_dir, "train", config.train_limit)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
        torch.manual_seed(config.seed)
        model = _build(config, info.num_classes).to(dev)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=config.momentum > 0)
    state = TrainState(model, optimizer, seeded_generators(config.seed, dev), config.to_dict())
    noise_gen = state.generators["noise"]
    loss_fn = get_loss(config.method)
    hparams = {**loss_defaults(config.method), **config.hparams}
    purifier = _purifier(config, dev)
    cached = None
    if purifier is not None and config.purify_draws is not None:
        from diffsmooth.training.purified import pick_draws, purified_draws

        denoiser, p_sigma = purifier
        cache = None if config.purify_cache is None else Path(config.purify_cache)
        cached = purified_draws(denoiser, images, p_sigma, config.purify_draws, config.seed, dev, cache,
                                purifier_id=denoiser.model.sha256)

    def loss_of(idx: torch.Tensor, epoch: int) -> torch.Tensor:
        x, y = images[idx].to(dev), labels[idx].to(dev)
        if cached is not None:
            x = pick_draws(cached, idx, state.generators["order"]).to(dev)
        elif purifier is not None:
            denoiser, p_sigma = purifier
            with torch.no_grad():
                x = denoiser(x + p_sigma * torch.randn(x.shape, generator=noise_gen, device=dev)).float()
        return loss_fn(LossInput(model, x, y, config.sigma, noise_gen, epoch), **hparams).loss

    plan = EpochPlan(config.epochs, len(images), config.batch_size, config.lr, checkpoint_folder(out, checkpoint_dir),
                     dev, resume, stop_after, quiet, desc=f"{config.method} sigma={config.sigma}")
    run = run_epochs(loss_of, state, plan)
    test_x, test_y, _ = load_train_tensors(config.dataset, config.data_dir, "test", eval_limit)
    eval_gen = torch.Generator(device=dev).manual_seed(1234)
    info_out = {
        "task": "classifier", **run.summary(config.epochs), "method": config.method, "sigma": config.sigma,
        "config": config.to_dict(), "hparams": hparams,
        "test_accuracy": accuracy(model, test_x, test_y), "test_images": len(test_x),
    }
    if purifier is not None:  # the name in ``config.purify`` may later load other weights: keep which ones
        info_out["purifier_sha256"] = purifier[0].model.sha256
    if config.sigma > 0:
        info_out["noisy_test_accuracy"] = accuracy(model, test_x, test_y, config.sigma, eval_gen)
    model.eval()
    path = save_classifier(out, model, info_out)
    return TrainResult(path, model, run.history, info_out)
