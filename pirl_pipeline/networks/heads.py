"""Heads on the bottleneck z (before the prior): equivariance classifier and contrastive projection."""

from __future__ import annotations

import torch
from torch import nn


def pool(z: torch.Tensor) -> torch.Tensor:
    """Global average pool of a (B, C, *grid) feature grid -> (B, C) token."""
    return z.flatten(2).mean(dim=2)


class EquivarianceHead(nn.Module):
    """F(z) = Linear(pool(z)): (B, C, *grid) -> (B, |Φ|) logits over the transform set."""

    def __init__(self, channels: int, num_transforms: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, num_transforms)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(pool(z))


class ProjectionHead(nn.Module):
    """SimCLR-style MLP Linear -> ReLU -> Linear on pool(z): (B, C, *grid) -> (B, proj_dim), un-normalised."""

    def __init__(self, channels: int, proj_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(channels, channels), nn.ReLU(inplace=True), nn.Linear(channels, proj_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.mlp(pool(z))
