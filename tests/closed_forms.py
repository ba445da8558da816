"""Test helper (not a test module): bases whose smoothed classifier is known in closed form."""

from __future__ import annotations

import torch


class HalfSpace(torch.nn.Module):
    """h(x) = 1[w.x + b > 0] on (B, 1, 2, 2) images; the smoothed g is the same half-space,
    so the true certified radius at x is |w.x + b| / ||w|| and p_A(x) = Phi(|w.x + b| / (||w|| sigma))."""

    def __init__(self, w, b):
        super().__init__()
        self.w = torch.as_tensor(w, dtype=torch.float64).reshape(-1)
        self.b = float(b)

    def forward(self, x):
        return (x.reshape(x.shape[0], -1).double() @ self.w + self.b > 0).long()

    def signed_distance(self, x):
        return (x.reshape(-1).double() @ self.w + self.b) / self.w.norm()

    def at_distances(self, distances):
        """Images (K, 1, 2, 2) in [0,1] at the given signed distances from the boundary."""
        unit = self.w / self.w.norm()
        centre = torch.full((4,), 0.5, dtype=torch.float64)
        shift = torch.as_tensor(distances, dtype=torch.float64)[:, None] - self.signed_distance(centre)
        xs = (centre + shift * unit).reshape(-1, 1, 2, 2).float()
        assert float(xs.min()) >= 0 and float(xs.max()) <= 1
        return xs
