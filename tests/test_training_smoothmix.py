"""SmoothMix (Jeong et al. 2021): the PGD step, the mixed labels and the loss by hand; the loss falls."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffsmooth.training import LossInput, get_loss, loss_defaults
from diffsmooth.training.losses import smoothmix_attack, smoothmix_mixup
from diffsmooth.validate import InputError


class Linear(nn.Module):
    """f(x) = W vec(x): the gradient of -log softmax(f)_y is W^T (softmax - e_y), by hand."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T


W = torch.tensor([[1.0, -2.0], [0.5, 1.5], [-1.0, 0.0]], dtype=torch.float64)


def test_defaults_are_the_papers_cifar10_settings():
    assert loss_defaults("smoothmix") == {"m_train": 2, "num_steps": 4, "step_scale": 2.0, "eta": 5.0, "warmup": 1}


def test_one_pgd_step_by_hand():
    model = Linear(W)
    x = torch.tensor([[[[0.4, 0.7]]], [[[0.9, 0.1]]]], dtype=torch.float64)  # (B=2, 1, 1, 2)
    y = torch.tensor([1, 0])
    noise = torch.zeros(2, 1, 1, 1, 2, dtype=torch.float64)  # m = 1, no noise: the plain classifier
    got = smoothmix_attack(model, x, y, noise, step_size=0.3, num_steps=1)
    for i in range(2):
        v = x[i].flatten()
        p = torch.softmax(W @ v, 0)
        grad = W.T @ (p - F.one_hot(y[i], 3).double())
        want = (v + 0.3 * grad / (grad.norm() + 1e-8)).clamp(0, 1)
        assert torch.allclose(got[i].flatten(), want, atol=1e-12)
    # The step is a full 0.3 in l2 where no pixel is clipped.
    v = x[0].flatten()
    assert float((got[0].flatten() - v).norm()) == pytest.approx(0.3, abs=1e-6)
    # Two noise copies: the gradient is that of -log of the mean softmax.
    noise2 = torch.tensor([[0.1, -0.2], [-0.3, 0.05]], dtype=torch.float64).view(1, 2, 1, 1, 2)
    got2 = smoothmix_attack(model, x[:1], y[:1], noise2, step_size=0.2, num_steps=1)
    ps = torch.stack([torch.softmax(W @ (v + n), 0) for n in noise2.view(2, 2)])
    mean = ps.mean(0)
    # d/dv -log mean_j p_j[y] = -(1/mean[y]) * mean_j p_j[y] * W^T (e_y - p_j)
    grad = -sum(pj[1] * (W.T @ (F.one_hot(torch.tensor(1), 3).double() - pj)) for pj in ps) / 2 / mean[1]
    want = (v + 0.2 * grad / (grad.norm() + 1e-8)).clamp(0, 1)
    assert torch.allclose(got2.flatten(), want, atol=1e-12)


def test_mixed_inputs_and_labels_by_hand():
    x = torch.zeros(1, 1, 1, 2)
    x_adv = torch.ones(1, 1, 1, 2)
    p_clean = torch.tensor([[0.7, 0.2, 0.1]])
    x_mix, y_mix = smoothmix_mixup(x, x_adv, p_clean, torch.tensor([0.3]))
    assert torch.allclose(x_mix, torch.full((1, 1, 1, 2), 0.3))
    # 0.7 * (0.7, 0.2, 0.1) + 0.3 / 3
    assert torch.allclose(y_mix, torch.tensor([[0.59, 0.24, 0.17]]), atol=1e-7)
    assert float(y_mix.sum()) == pytest.approx(1.0)
    _, none = smoothmix_mixup(x, x_adv, p_clean, torch.tensor([0.0]))
    assert torch.equal(none, p_clean)


def test_loss_by_hand_with_the_mask_on_misclassified_images():
    model = Linear(W)
    x = torch.tensor([[[[0.4, 0.7]]], [[[0.9, 0.1]]]], dtype=torch.float64)
    y = torch.tensor([1, 2])  # image 0 is classified 1 (correct), image 1 is classified 0 (wrong)
    sigma, m, eta = 0.25, 2, 5.0
    out = get_loss("smoothmix")(LossInput(model, x, y, sigma, torch.Generator().manual_seed(4), 0),
                                m_train=m, num_steps=1, step_scale=2.0, eta=eta, warmup=1)
    gen = torch.Generator().manual_seed(4)  # the documented draw order: noises, then lambda
    noise = sigma * torch.randn((2, m, 1, 1, 2), generator=gen, dtype=torch.float64)
    lam = torch.rand(2, generator=gen, dtype=torch.float64) / 2
    x_adv = smoothmix_attack(model, x, y, noise, 2.0 * sigma, 1)
    ce = kl = 0.0
    for i in range(2):
        logits = torch.stack([W @ (x[i].flatten() + noise[i, j].flatten()) for j in range(m)])
        p = torch.softmax(logits, 1)
        ce += float(F.cross_entropy(logits, y[i].repeat(m), reduction="sum"))
        target = (1 - lam[i]) * p.mean(0) + lam[i] / 3
        x_mix = (1 - lam[i]) * x[i].flatten() + lam[i] * x_adv[i].flatten()
        for j in range(m):
            q = torch.softmax(W @ (x_mix + noise[i, j].flatten()), 0)
            kl += float((target * (target.log() - q.log())).sum()) * (i == 0)
    assert out.parts["correct"] == pytest.approx(0.5)
    assert out.parts["ce"] == pytest.approx(ce / 4, abs=1e-10)
    assert out.parts["mixup_kl"] == pytest.approx(kl / 4, abs=1e-10)
    assert float(out.loss.detach()) == pytest.approx(ce / 4 + eta * kl / 4, abs=1e-10)
    # warm-up: eta * (epoch + 1) / warmup in the first epochs
    warm = get_loss("smoothmix")(LossInput(model, x, y, sigma, torch.Generator().manual_seed(4), 0),
                                 m_train=m, num_steps=1, step_scale=2.0, eta=eta, warmup=4)
    assert float(warm.loss.detach()) == pytest.approx(ce / 4 + eta / 4 * kl / 4, abs=1e-10)


def test_needs_positive_sigma():
    model = Linear(W)
    with pytest.raises(InputError, match="^smoothmix needs --sigma > 0"):
        get_loss("smoothmix")(LossInput(model, torch.zeros(1, 1, 1, 2), torch.tensor([0]), 0.0, torch.Generator()))
