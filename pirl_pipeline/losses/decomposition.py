"""L_decom: D(X_h') of one modality reconstructs ALL modalities."""

from __future__ import annotations

import torch
from torch import nn

from pirl_pipeline.losses.masking import channel_mask


class DecompositionLoss(nn.Module):
    """L_decom = w · Σ((out - X)·M)^2 / |M| + mean((out - X)^2)   (reference code, w = 10).

    out, X: (B, M, *patch), out already mapped back by phi^-1; mask M (B, 1 or M, *patch) foreground in
    {0, 1}, broadcast to X's shape, |M| = its sum, so the first term is the foreground MSE.
    Without a mask the whole patch is foreground.
    """

    def __init__(self, foreground_weight: float = 10.0) -> None:
        super().__init__()
        self.foreground_weight = foreground_weight

    def forward(self, out: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                channels: torch.Tensor | None = None) -> torch.Tensor:
        """``channels`` (B, M) bool: the target modalities that exist (None: all); absent ones are not scored."""
        sq = (out.float() - target.float()) ** 2
        if channels is not None and not bool(channels.all()):
            present = channel_mask(channels, sq)
            m = present if mask is None else mask.to(sq).expand_as(sq) * present
            return (self.foreground_weight * (sq * m).sum() / m.sum().clamp_min(1)
                    + (sq * present).sum() / present.sum().clamp_min(1))
        if mask is None:
            fg = sq.mean()
        else:
            m = mask.to(sq).expand_as(sq)
            fg = (sq * m).sum() / m.sum().clamp_min(1)
        return self.foreground_weight * fg + sq.mean()
