"""Population prior O and its channel-wise attention fusion (DESIGN.md §2)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def attention_heads(embed_dim: int, requested: int) -> int:
    """Largest head count <= ``requested`` that divides ``embed_dim``.

    The attention embeds each channel by its flattened bottleneck grid, so ``embed_dim`` = (P/32)^3:
    27 at 96^3 -> 3 heads (the reference), 8 at 64^3 -> 2 of 3 requested, 1 at 32^3 -> 1.
    """
    return max(h for h in range(1, max(1, min(requested, embed_dim)) + 1) if embed_dim % h == 0)


class PriorFusion(nn.Module):
    """X_h' = Fuse(concat[z, T(Attn(q=z, k=O, v=O)), z]).

    O: learnable (C, *grid) tensor, N(0, 1) init, shared by all subjects. Attention runs over the
    channel axis: each of the C channels is a token whose embedding is its flattened grid
    (prod(grid) values). T = conv3x3x3 -> LeakyReLU -> conv3x3x3. Fuse = conv3x3x3 (3C -> C).
    Shapes: z (B, C, *grid) -> X_h' (B, C, *grid).
    """

    def __init__(self, channels: int, grid: Sequence[int], heads: int = 3) -> None:
        super().__init__()
        self.grid = tuple(int(g) for g in grid)
        embed_dim = math.prod(self.grid)
        self.num_heads = attention_heads(embed_dim, heads)
        self.prior = nn.Parameter(torch.randn(channels, *self.grid))
        self.attn = nn.MultiheadAttention(embed_dim, self.num_heads, batch_first=True)
        self.transform = nn.Sequential(
            nn.Conv3d(channels, channels, 3, padding=1),
            nn.LeakyReLU(inplace=True),
            nn.Conv3d(channels, channels, 3, padding=1),
        )
        self.fuse = nn.Conv3d(3 * channels, channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if tuple(z.shape[2:]) != self.grid:
            raise ValueError(
                f"bottleneck grid {tuple(z.shape[2:])} != prior grid {self.grid}: with the prior O the "
                "input must have the patch size the network was built for"
            )
        query = z.flatten(2)  # (B, C, prod(grid)): channels are tokens
        prior = self.prior.flatten(1).unsqueeze(0).expand(z.shape[0], -1, -1)
        attended, _ = self.attn(query, prior, prior, need_weights=False)
        transformed = self.transform(attended.reshape(z.shape))
        return self.fuse(torch.cat([z, transformed, z], dim=1))
