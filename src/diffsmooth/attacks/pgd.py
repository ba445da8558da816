"""l2 PGD against a base classifier ``h`` or against its smoothed classifier ``g``.

Two targets, one loop:

- ``target="base"``: maximise the cross-entropy of ``h`` at ``x + delta`` (no
  smoothing noise).  ``eot`` > 1 only matters for a random ``h`` (fresh local noise,
  a stochastic reverse chain).
- ``target="smoothed"`` (SmoothAdv, Salman et al. 2019): maximise
  ``-log( (1/k) sum_j softmax(h(x + delta + d_j))_y )``, ``d_j ~ N(0, sigma^2 I)``,
  the cross-entropy of the softmax averaged over ``k = eot`` noise draws, with fresh
  draws at every step (expectation over transformation).

Each step moves ``delta`` by ``step_scale * eps / steps`` along the normalised gradient
(a zero gradient is replaced by a random direction), then projects ``x + delta`` onto
[0,1] pixels and ``delta`` onto the l2 ball of radius ``eps``.  Clipping first and then
shrinking ``delta`` keeps both constraints: ``x + s delta`` lies in [0,1] for every
``s`` in [0,1] when ``x`` and ``x + delta`` do.  Restart 0 starts at ``delta = 0``,
the others at a uniform point of the ball; each image keeps the restart whose final
loss (on a fresh EOT draw) is highest.  Defaults (20 steps, step 2 eps / steps) follow
SmoothAdv's PGD.

What is differentiated (``attack_surface``):

- ``Gaussian``, ``DenoisedSmoothing``: ``log_softmax`` of the classifier's logits; the
  gradient flows through the one-shot purifier.  A ``MultiStepDenoiser`` is
  differentiated through its whole reverse chain (``purifier_gradient="full"``, exact,
  memory grows with the steps) or with BPDA (``"bpda"``: the purifier's Jacobian
  replaced by the identity, Athalye et al. 2018); its ``"ddpm"`` chain draws from the
  attack's generator.
- ``DiffSmooth``: the log of the softmax averaged over the ``m`` local copies, the
  same for ``vote="soft"`` and ``vote="hard"`` (a majority vote of argmaxes has no
  gradient, so the hard vote is attacked through its soft scores).  Fixed local
  noise is the module's own (white box: the attacker knows it); fresh local noise is
  drawn per row from the attack's generator, so the module's own generator, and every
  later certificate, are left as they were.
- ``FastBase`` (``accelerate``): the wrapped float32 eager base is differentiated.
- Any other callable: its output is taken as logits.

Why not an attack library: torchattacks (3.5) and IBM ART offer l2 PGD, but draw their
randomness from the global RNG (or numpy's), have no expectation over a smoothing
distribution for l2 PGD, and know nothing of a generator per image; the attack must
be reproducible per image from a ``torch.Generator`` like every sampling in diffsmooth.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffsmooth import validate
from diffsmooth.defenses import DenoisedSmoothing, DiffSmooth, Gaussian, _fit_classifier_input
from diffsmooth.diffusion import MultiStepDenoiser
from diffsmooth.fast import FastBase
from diffsmooth.sampling import Generators, per_image_generators
from diffsmooth.smoothing import SmoothedClassifier, check_images
from diffsmooth.validate import InputError

TARGETS = ("smoothed", "base")
PURIFIER_GRADIENTS = ("full", "bpda")


@dataclass(frozen=True)
class AttackConfig:
    """How to attack (the radius ``eps`` is an argument of each call).

    Attributes:
        steps: PGD steps per restart.
        eot: noise draws per step whose softmax is averaged (k of SmoothAdv).
        restarts: random restarts (the first starts at the clean image).
        step_scale: l2 step size as a multiple of ``eps / steps`` (2: SmoothAdv).
        target: "smoothed" (the smoothed classifier, with the smoothing noise) or
            "base" (``h`` itself, no smoothing noise).
        purifier_gradient: "full" (backpropagate through a multi-step reverse chain)
            or "bpda" (identity Jacobian for a ``MultiStepDenoiser``).
        batch_size: largest number of noisy images per forward/backward call.
    """

    steps: int = 20
    eot: int = 8
    restarts: int = 1
    step_scale: float = 2.0
    target: str = "smoothed"
    purifier_gradient: str = "full"
    batch_size: int = 1000

    def __post_init__(self) -> None:
        for name in ("steps", "eot", "restarts", "batch_size"):
            validate.whole(getattr(self, name), name)
        validate.number(self.step_scale, "step_scale", above=0, hint=" (2 = SmoothAdv's step 2 eps / steps)")
        validate.choice(self.target, "target", TARGETS)
        validate.choice(self.purifier_gradient, "purifier_gradient", PURIFIER_GRADIENTS)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AttackResult:
    """The attacked images of one call.

    Attributes:
        x_adv: ``(K, C, H, W)`` attacked images, pixels in [0,1], on the input's device/dtype.
        perturbation_norm: ``(K,)`` l2 norms of ``x_adv - x`` (at most ``eps``).
        loss: ``(K,)`` the objective at ``x_adv`` on a fresh EOT draw: the cross-entropy
            ``-log p_y``, with ``p_y`` averaged over the ``eot`` draws.
    """

    x_adv: Tensor
    perturbation_norm: Tensor
    loss: Tensor


def check_eps(eps: object) -> float:
    """Raise ``InputError`` unless ``eps`` is a positive finite l2 radius."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (eps > 0 and math.isfinite(eps)):
        raise InputError(f"eps must be a positive l2 radius in [0,1] pixel units (e.g. 0.5), got {eps!r}")
    return float(eps)


def _eps_per_image(eps: float | Sequence[float], k: int) -> list[float]:
    if isinstance(eps, (int, float)):
        return [check_eps(eps)] * k
    values = [check_eps(e) for e in eps]
    if len(values) != k:
        raise InputError(f"eps must be one radius or one per image: got {len(values)} for {k} images")
    return values


# -- what is differentiated ---------------------------------------------------------------


def _wide(t: Tensor) -> Tensor:
    """Scores in at least float32 (reduced precision widened; float64 kept)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


LogProbabilities = Callable[[Tensor, "torch.Generator | None"], Tensor]
"""(noisy rows (B, C, H, W), generator) -> log-probabilities (B, num_classes)."""


@dataclass(frozen=True)
class AttackSurface:
    """A differentiable stand-in for a base ``h``: ``log_probs(x, generator)`` gives
    ``(B, num_classes)`` log-probabilities whose argmax is ``h``'s label (for
    ``DiffSmooth`` with ``vote="hard"``: its soft scores).  ``stochastic`` says that it
    draws from ``generator``, so that one call must hold the rows of one image only."""

    log_probs: LogProbabilities
    stochastic: bool
    description: str


def _purify(denoiser: nn.Module, x: Tensor, generator: torch.Generator | None, bpda: bool) -> Tensor:
    multi = isinstance(denoiser, MultiStepDenoiser)
    call = (lambda z: denoiser(z, generator=generator)) if multi else denoiser
    if bpda and multi:
        with torch.no_grad():
            purified = call(x)
        # Forward: the purifier; backward: the identity.
        return x + (purified - x).detach()
    return call(x)


def _stochastic_denoiser(denoiser: nn.Module) -> bool:
    return isinstance(denoiser, MultiStepDenoiser) and denoiser.method == "ddpm"


def attack_surface(base: Callable[[Tensor], Tensor], purifier_gradient: str = "full") -> AttackSurface:
    """The differentiable form of ``base`` that PGD follows (see the module docstring)."""
    bpda = purifier_gradient == "bpda"
    if isinstance(base, FastBase):
        base = base.base
    if isinstance(base, Gaussian):
        classifier = base.classifier

        def gaussian(x: Tensor, generator: torch.Generator | None) -> Tensor:
            return F.log_softmax(_wide(classifier(_fit_classifier_input(x, classifier, "input"))), dim=-1)

        return AttackSurface(gaussian, False, "log_softmax of the classifier")
    if isinstance(base, DenoisedSmoothing):
        denoiser, classifier = base.denoiser, base.classifier

        def dds(x: Tensor, generator: torch.Generator | None) -> Tensor:
            purified = _fit_classifier_input(_purify(denoiser, x, generator, bpda), classifier, "denoiser")
            return F.log_softmax(_wide(classifier(purified)), dim=-1)

        through = f"log_softmax through the purifier ({purifier_gradient})"
        return AttackSurface(dds, _stochastic_denoiser(denoiser), through)
    if isinstance(base, DiffSmooth):
        ds = base

        def diffsmooth(x: Tensor, generator: torch.Generator | None) -> Tensor:
            purified = _fit_classifier_input(_purify(ds.denoiser, x, generator, bpda), ds.classifier, "denoiser")
            b = purified.shape[0]
            if ds.local_noise == "fixed":
                local = ds.local_noises(purified)[None]
            else:
                # Drawn here, per row, from the attack's generator: the module's own stays untouched.
                local = ds.local_sigma * torch.randn(
                    (b, ds.m, *purified.shape[1:]), generator=generator, device=x.device, dtype=purified.dtype
                )
            copies = (purified[:, None] + local).flatten(0, 1)
            log_p = F.log_softmax(_wide(ds.classifier(copies)), dim=-1).view(b, ds.m, -1)
            # log of the softmax averaged over the m copies (DiffSmooth's soft scores).
            return torch.logsumexp(log_p, dim=1) - math.log(ds.m)

        stochastic = ds.local_noise == "fresh" or _stochastic_denoiser(ds.denoiser)
        return AttackSurface(diffsmooth, stochastic, f"log of the soft vote over m copies ({purifier_gradient})")

    def plain(x: Tensor, generator: torch.Generator | None) -> Tensor:
        out = base(x)
        if not isinstance(out, Tensor) or not out.is_floating_point() or out.dim() != 2:
            what = f"{out.dtype} of shape {tuple(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
            raise InputError(
                f"PGD needs a base that returns scores (B, num_classes) to differentiate, this one returns {what}; "
                "attack a model that outputs logits"
            )
        return F.log_softmax(_wide(out), dim=-1)

    return AttackSurface(plain, False, "log_softmax of the base's output taken as logits")


# -- PGD ----------------------------------------------------------------------------------


def attack(
    smoothed: SmoothedClassifier,
    xs: Tensor,
    labels: Tensor | Sequence[int],
    eps: float | Sequence[float],
    config: AttackConfig,
    generators: Generators = None,
) -> AttackResult:
    """Attack each of ``xs`` inside the l2 ball of radius ``eps`` (and [0,1] pixels).

    Args:
        smoothed: the smoothed classifier; its ``base`` is attacked, with its ``sigma``
            when ``config.target == "smoothed"``.  The base is not modified.
        xs: ``(K, C, H, W)`` clean images, pixels in [0,1]; device and dtype of the attack.
        labels: ``(K,)`` the classes to move away from.
        eps: l2 radius in [0,1] pixel units, > 0: one for all images or one per image.
        config: the attack's settings.
        generators: one per image (an image's attack then depends on its generator
            only, not on which images share its batches), one shared, or None.
    Returns:
        an ``AttackResult``.
    """
    if not isinstance(config, AttackConfig):
        raise InputError(f"config must be an AttackConfig, got {type(config).__name__}")
    check_images(xs, "xs")
    radii = _eps_per_image(eps, xs.shape[0])
    labels_t = torch.as_tensor(labels, dtype=torch.long, device=xs.device).reshape(-1)
    if labels_t.shape[0] != xs.shape[0]:
        raise InputError(f"labels must hold one class per image: got {labels_t.shape[0]} for {xs.shape[0]} images")
    if bool(((labels_t < 0) | (labels_t >= smoothed.num_classes)).any()):
        raise InputError(f"labels must lie in 0..{smoothed.num_classes - 1}, got {labels_t.tolist()}")
    gens = per_image_generators(generators, xs.shape[0])
    surface = attack_surface(smoothed.base, config.purifier_gradient)
    sigma = smoothed.sigma if config.target == "smoothed" else 0.0
    with torch.inference_mode(False), torch.enable_grad():
        eps_t = torch.tensor(radii, device=xs.device, dtype=xs.dtype)
        return _pgd(surface, xs.detach().clone(), labels_t.clone(), eps_t, sigma, config, gens)


def _pgd(
    surface: AttackSurface,
    xs: Tensor,
    labels: Tensor,
    eps: Tensor,
    sigma: float,
    config: AttackConfig,
    gens: list[torch.Generator | None],
) -> AttackResult:
    """PGD with per-image radii ``eps`` (K,)."""
    step = _per_row(config.step_scale * eps / config.steps, xs)
    best_delta = torch.zeros_like(xs)
    wide = torch.promote_types(xs.dtype, torch.float32)
    best_loss = torch.full((xs.shape[0],), -math.inf, device=xs.device, dtype=wide)
    for restart in range(config.restarts):
        delta = torch.zeros_like(xs) if restart == 0 else _project(xs, _uniform_in_ball(xs, eps, gens), eps)
        for _ in range(config.steps):
            _, grad = _objective(surface, xs, delta, labels, sigma, config, gens, with_grad=True)
            delta = _project(xs, delta + step * _unit(grad, gens), eps)
        with torch.no_grad():
            loss, _ = _objective(surface, xs, delta, labels, sigma, config, gens, with_grad=False)
        better = loss > best_loss
        best_loss = torch.where(better, loss, best_loss)
        best_delta[better] = delta[better]
    x_adv = (xs + best_delta).clamp(0.0, 1.0)
    norms = (x_adv - xs).flatten(1).norm(dim=1)
    return AttackResult(x_adv=x_adv.detach(), perturbation_norm=norms.detach(), loss=best_loss.detach())


def _objective(
    surface: AttackSurface,
    xs: Tensor,
    delta: Tensor,
    labels: Tensor,
    sigma: float,
    config: AttackConfig,
    gens: list[torch.Generator | None],
    with_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    """Per image: the loss ``-log mean_j p_y(x + delta + d_j)`` over ``eot`` draws, and its
    gradient with respect to ``delta`` (``(K, C, H, W)``, or None).

    Draws are split into calls of at most ``batch_size`` rows; the chunks of one image
    are combined exactly: ``log sum_j p_j`` is a log-sum-exp of the chunks' log-sum-exps,
    and its gradient the chunks' gradients weighted by their softmax.
    """
    k = xs.shape[0]
    running = torch.full((k,), -math.inf, device=xs.device, dtype=torch.promote_types(xs.dtype, torch.float32))
    grad = torch.zeros_like(xs) if with_grad else None
    for call in _calls(k, config.eot, config.batch_size, surface.stochastic):
        delta_leaf = delta.detach().requires_grad_(with_grad)
        rows = []
        for i, size in call:
            noise = (
                sigma * torch.randn((size, *xs.shape[1:]), generator=gens[i], device=xs.device, dtype=xs.dtype)
                if sigma > 0
                else torch.zeros((size, *xs.shape[1:]), device=xs.device, dtype=xs.dtype)
            )
            rows.append((xs[i] + delta_leaf[i])[None] + noise)
        owners = torch.cat([torch.full((size,), i, device=xs.device, dtype=torch.long) for i, size in call])
        generator = gens[call[0][0]] if surface.stochastic else None
        log_p = surface.log_probs(torch.cat(rows), generator).gather(1, labels[owners][:, None]).squeeze(1)
        parts = []
        start = 0
        for _, size in call:
            parts.append(torch.logsumexp(log_p[start : start + size], dim=0))
            start += size
        part = torch.stack(parts)
        index = torch.tensor([i for i, _ in call], device=xs.device)
        if with_grad:
            (g,) = torch.autograd.grad(part.sum(), delta_leaf)
            combined = torch.logaddexp(running[index], part.detach())
            old = _per_row(torch.exp(running[index] - combined), xs).to(xs.dtype)
            new = _per_row(torch.exp(part.detach() - combined), xs).to(xs.dtype)
            grad[index] = old * grad[index] + new * g[index]
            running[index] = combined
        else:
            running[index] = torch.logaddexp(running[index], part.detach())
    loss = -(running - math.log(config.eot))
    # The gradient of the loss (minus that of log sum_j p_j), ascended by PGD.
    return loss, None if grad is None else -grad


def _calls(k: int, eot: int, batch_size: int, one_image_per_call: bool) -> list[list[tuple[int, int]]]:
    """Forward calls as lists of (image, draws): every image's ``eot`` draws in chunks of
    at most ``batch_size``; small chunks of several images share a call, at most one
    chunk per image (unless the surface is stochastic: then one image per call)."""
    full, rest = divmod(eot, batch_size)
    calls = [[(i, batch_size)] for i in range(k) for _ in range(full)]
    if rest:
        if one_image_per_call:
            calls += [[(i, rest)] for i in range(k)]
        else:
            per_call = max(1, batch_size // rest)
            calls += [[(i, rest) for i in range(s, min(k, s + per_call))] for s in range(0, k, per_call)]
    return calls


def _unit(grad: Tensor, gens: list[torch.Generator | None]) -> Tensor:
    """Each image's gradient scaled to unit l2 norm; a zero gradient becomes a random direction."""
    norms = grad.flatten(1).norm(dim=1)
    for i in torch.nonzero(norms == 0).flatten().tolist():
        grad[i] = torch.randn(grad.shape[1:], generator=gens[i], device=grad.device, dtype=grad.dtype)
        norms[i] = grad[i].norm()
    return grad / _per_row(norms, grad)


def _per_row(values: Tensor, like: Tensor) -> Tensor:
    """(K,) values shaped to broadcast over (K, C, H, W)."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def _project(xs: Tensor, delta: Tensor, eps: Tensor) -> Tensor:
    """Clip ``xs + delta`` to [0,1], then shrink each ``delta`` into its l2 ball (radii ``eps`` (K,))."""
    delta = (xs + delta).clamp(0.0, 1.0) - xs
    norms = delta.flatten(1).norm(dim=1)
    scale = torch.clamp(eps / norms.clamp_min(1e-12), max=1.0)
    return delta * _per_row(scale, delta)


def _uniform_in_ball(xs: Tensor, eps: Tensor, gens: list[torch.Generator | None]) -> Tensor:
    """One uniform point of the l2 ball of radius eps[i] per image (radius eps U^(1/d))."""
    d = xs[0].numel()
    out = []
    for i in range(xs.shape[0]):
        direction = torch.randn(xs.shape[1:], generator=gens[i], device=xs.device, dtype=xs.dtype)
        u = torch.rand((), generator=gens[i], device=xs.device, dtype=xs.dtype)
        out.append(direction / direction.norm() * eps[i] * u ** (1.0 / d))
    return torch.stack(out)
