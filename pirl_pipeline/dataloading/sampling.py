"""Where patches go: random / foreground-centred patch positions, and padded crops of (memory-mapped) arrays.

A patch position is the ``lower`` corner of the patch in the stored array's (z, y, x) coordinates; it may be
negative or reach past the end where the image is smaller than the patch (the image is then centred in the
patch and the rest is padding, as nnU-Net does).
"""
from __future__ import annotations

import math

import numpy as np


def position_bounds(shape: tuple[int, ...], patch_size: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive (lowest, highest) ``lower`` corner per axis; equal (and <= 0) on axes smaller than the patch,
    which centres the image in the patch there."""
    shape_a, patch = np.asarray(shape), np.asarray(patch_size)
    need = np.maximum(patch - shape_a, 0)
    lo = -(need // 2)
    hi = shape_a + need // 2 + need % 2 - patch
    return lo, hi


def random_position(shape: tuple[int, ...], patch_size: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A uniformly random patch position with the patch inside the image (or the image inside the patch)."""
    lo, hi = position_bounds(shape, patch_size)
    return rng.integers(lo, hi + 1)


def centered_position(shape: tuple[int, ...], patch_size: tuple[int, ...],
                      voxel: np.ndarray | None = None) -> np.ndarray:
    """Patch position centred on ``voxel`` (the image centre when None), shifted to stay within bounds:
    the voxel is always inside the patch."""
    lo, hi = position_bounds(shape, patch_size)
    if voxel is None:
        return (lo + hi) // 2
    return np.clip(np.asarray(voxel) - np.asarray(patch_size) // 2, lo, hi)


def pick_foreground_voxel(locations: dict[int, np.ndarray], rng: np.random.Generator) -> np.ndarray | None:
    """A random voxel of a random foreground class present in the case (class drawn uniformly, as nnU-Net);
    None when the case has no foreground (image-only data, or an empty label)."""
    present = [c for c in sorted(locations) if len(locations[c])]
    if not present:
        return None
    voxels = locations[present[int(rng.integers(len(present)))]]
    return voxels[int(rng.integers(len(voxels)))]


def is_oversampled(sample_number: int, fraction: float) -> bool:
    """Whether the ``sample_number``-th sample of the stream must contain foreground: exactly ``fraction`` of
    the samples, evenly spread (with 1/3: samples 2, 5, 8, ...), so it holds for any batch size, even 1."""
    eps = 1e-9
    return math.floor((sample_number + 1) * fraction + eps) > math.floor(sample_number * fraction + eps)


def crop_padded(array: np.ndarray, lower: np.ndarray, size: tuple[int, ...], pad_value: float) -> np.ndarray:
    """``array[:, lower:lower+size]`` for an array (C, *S); what lies outside the array is ``pad_value``.
    Reads only the overlapping part (one copy out of a memory map); returns a new C-contiguous array."""
    lower = np.asarray(lower, dtype=int)
    size_a = np.asarray(size, dtype=int)
    shape = np.asarray(array.shape[1:])
    start, end = np.maximum(lower, 0), np.minimum(lower + size_a, shape)
    if np.all(start == lower) and np.all(end == lower + size_a):
        return np.array(array[(slice(None), *(slice(s, e) for s, e in zip(start, end)))])
    out = np.full((array.shape[0], *size_a), pad_value, dtype=array.dtype)
    if np.all(end > start):
        src = (slice(None), *(slice(s, e) for s, e in zip(start, end)))
        dst = (slice(None), *(slice(s - lo, e - lo) for s, e, lo in zip(start, end, lower)))
        out[dst] = array[src]
    return out


def crop_image(data: np.ndarray, lower: np.ndarray, size: tuple[int, ...], pad_value: float,
               present: np.ndarray | None = None) -> np.ndarray:
    """:func:`crop_padded` of image channels (C, *S); channels not in ``present`` ((C,) bool, None: all) are 0
    (an absent channel is stored as NaN; a network sees it as 0, and the batch's ``channels`` say it is absent)."""
    out = crop_padded(data, lower, size, pad_value)
    if present is not None and not np.all(present):
        out[~np.asarray(present, bool)] = 0
    return out
