"""What a network costs per input: FLOPs of one forward pass and parameter count.

FLOPs are counted by ``torch.utils.flop_counter`` on a meta-device copy of the module (shapes
only, no arithmetic, the module itself untouched), so they can be counted for any base (a
classifier, a purifier, a whole DiffSmooth base with its m copies) on any machine.
A multiply-add counts as 2 FLOPs; element-wise work (activations, normalisation) is not counted.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def forward_flops(module: nn.Module, shape: tuple[int, ...]) -> float:
    """FLOPs of one forward pass on one input of ``shape`` (e.g. ``(1, 28, 28)``; a batch of 1)."""
    meta = copy.deepcopy(module).to("meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(torch.zeros((1, *shape), device="meta"))
    return float(counter.get_total_flops())


def parameter_count(module: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``module``."""
    return sum(p.numel() for p in module.parameters())
