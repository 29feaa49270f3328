"""Sliding-window inference (MONAI) for any network kind and any available-modality subset, with
optional mirroring test-time augmentation and an ensemble over folds.

A PIRLNet sees each available modality alone and fuses their X_h' (its missing-modality path); a plain
network (SwinUNETR, DynUNet) sees all channels with the missing ones zeroed, as it was trained.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
from monai.inferers import sliding_window_inference

MIRROR_AXES = (2, 3, 4)


def window_predictor(network: torch.nn.Module, kind: str, available: Sequence[int],
                     num_modalities: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``f(window (B, M, *roi)) -> output (B, C_out, *roi)`` for the given available channels."""
    available = sorted(available)
    if kind == "pirl":
        return lambda x: network(x, available=available, fuse=True, heads=False).output
    keep = torch.zeros(num_modalities, dtype=torch.bool)
    keep[available] = True

    def plain(x: torch.Tensor) -> torch.Tensor:
        return network(x * keep.to(x.device, x.dtype).view(1, -1, 1, 1, 1))

    return plain


def with_mirroring(predict: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Average of the predictions of all 8 mirrorings of the window (nnU-Net's test-time augmentation)."""

    def mirrored(x: torch.Tensor) -> torch.Tensor:
        combos = [axes for r in range(len(MIRROR_AXES) + 1) for axes in itertools.combinations(MIRROR_AXES, r)]
        total = None
        for axes in combos:
            out = predict(torch.flip(x, axes) if axes else x)
            out = torch.flip(out, axes) if axes else out
            total = out if total is None else total + out
        return total / len(combos)

    return mirrored


@torch.no_grad()
def predict_volume(networks: Sequence[torch.nn.Module], kind: str, volume: torch.Tensor, available: Sequence[int],
                   roi_size: Sequence[int], step_size: float = 0.5, mirror: bool = True, sw_batch_size: int = 1,
                   device: torch.device | str = "cpu", autocast: bool = True) -> torch.Tensor:
    """Mean raw output (logits or intensities) of the folds over a preprocessed volume (M, *S) -> (C, *S).

    ``step_size`` is nnU-Net's: the window moves by that fraction of its size (overlap = 1 - step_size);
    windows are blended with Gaussian weights. The volume stays on the CPU; windows run on ``device``.
    """
    device = torch.device(device)
    use_amp = autocast and device.type == "cuda"
    total = None
    for network in networks:
        predict = window_predictor(network, kind, available, volume.shape[0])
        predict = with_mirroring(predict) if mirror else predict
        with torch.autocast(device.type, enabled=use_amp):
            out = sliding_window_inference(volume[None], roi_size, sw_batch_size, predict, overlap=1 - step_size,
                                           mode="gaussian", sw_device=device, device="cpu")
        out = out[0].float()
        total = out if total is None else total + out
    return total / len(networks)
