"""CUDA-only checks of the fast path and the device placement. Marked `gpu`: CI has no GPU,
so scripts/run_tests.sh deselects them by name there; run them on a GPU machine with
`scripts/run_tests.sh -m gpu`."""

from __future__ import annotations

import pytest
import torch

from diffsmooth import MethodSpec, SmoothedClassifier, build_base
from diffsmooth.fast import accelerate, auto_batch_size

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def base():
    """DiffSmooth with the shipped (trained) Fashion-MNIST models."""
    return build_base(MethodSpec("diffsmooth", "fashion-mnist", 0.25, m=3), CUDA)


@pytest.fixture(scope="module")
def noisy(fmnist_dir):
    from diffsmooth.data import load_dataset

    data = load_dataset("fashion-mnist", data_dir=fmnist_dir)
    clean = torch.stack([data[i][0] for i in range(len(data))]).to(CUDA).repeat(22, 1, 1, 1)[:256]
    return clean + 0.25 * torch.randn(clean.shape, device=CUDA, generator=torch.Generator(CUDA).manual_seed(0))


def test_noise_and_counts_stay_on_the_input_device(base):
    xs = torch.rand(3, 1, 28, 28, device=CUDA)
    smoothed = SmoothedClassifier(base, 10, 0.25)
    gens = [torch.Generator(device=CUDA).manual_seed(i) for i in range(3)]
    counts = smoothed.sample_counts(xs, 50, 64, gens)
    assert counts.device.type == "cuda" and counts.sum().item() == 150


def test_cuda_graphs_and_bf16_keep_the_labels(base, noisy):
    x = noisy
    with torch.inference_mode():
        eager = base(x).argmax(1)
        graphed = accelerate(base, cuda_graphs=True, static_batch=256)
        assert torch.equal(graphed(x).argmax(1), eager)
        assert torch.equal(graphed(x[:100]).argmax(1), eager[:100])  # padded to the static batch
        bf16 = accelerate(base, precision="bfloat16", channels_last=True)
        assert (bf16(x).argmax(1) == eager).float().mean().item() >= 0.99


def test_auto_batch_size_fits_the_card(base):
    batch = auto_batch_size(base, (1, 28, 28), CUDA, max_batch=8192)
    assert 8 <= batch <= 8192
    with torch.inference_mode():
        base(torch.rand(batch, 1, 28, 28, device=CUDA))
