"""Training objectives for the base classifier f of randomized smoothing, by name.

Every loss takes ``(LossInput(model, x, y, sigma, generator, epoch), **hparams)`` with ``x``
(B, C, H, W) in [0,1] pixels and ``y`` (B,) int64 labels, draws its Gaussian noise **fresh on
every call** from ``generator`` (on ``x``'s device) and returns a ``LossOutput``. Noise is added
in [0,1] pixel space, where the certified radius is measured; normalization is the model's first
layer. A method's hyper-parameters are its loss's keyword-only parameters; their defaults (the
papers' CIFAR-10 values) are what ``loss_defaults`` reports.

Registered: ``gaussian`` (Cohen et al. 2019), ``smoothadv`` (Salman et al. 2019),
``consistency`` (Jeong & Shin 2020), ``macer`` (Zhai et al. 2020), ``smoothmix`` (Jeong et al. 2021).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from diffsmooth import validate
from diffsmooth.validate import InputError


@dataclass(frozen=True)
class LossInput:
    """What every training loss receives.

    Attributes:
        model: the classifier f being trained ([0,1] pixels -> logits).
        x: (B, C, H, W) images in [0,1]; y: (B,) int64 labels.
        sigma: the training noise level in [0,1] pixel units (0: clean, where the method allows it).
        generator: draws all of the loss's randomness, on ``x``'s device.
        epoch: the epoch being trained, from 0 (for ramps such as a warm-up).
    """

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    sigma: float
    generator: torch.Generator
    epoch: int = 0


@dataclass
class LossOutput:
    """``loss``: the scalar to minimize; ``parts``: its named terms as floats (for logging)."""

    loss: torch.Tensor
    parts: dict[str, float] = field(default_factory=dict)


LossFn = Callable[..., LossOutput]
_LOSSES: dict[str, LossFn] = {}


def register_loss(name: str) -> Callable[[LossFn], LossFn]:
    """Register ``fn(inputs: LossInput, *, **hparams) -> LossOutput`` as method ``name``; its
    keyword-only parameters, each with a default, are the method's hyper-parameters."""

    def decorate(fn: LossFn) -> LossFn:
        _LOSSES[name] = fn
        return fn

    return decorate


def list_losses() -> list[str]:
    """Registered training methods, sorted."""
    return sorted(_LOSSES)


def loss_defaults(name: str) -> dict[str, float]:
    """The default hyper-parameters of method ``name``: its loss's keyword-only parameters."""
    params = inspect.signature(get_loss(name)).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


HPARAM_BOUNDS: dict[str, tuple[str, float]] = {
    "m_train": ("whole", 1), "num_steps": ("whole", 1), "warmup": ("whole", 0),
    "lbd": ("minimum", 0.0), "eta": ("minimum", 0.0), "gamma": ("minimum", 0.0), "epsilon": ("minimum", 0.0),
    "beta": ("above", 0.0), "step_scale": ("above", 0.0),
}
"""The range of each method hyper-parameter: a whole number >= the bound, a finite number >= it, or > it."""


def check_hparams(hparams: dict[str, float]) -> None:
    """Refuse a hyper-parameter outside its range (``HPARAM_BOUNDS``), naming its option."""
    for name, value in hparams.items():
        kind, bound = HPARAM_BOUNDS[name]
        flag = "--" + name.replace("_", "-")
        if kind == "whole":
            validate.whole(value, flag, int(bound))
        elif kind == "minimum":
            validate.number(value, flag, minimum=bound)
        else:
            validate.number(value, flag, above=bound)


def get_loss(name: str) -> LossFn:
    """The loss function registered as ``name``; unknown names raise ``InputError``."""
    return _LOSSES[validate.choice(name, "training method", list_losses())]


def gaussian_noise(shape: torch.Size | tuple[int, ...], sigma: float, like: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
    """N(0, sigma^2) noise of ``shape`` on ``like``'s device and dtype, drawn from ``generator``."""
    return sigma * torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


def _ramp(epoch: int, warmup: int) -> float:
    """A linear warm-up factor: (epoch + 1) / warmup, at most 1 (epoch counts from 0)."""
    return min(1.0, (epoch + 1) / max(int(warmup), 1))


def _noisy_copies(x: torch.Tensor, m: int, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """(B*m, C, H, W): each image repeated m times (copies of one image adjacent) plus fresh noise."""
    rep = x.repeat_interleave(m, dim=0)
    return rep + gaussian_noise(rep.shape, sigma, rep, generator)


@register_loss("gaussian")
def gaussian_loss(inputs: LossInput) -> LossOutput:
    """Cohen et al.: cross-entropy of f(x + d), d ~ N(0, sigma^2 I) (sigma 0 = clean training)."""
    x, sigma = inputs.x, inputs.sigma
    noisy = x + gaussian_noise(x.shape, sigma, x, inputs.generator) if sigma > 0 else x
    loss = F.cross_entropy(inputs.model(noisy), inputs.y)
    return LossOutput(loss, {"ce": float(loss.detach())})


def consistency_terms(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Jeong & Shin's three terms from logits (B, m, K) of m noisy copies per image.

    Returns (mean cross-entropy over copies, mean over copies of KL(mean softmax || softmax_j),
    entropy of the mean softmax), each averaged over the batch.
    """
    b, m, k = logits.shape
    ce = F.cross_entropy(logits.reshape(b * m, k), y.repeat_interleave(m))
    log_p = F.log_softmax(logits, dim=-1)
    p_mean = log_p.exp().mean(dim=1)  # (B, K)
    log_mean = p_mean.clamp_min(1e-12).log()
    # KL(mean || p_j) = sum_k mean_k (log mean_k - log p_jk)
    kl = (p_mean.unsqueeze(1) * (log_mean.unsqueeze(1) - log_p)).sum(-1).mean()
    entropy = -(p_mean * log_mean).sum(-1).mean()
    return ce, kl, entropy


@register_loss("consistency")
def consistency_loss(inputs: LossInput, *, m_train: int = 2, lbd: float = 10.0, eta: float = 0.5) -> LossOutput:
    """Jeong & Shin: CE on m noisy copies + lbd * KL(mean || each) + eta * entropy(mean)."""
    m, x = int(m_train), inputs.x
    logits = inputs.model(_noisy_copies(x, m, inputs.sigma, inputs.generator)).view(x.shape[0], m, -1)
    ce, kl, ent = consistency_terms(logits, inputs.y)
    loss = ce + lbd * kl + eta * ent
    return LossOutput(loss, {"ce": float(ce.detach()), "kl": float(kl.detach()), "entropy": float(ent.detach())})


def macer_radius_term(logits: torch.Tensor, y: torch.Tensor, sigma: float, gamma: float,
                      beta: float) -> torch.Tensor:
    """MACER's robustness loss from logits (B, m, K) of m noisy copies per image.

    With p = mean_j softmax(beta * logits_j) and p_A, p_B its top two values, for the images
    whose top class is the label: (sigma / 2) * max(0, gamma - (Phi^-1(p_A) - Phi^-1(p_B))),
    summed and divided by the batch size B (the reference code's normalization).
    """
    p = F.softmax(beta * logits, dim=-1).mean(dim=1)
    top2, idx = p.topk(2, dim=-1)
    correct = idx[:, 0] == y
    normal = torch.distributions.Normal(torch.zeros((), device=p.device, dtype=p.dtype),
                                        torch.ones((), device=p.device, dtype=p.dtype))
    # p_A -> 1 would make Phi^-1 infinite; those images are far beyond the margin gamma anyway.
    eps = 1e-6 if p.dtype == torch.float64 else 1e-4
    top2 = top2.clamp(eps, 1 - eps)
    margin = normal.icdf(top2[:, 0]) - normal.icdf(top2[:, 1])
    hinge = torch.relu(gamma - margin) * correct
    return hinge.sum() * sigma / 2 / logits.shape[0]


@register_loss("macer")
def macer_loss(inputs: LossInput, *, m_train: int = 16, lbd: float = 12.0, gamma: float = 8.0,
               beta: float = 16.0) -> LossOutput:
    """Zhai et al.: CE of the soft smoothed classifier + lbd * radius hinge (see macer_radius_term)."""
    x, y, sigma = inputs.x, inputs.y, inputs.sigma
    if sigma <= 0:
        raise InputError("macer needs --sigma > 0; its radius term is sigma * (margin) / 2")
    m = int(m_train)
    logits = inputs.model(_noisy_copies(x, m, sigma, inputs.generator)).view(x.shape[0], m, -1)
    p_smooth = F.softmax(logits, dim=-1).mean(dim=1)
    ce = F.nll_loss(p_smooth.clamp_min(1e-12).log(), y)
    robust = macer_radius_term(logits, y, sigma, gamma, beta)
    return LossOutput(ce + lbd * robust, {"ce": float(ce.detach()), "radius": float(robust.detach())})


def smoothed_soft_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """-log of the soft smoothed classifier's probability of y, per image (B,).

    ``noise`` (B, m, C, H, W) are the m noise draws per image; the soft smoothed
    classifier is mean_j softmax(f(x + noise_j)).
    """
    b, m = noise.shape[:2]
    logits = model((x.unsqueeze(1) + noise).flatten(0, 1)).view(b, m, -1)
    p = F.softmax(logits, dim=-1).mean(dim=1)
    return -p.gather(1, y.view(-1, 1)).squeeze(1).clamp_min(1e-12).log()


def smoothadv_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor,
                     epsilon: float, num_steps: int) -> torch.Tensor:
    """Salman et al.'s l2 PGD on the soft smoothed classifier with fixed noise draws.

    Args:
        x: (B, C, H, W) in [0,1]; noise: (B, m, C, H, W), kept fixed during the attack.
        epsilon: l2 radius in [0,1] pixel units; step size 2 * epsilon / num_steps.

    Returns:
        x_adv (B, C, H, W) in [0,1] with ||x_adv - x||_2 <= epsilon per image.
    """
    if epsilon <= 0 or num_steps <= 0:
        return x.detach()
    was_training = model.training
    model.eval()  # the attack must not move BatchNorm statistics
    step = 2 * epsilon / num_steps
    x = x.detach()
    delta = torch.zeros_like(x)
    for _ in range(num_steps):
        delta.requires_grad_(True)
        with torch.enable_grad():  # the attack needs gradients even when called for evaluation
            loss = smoothed_soft_loss(model, x + delta, y, noise).sum()
            (grad,) = torch.autograd.grad(loss, delta)
        norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        delta = delta.detach() + step * grad / norm
        # project onto the eps-ball, then keep pixels in [0,1]
        dnorm = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        delta = delta * (epsilon / dnorm).clamp(max=1.0)
        delta = (x + delta).clamp(0, 1) - x
    model.train(was_training)
    return (x + delta).detach()


@register_loss("smoothadv")
def smoothadv_loss(inputs: LossInput, *, m_train: int = 1, epsilon: float = 0.5, num_steps: int = 1,
                   warmup: int = 1) -> LossOutput:
    """Salman et al.: attack the soft smoothed classifier, then CE on the noisy adversarial copies.

    The attack radius ramps linearly over the first ``warmup`` epochs: epsilon * min(1, (epoch+1)/warmup).
    """
    model, x, y = inputs.model, inputs.x, inputs.y
    m = int(m_train)
    eps = epsilon * _ramp(inputs.epoch, warmup)
    noise = gaussian_noise((x.shape[0], m, *x.shape[1:]), inputs.sigma, x, inputs.generator)
    x_adv = smoothadv_attack(model, x, y, noise, eps, int(num_steps))
    logits = model((x_adv.unsqueeze(1) + noise).flatten(0, 1))
    loss = F.cross_entropy(logits, y.repeat_interleave(m))
    return LossOutput(loss, {"ce": float(loss.detach()), "epsilon": eps})


def smoothmix_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor,
                     step_size: float, num_steps: int) -> torch.Tensor:
    """Jeong et al.'s (2021) l2 PGD on the soft smoothed classifier, without a radius limit.

    Each of ``num_steps`` steps moves every image by ``step_size`` along its normalized gradient
    of ``-log mean_j softmax(f(x + noise_j))[y]`` (normalized by ``||grad|| + 1e-8``) and clips
    to [0,1]; the noise draws stay fixed. The model runs in eval mode (BatchNorm statistics untouched).

    Args:
        x: (B, C, H, W) in [0,1]; y: (B,) labels; noise: (B, m, C, H, W).
        step_size: l2 length of each step in [0,1] pixel units.
    Returns:
        x_adv (B, C, H, W) in [0,1], detached.
    """
    was_training = model.training
    model.eval()
    adv = x.detach()
    for _ in range(int(num_steps)):
        adv.requires_grad_(True)
        with torch.enable_grad():
            loss = smoothed_soft_loss(model, adv, y, noise).sum()
            (grad,) = torch.autograd.grad(loss, adv)
        norm = grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        adv = (adv.detach() + step_size * grad / (norm + 1e-8)).clamp(0, 1)
    model.train(was_training)
    return adv.detach()


def smoothmix_mixup(x: torch.Tensor, x_adv: torch.Tensor, p_clean: torch.Tensor,
                    lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SmoothMix's mixed inputs and soft labels.

    ``x_mix = (1 - lam) x + lam x_adv`` and ``y_mix = (1 - lam) p_clean + lam / K``: the label
    moves from the smoothed prediction on the clean point toward uniform as the input moves
    toward the adversarial point.

    Args:
        x, x_adv: (B, C, H, W) in [0,1]; p_clean: (B, K) the mean softmax over the noisy clean
            copies; lam: (B,) mixing weights (drawn from U[0, 1/2] in training).
    """
    k = p_clean.shape[1]
    w = lam.view(-1, 1, 1, 1)
    x_mix = (1 - w) * x + w * x_adv
    y_mix = (1 - lam).view(-1, 1) * p_clean + lam.view(-1, 1) / k
    return x_mix, y_mix


@register_loss("smoothmix")
def smoothmix_loss(inputs: LossInput, *, m_train: int = 2, num_steps: int = 4, step_scale: float = 2.0,
                   eta: float = 5.0, warmup: int = 1) -> LossOutput:
    """SmoothMix (Jeong et al., NeurIPS 2021): CE on m noisy copies + eta * mixup KL.

    Steps (draw order from ``generator``: the m noises, then lambda):
      1. m noises per image; ``x_adv`` = ``num_steps`` PGD steps of size ``step_scale * sigma``
         on the soft smoothed classifier (``smoothmix_attack``; the paper's 0.5/1.0/2.0 at sigma
         0.25/0.5/1.0 is ``step_scale = 2``);
      2. CE of f(x + noise_j) averaged over the B*m copies; ``p_clean`` = their mean softmax;
      3. ``lam ~ U[0, 1/2]`` per image, ``(x_mix, y_mix) = smoothmix_mixup(x, x_adv, p_clean, lam)``;
      4. KL(y_mix || softmax f(x_mix + noise_j)) per copy, kept only where argmax p_clean = y,
         averaged over the B*m copies, weighted by ``eta * min(1, (epoch + 1) / warmup)``.
    As in the reference code, ``y_mix`` is not detached: the KL term also pulls on ``p_clean``.
    """
    model, x, y, sigma, generator = inputs.model, inputs.x, inputs.y, inputs.sigma, inputs.generator
    if sigma <= 0:
        raise InputError("smoothmix needs --sigma > 0: its attack step is step_scale * sigma")
    m, b = int(m_train), x.shape[0]
    noise = gaussian_noise((b, m, *x.shape[1:]), sigma, x, generator)
    x_adv = smoothmix_attack(model, x, y, noise, step_scale * sigma, int(num_steps))

    logits = model((x.unsqueeze(1) + noise).flatten(0, 1))
    ce = F.cross_entropy(logits, y.repeat_interleave(m))
    p_clean = F.softmax(logits.view(b, m, -1), dim=-1).mean(dim=1)

    lam = torch.rand(b, generator=generator, device=x.device, dtype=x.dtype) / 2
    x_mix, y_mix = smoothmix_mixup(x, x_adv, p_clean, lam)
    log_q = F.log_softmax(model((x_mix.unsqueeze(1) + noise).flatten(0, 1)), dim=-1)
    kl = F.kl_div(log_q, y_mix.repeat_interleave(m, dim=0), reduction="none").sum(dim=1)
    correct = (p_clean.argmax(dim=1) == y).to(kl.dtype).repeat_interleave(m)
    mix = (correct * kl).mean()
    weight = eta * _ramp(inputs.epoch, warmup)
    return LossOutput(ce + weight * mix, {"ce": float(ce.detach()), "mixup_kl": float(mix.detach()),
                                          "correct": float(correct.mean())})
