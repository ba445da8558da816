"""cost: FLOPs per forward pass against closed forms, counted without touching the module."""

from torch import nn

from diffsmooth.classifiers import create_classifier
from diffsmooth.cost import forward_flops, parameter_count


def test_forward_flops_closed_forms_and_the_module_stays_put():
    linear = nn.Linear(10, 5)
    assert forward_flops(linear, (10,)) == 2 * 10 * 5  # one multiply-add = 2 FLOPs
    conv = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    assert forward_flops(conv, (1, 8, 8)) == 2 * 64 * (9 * 1 * 4 + 4 * 2)
    assert all(p.device.type == "cpu" for p in conv.parameters())  # a meta copy was counted
    assert parameter_count(conv) == (9 * 4 + 4) + (4 * 2 + 2) and parameter_count(linear) == 55


def test_the_shipped_classifier_architecture_costs_what_the_model_card_says():
    # MODEL_CARD.md: fmnist_cnn_lite 8.26 MFLOP per 28x28 image
    assert round(forward_flops(create_classifier("fmnist_cnn_lite"), (1, 28, 28)) / 1e6, 2) == 8.26
