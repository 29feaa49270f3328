"""Voxel metrics on numpy or torch arrays: overlap (Dice, TPR, TNR, FNR, FPR) and image similarity (PSNR,
NMSE). Conventions for empty masks: Dice is 1 when prediction and reference are both empty (nnU-Net
reports NaN there; 1 keeps means finite and is what a perfect empty prediction deserves)."""
from __future__ import annotations

import torch


def confusion(pred: torch.Tensor, ref: torch.Tensor) -> tuple[float, float, float, float]:
    """TP, FP, FN, TN of two boolean masks of the same shape."""
    pred, ref = pred.bool(), ref.bool()
    tp = float((pred & ref).sum())
    fp = float((pred & ~ref).sum())
    fn = float((~pred & ref).sum())
    return tp, fp, fn, float(pred.numel()) - tp - fp - fn


def dice(pred: torch.Tensor, ref: torch.Tensor) -> float:
    tp, fp, fn, _ = confusion(pred, ref)
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def psnr(pred: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """PSNR in dB inside ``mask``, data range = max - min of the REFERENCE inside the mask."""
    mask = torch.ones_like(ref, dtype=torch.bool) if mask is None else mask.bool()
    p, r = pred[mask].double(), ref[mask].double()
    if r.numel() == 0:
        return float("nan")
    mse = torch.mean((p - r) ** 2)
    data_range = r.max() - r.min()
    if mse == 0:
        return float("inf")
    return float(10 * torch.log10(data_range**2 / mse)) if data_range > 0 else float("nan")


def nmse(pred: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """||pred - ref||^2 / ||ref||^2 inside ``mask``."""
    mask = torch.ones_like(ref, dtype=torch.bool) if mask is None else mask.bool()
    p, r = pred[mask].double(), ref[mask].double()
    denom = torch.sum(r**2)
    return float(torch.sum((p - r) ** 2) / denom) if denom > 0 else float("nan")
