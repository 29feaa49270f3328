"""Feeding single modalities to a network built for C_in channels, and fusing per-modality results."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def repeat_modality(x: torch.Tensor, index: int, channels: int) -> torch.Tensor:
    """Modality ``index`` of x (B, M, *S) repeated into ``channels`` input channels -> (B, channels, *S).

    The reference code feeds a single modality this way, so one network serves every modality.
    """
    return x[:, index : index + 1].repeat(1, channels, *([1] * (x.dim() - 2)))


def availability_mask(available: torch.Tensor | Sequence[int], batch: int, modalities: int) -> torch.Tensor:
    """(B, M) bool mask from a mask or from a list of modality indices shared by the whole batch."""
    if isinstance(available, torch.Tensor):
        mask = available.to(torch.bool).cpu()
    else:
        mask = torch.zeros(batch, modalities, dtype=torch.bool)
        mask[:, list(available)] = True
    if mask.shape != (batch, modalities):
        raise ValueError(f"availability mask shape {tuple(mask.shape)} != (B, M) = {(batch, modalities)}")
    if not mask.any(dim=1).all():
        raise ValueError("every subject needs at least one available modality")
    return mask


def split_modalities(
    x: torch.Tensor, available: torch.Tensor | Sequence[int], channels: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every available (subject, modality) pair of x (B, M, *S) as its own repeated input.

    Returns inputs (N, channels, *S), owner (N,) subject index and modality (N,) index, ordered by subject
    then modality.
    """
    mask = availability_mask(available, x.shape[0], x.shape[1])
    owner, modality = mask.nonzero(as_tuple=True)
    owner, modality = owner.to(x.device), modality.to(x.device)
    inputs = x[owner, modality].unsqueeze(1).repeat(1, channels, *([1] * (x.dim() - 2)))
    return inputs, owner, modality


def scatter_mean(t: torch.Tensor, owner: torch.Tensor, size: int) -> torch.Tensor:
    """Mean of the rows of t (N, ...) that share an owner -> (size, ...)."""
    total = t.new_zeros((size, *t.shape[1:])).index_add(0, owner, t)
    count = torch.bincount(owner, minlength=size).clamp_min(1).to(t.dtype)
    return total / count.view(-1, *([1] * (t.dim() - 1)))


#: how single modalities and modality subsets enter PIRLNet (``PIRLNet(fusion=...)``):
#: "mean"/"max" encode each available modality alone, repeated into every input channel (the reference code),
#: and fuse X_h', z and every skip over a subject's modalities by the mean (the paper) or the maximum;
#: "joint" feeds the available modalities together in their own channels, the missing ones zeroed (as a
#: plain SwinUNETR gets them), so one modality alone is its own channel with the others zero.
FUSIONS = ("mean", "max", "joint")


def slot_modality(x: torch.Tensor, index: int) -> torch.Tensor:
    """Modality ``index`` of x (B, M, *S) in its own channel, every other channel zero -> (B, M, *S)."""
    out = torch.zeros_like(x)
    out[:, index] = x[:, index]
    return out


def single_modality(x: torch.Tensor, index: int, channels: int, fusion: str) -> torch.Tensor:
    """The network input that shows modality ``index`` of x (B, M, *S) alone under ``fusion`` (FUSIONS)."""
    return slot_modality(x, index) if fusion == "joint" else repeat_modality(x, index, channels)


def split_slots(x: torch.Tensor, available: torch.Tensor | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every available (subject, modality) pair of x (B, M, *S) in its own channel, the others zero.

    Returns inputs (N, M, *S) and owner (N,) subject index, ordered by subject then modality."""
    mask = availability_mask(available, x.shape[0], x.shape[1])
    owner, modality = (t.to(x.device) for t in mask.nonzero(as_tuple=True))
    inputs = torch.zeros((owner.numel(), *x.shape[1:]), dtype=x.dtype, device=x.device)
    rows = torch.arange(owner.numel(), device=x.device)
    inputs[rows, modality] = x[owner, modality]
    return inputs, owner


def scatter_max(t: torch.Tensor, owner: torch.Tensor, size: int) -> torch.Tensor:
    """Element-wise maximum of the rows of t (N, ...) that share an owner -> (size, ...); an owner without
    rows gets 0."""
    index = owner.view(-1, *([1] * (t.dim() - 1))).expand_as(t)
    out = t.new_full((size, *t.shape[1:]), float("-inf"))
    out = out.scatter_reduce(0, index, t, reduce="amax", include_self=True)
    return torch.where(torch.isinf(out), torch.zeros_like(out), out)
