"""Masks shared by the image losses."""
from __future__ import annotations

import torch


def channel_mask(channels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, M) bool channels that exist -> a {0, 1} mask of ``like``'s shape (B, M, *spatial) and dtype."""
    return channels.to(like)[(...,) + (None,) * (like.dim() - 2)].expand_as(like)
