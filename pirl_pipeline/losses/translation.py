"""Translation (modality transfer) loss: L1 or MSE on the foreground."""

from __future__ import annotations

import torch
from torch import nn

from pirl_pipeline.losses.masking import channel_mask


class TranslationLoss(nn.Module):
    """L = Σ(|out - X|^p · M) / |M|, p = 1 ("l1") or 2 ("mse").

    out, X: (B, M, *patch) predicted / true modalities; mask M (B, 1 or M, *patch) foreground in {0, 1},
    broadcast to X's shape (None: whole patch). The background is not supervised: metrics ignore it.
    """

    def __init__(self, kind: str = "l1") -> None:
        super().__init__()
        if kind not in ("l1", "mse"):
            raise ValueError(f"kind must be 'l1' or 'mse', got {kind!r}")
        self.power = 1 if kind == "l1" else 2

    def forward(self, out: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                channels: torch.Tensor | None = None) -> torch.Tensor:
        """``channels`` (B, M) bool: the target modalities that exist (None: all); absent ones are not scored."""
        err = (out.float() - target.float()).abs() ** self.power
        if channels is not None and not bool(channels.all()):
            present = channel_mask(channels, err)
            mask = present if mask is None else mask.to(err).expand_as(err) * present
        if mask is None:
            return err.mean()
        m = mask.to(err).expand_as(err)
        return (err * m).sum() / m.sum().clamp_min(1)
