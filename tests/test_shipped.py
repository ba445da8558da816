"""The shipped Fashion-MNIST models: what MODEL_CARD.md and issue #15 promise about their size and cost."""

from __future__ import annotations

from diffsmooth.cost import forward_flops
from diffsmooth.methods import MethodSpec, build_base
from diffsmooth.shipped import WEIGHTS_DIR, list_shipped


def test_all_shipped_files_together_stay_under_25_megabytes():
    total = sum(p.stat().st_size for p in WEIGHTS_DIR.rglob("*") if p.is_file())
    assert 0 < total < 25e6, f"{total / 1e6:.1f} MB shipped"


def test_the_diffsmooth_base_costs_at_most_150_mflop_per_noise_sample():
    # purifier (one UNet call) + m = 5 local copies of the classifier: MODEL_CARD.md gives 137.2
    base = build_base(MethodSpec("diffsmooth", "fashion-mnist", 0.5, m=5, local_sigma=0.25))
    mflop = forward_flops(base, (1, 28, 28)) / 1e6
    assert 100 < mflop <= 150, mflop


def test_every_method_the_model_card_compares_has_its_shipped_model():
    names = set(list_shipped())
    assert "fmnist_ddpm" in names and "fmnist_cnn_clean" in names
    for sigma in ("0.12", "0.25", "0.50", "1.00"):
        assert f"fmnist_cnn_gaussian_{sigma}" in names
    for method in ("consistency", "smoothadv", "smoothmix"):
        assert {f"fmnist_cnn_{method}_0.25", f"fmnist_cnn_{method}_0.50"} <= names
