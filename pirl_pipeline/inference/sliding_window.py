"""Sliding-window inference (MONAI) for any network kind and any available-modality subset, with
optional mirroring test-time augmentation and an ensemble over folds.

A PIRLNet sees each available modality alone and fuses their X_h' (its missing-modality path); a plain
network (SwinUNETR, DynUNet) sees all channels with the missing ones zeroed, as it was trained.

Device and precision: windows run on ``device`` under autocast in ``dtype`` (``inference_dtype``: bf16 on
CUDA when supported, as in training; fp32 on the CPU); blending accumulates in fp32 outside autocast, on
the device when the output fits in its free memory (else on the CPU); ``sw_batch_size=None`` picks the
number of windows per batch from the free memory measured after one probe window (1 on the CPU).
"""
from __future__ import annotations

import itertools
import math
import weakref
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
from monai.inferers import sliding_window_inference

MIRROR_AXES = (2, 3, 4)
MAX_SW_BATCH = 16
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


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


def inference_dtype(device: torch.device | str, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype of the windows, None for fp32. ``auto``: on CUDA bf16 where supported (the
    training autocast), else fp16; on the CPU fp32 (CPU autocast is slower than fp32 for these networks)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}; choose from {PRECISIONS}")
    device = torch.device(device)
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def in_precision(predict: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                 dtype: torch.dtype | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``predict`` under autocast(dtype) (none for fp32), returning fp32 for the blending."""

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext():
            return predict(x).float()

    return run


def free_memory(device: torch.device) -> int:
    """Bytes a new allocation may take on a CUDA device: the driver's free memory plus torch's unused cache."""
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


_PROBES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # network -> {setting: (bytes/window, C_out)}


def plan_windows(predict: Callable[[torch.Tensor], torch.Tensor], volume: torch.Tensor, roi_size: Sequence[int],
                 device: torch.device, sw_batch_size: int | None = None, fraction: float = 0.5,
                 limit: int = MAX_SW_BATCH, cache: tuple[torch.nn.Module, tuple] | None = None) -> tuple[int, torch.device]:
    """(windows per batch, blending device). On the CPU: (``sw_batch_size`` or 1, cpu). On CUDA one probe
    window through ``predict`` gives the memory per window and the output channels (remembered per
    ``cache`` = (network, setting), so repeated calls probe once): the batch is what ``fraction`` of the free
    memory holds (at most ``limit``; ``sw_batch_size`` wins when given), and the blending happens on the
    device when the fp32 output + count map + input take at most a quarter of what is left, else on the CPU."""
    if device.type != "cuda":
        return sw_batch_size or 1, device
    known = _PROBES.setdefault(cache[0], {}) if cache is not None else {}
    key = None if cache is None else cache[1]
    if key not in known:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out_channels = predict(torch.zeros(1, volume.shape[0], *roi_size, device=device)).shape[1]
        torch.cuda.synchronize(device)
        known[key] = (max(torch.cuda.max_memory_allocated(device) - base, 1), out_channels)
    per_window, out_channels = known[key]
    free = free_memory(device)
    batch = sw_batch_size or int(max(1, min(limit, fraction * free // per_window)))
    need = 4 * (out_channels + 1 + volume.shape[0]) * math.prod(volume.shape[1:])
    blend = device if need <= 0.25 * (free - batch * per_window) else torch.device("cpu")
    return batch, blend


@torch.no_grad()
def predict_volume(networks: Sequence[torch.nn.Module], kind: str, volume: torch.Tensor, available: Sequence[int],
                   roi_size: Sequence[int], step_size: float = 0.5, mirror: bool = True,
                   sw_batch_size: int | None = None, device: torch.device | str = "cpu",
                   precision: str = "auto") -> torch.Tensor:
    """Mean raw output (logits or intensities) of the folds over a preprocessed volume (M, *S) -> (C, *S), fp32
    on the CPU.

    ``step_size`` is nnU-Net's: the window moves by that fraction of its size (overlap = 1 - step_size);
    windows are blended with Gaussian weights. ``sw_batch_size``: windows per network call (None: 1 on the
    CPU, from the free memory on CUDA; see ``plan_windows``); ``precision``: see ``inference_dtype``.
    """
    device = torch.device(device)
    dtype = inference_dtype(device, precision)
    single = [in_precision(window_predictor(n, kind, available, volume.shape[0]), device, dtype) for n in networks]
    setting = (tuple(roi_size), volume.shape[0], len(available), dtype, device.index)
    batch, blend = plan_windows(single[0], volume, roi_size, device, sw_batch_size,  # the folds: one architecture
                                cache=(networks[0], setting))
    inputs = volume[None].to(blend)  # on the device when blending there: windows are cut without copies
    total = None
    for network, predict in zip(networks, single):
        if mirror:
            predict = in_precision(with_mirroring(window_predictor(network, kind, available, volume.shape[0])),
                                   device, dtype)
        out = sliding_window_inference(inputs, roi_size, batch, predict, overlap=1 - step_size, mode="gaussian",
                                       sw_device=device, device=blend)[0]
        total = out if total is None else total + out
    return (total / len(networks)).float().cpu()
