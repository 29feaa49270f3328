"""Augment(·) of Algorithm 1: the two contrastive views X^{i+}, X^{i-} of phi(X^i)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ViewAugmentation:
    """Per-sample intensity jitter, Gaussian noise and cuboid drop-out; x (B, C, X, Y, Z) -> same shape.

    x' = x * U(1 - scale, 1 + scale) + U(-shift, shift) + N(0, noise_std^2), then ``cuboids`` random boxes
    (each side up to ``cuboid_fraction`` of the patch side) set to 0. Parameters are drawn from the global
    CPU torch RNG, the noise from the device's RNG, so a seed fixes the views.
    """

    scale: float = 0.1
    shift: float = 0.1
    noise_std: float = 0.1
    cuboids: int = 4
    cuboid_fraction: float = 0.25

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        shape = (b,) + (1,) * (x.dim() - 1)
        gain = 1 + self.scale * (2 * torch.rand(shape) - 1)
        offset = self.shift * (2 * torch.rand(shape) - 1)
        out = x * gain.to(x) + offset.to(x)
        if self.noise_std > 0:
            out = out + self.noise_std * torch.randn_like(out)
        sides = x.shape[2:]
        for i in range(b):
            for _ in range(self.cuboids):
                box = []
                for side in sides:
                    length = int(torch.randint(1, max(2, int(side * self.cuboid_fraction) + 1), ()))
                    start = int(torch.randint(0, side - length + 1, ()))
                    box.append(slice(start, start + length))
                out[(i, slice(None), *box)] = 0
        return out
