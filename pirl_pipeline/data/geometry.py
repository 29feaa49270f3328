"""Voxel-grid arithmetic shared by the fingerprint, the planner, the preprocessor and the exporter.

Crop boxes of the non-zero region (nnU-Net's crop-to-nonzero), the shape of an extent at a new spacing and
nnU-Net's anisotropy rule. Pure numpy; the interpolation itself is ``preprocessing.resampling``.
"""
from __future__ import annotations

import numpy as np

from pirl_pipeline.data.dataset_json import OUTSIDE_BODY

ANISOTROPY_THRESHOLD = 3.0


def nonzero_mask(data: np.ndarray) -> np.ndarray:
    """(C, z, y, x) -> (z, y, x) bool: voxels non-zero in at least one channel."""
    return np.any(data != 0, axis=0)


def bounding_box(mask: np.ndarray) -> list[list[int]]:
    """[[start, stop], ...] per axis of the True voxels; the whole array when the mask is empty."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append([int(hits[0]), int(hits[-1]) + 1] if hits.size else [0, mask.shape[axis]])
    return box


def crop(array: np.ndarray, box: list[list[int]]) -> np.ndarray:
    """Crop the trailing len(box) axes of ``array``."""
    lead = (slice(None),) * (array.ndim - len(box))
    return array[lead + tuple(slice(a, b) for a, b in box)]


def uncrop(array: np.ndarray, box: list[list[int]], full_shape: tuple[int, ...], fill=0) -> np.ndarray:
    """Put a cropped array (leading axes kept) back into an array of ``full_shape`` trailing axes."""
    out = np.full(array.shape[: array.ndim - len(box)] + tuple(full_shape), fill, dtype=array.dtype)
    lead = (slice(None),) * (array.ndim - len(box))
    out[lead + tuple(slice(a, b) for a, b in box)] = array
    return out


def crop_to_nonzero(data: np.ndarray, seg: np.ndarray | None = None):
    """Crop data (C, z, y, x) and seg (z, y, x) to the non-zero box.

    Returns (data, seg, box) where seg is int16 with OUTSIDE_BODY (-1) outside the non-zero mask (nnU-Net's
    convention: the mask later serves normalisation and the foreground-weighted losses). Without a
    label, seg is the mask alone (0 inside, -1 outside).
    """
    mask = nonzero_mask(data)
    box = bounding_box(mask)
    data = crop(data, box)
    mask = crop(mask, box)
    seg = np.zeros(mask.shape, np.int16) if seg is None else crop(seg, box).astype(np.int16, copy=True)
    seg[(~mask) & (seg == 0)] = OUTSIDE_BODY
    return data, seg, box


def anisotropic_axis(spacing: tuple[float, ...], target_spacing: tuple[float, ...] | None = None,
                     threshold: float = ANISOTROPY_THRESHOLD) -> int | None:
    """The axis to interpolate separately (nearest neighbour), nnU-Net's rule: the coarse axis of the input
    spacing when it is > ``threshold`` (3) x the finest, else that of the target spacing; None when none or not
    unique."""
    for candidate in (spacing, target_spacing):
        if candidate is None:
            continue
        candidate = np.asarray(candidate, float)
        if candidate.max() / candidate.min() > threshold:
            coarse = np.flatnonzero(candidate == candidate.max())
            return int(coarse[0]) if coarse.size == 1 else None
    return None


def shape_for_spacing(shape: tuple[int, ...], spacing: tuple[float, ...],
                      target_spacing: tuple[float, ...]) -> tuple[int, ...]:
    """The voxel shape that covers the same extent at ``target_spacing``."""
    return tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target_spacing))
