"""Population prior O and its channel-wise attention fusion (docs/design.md §2)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: how the channel tokens of z attend to those of O: "dot" (nn.MultiheadAttention's scaled dot product, the
#: reference code) or "cosine" (unit-length queries and keys times a learnable scale)
PRIOR_ATTENTIONS = ("dot", "cosine")
COSINE_SCALE_INIT = 10.0  # initial logit scale of "cosine": logits in [-10, 10] (softmax can pick a token)


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

    attention "dot": the reference's scaled dot product. With C = 16·fs channel tokens and prod(grid)-dimensional
    embeddings its logits have std ~0.5, so the attention is near uniform (entropy 0.97-0.99 of log C, measured)
    and every channel receives the same mean of O. "cosine": the same projections (the same parameters), queries
    and keys scaled to unit length per head and multiplied by a learnable scale (``logit_scale``, log-space, init
    COSINE_SCALE_INIT), so a query can single out the prior tokens it resembles; and T(A) layer-normalised over
    the channels, as z is, so the O path enters the fusion on z's scale (measured at init: 1e-4 of X_h''s
    variance without it: attention averaging, out_proj and the two convolutions each shrink it).
    """

    def __init__(self, channels: int, grid: Sequence[int], heads: int = 3, attention: str = "dot") -> None:
        super().__init__()
        if attention not in PRIOR_ATTENTIONS:
            raise ValueError(f"prior attention must be one of {PRIOR_ATTENTIONS}, got {attention!r}")
        self.attention = attention
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
        if attention == "cosine":
            # fix: cosine attention with a learnable scale; the reference's dot product is near uniform here
            self.logit_scale = nn.Parameter(torch.tensor(COSINE_SCALE_INIT).log())

    def _check(self, z: torch.Tensor) -> None:
        if tuple(z.shape[2:]) != self.grid:
            raise ValueError(
                f"bottleneck grid {tuple(z.shape[2:])} != prior grid {self.grid}: with the prior O the "
                "input must have the patch size the network was built for"
            )

    def attend(self, z: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A = Attn(q=z, k=O, v=O) with z's shape, and (need_weights) the attention (B, heads, C, C)."""
        self._check(z)
        query = z.flatten(2)  # (B, C, prod(grid)): channels are tokens
        prior = self.prior.flatten(1).unsqueeze(0).expand(z.shape[0], -1, -1)
        if self.attention == "dot":
            attended, weights = self.attn(query, prior, prior, need_weights=need_weights, average_attn_weights=False)
            return attended.reshape(z.shape), weights
        batch, tokens, dim = query.shape
        heads = self.num_heads
        w_q, w_k, w_v = self.attn.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.attn.in_proj_bias.chunk(3)

        def split(t: torch.Tensor) -> torch.Tensor:  # (B, C, dim) -> (B, heads, C, dim / heads)
            return t.view(batch, tokens, heads, dim // heads).transpose(1, 2)

        q = F.normalize(split(F.linear(query, w_q, b_q)), dim=-1)
        k = F.normalize(split(F.linear(prior, w_k, b_k)), dim=-1)
        v = split(F.linear(prior, w_v, b_v))
        weights = torch.softmax(self.logit_scale.exp() * q @ k.transpose(-1, -2), dim=-1)
        attended = (weights @ v).transpose(1, 2).reshape(batch, tokens, dim)
        attended = self.attn.out_proj(attended)
        return attended.reshape(z.shape), weights if need_weights else None

    def prior_path(self, z: torch.Tensor) -> torch.Tensor:
        """T(Attn(z, O)) (B, C, *grid); "cosine": layer-normalised over the channels."""
        transformed = self.transform(self.attend(z)[0])
        if self.attention == "cosine":  # fix: on z's scale (z is layer-normalised over its channels)
            transformed = F.layer_norm(transformed.movedim(1, -1), transformed.shape[1:2]).movedim(-1, 1)
        return transformed

    def parts(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(X_h', the O path's additive share of it: the fuse convolution applied to T(A) alone, no bias)."""
        transformed = self.prior_path(z)
        x_h = self.fuse(torch.cat([z, transformed, z], dim=1))
        channels = z.shape[1]
        weight = self.fuse.weight[:, channels : 2 * channels]
        return x_h, F.conv3d(transformed, weight, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        transformed = self.prior_path(z)
        return self.fuse(torch.cat([z, transformed, z], dim=1))
