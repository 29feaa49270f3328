"""Resampling with SimpleITK (multi-threaded), array in and array out.

The mapping preserves the image extent, like nnU-Net's skimage-based resize: the first and last voxel
edges of input and output coincide, so resampling to a new shape and back restores the original grid.
Images use cubic B-spline (order 3), labels linear per class (SimpleITK's ``sitkLabelLinear``, nnU-Net's
"order 1 per class"). For anisotropic data (max/min of the input or target spacing > 3) the out-of-plane
axis is interpolated separately with nearest neighbour, nnU-Net's ``order_z=0`` rule.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from pirl_pipeline.data.geometry import ANISOTROPY_THRESHOLD, anisotropic_axis

_INTERPOLATORS = {3: sitk.sitkBSpline, 1: sitk.sitkLinear, 0: sitk.sitkNearestNeighbor}


def _resample_3d(volume: np.ndarray, new_shape: tuple[int, ...], interpolator: int) -> np.ndarray:
    """Extent-preserving resample of one (z, y, x) array to ``new_shape``."""
    image = sitk.GetImageFromArray(volume)
    old_size = np.array(image.GetSize(), float)  # x, y, z
    new_size = np.array(new_shape[::-1], float)
    new_spacing = old_size / new_size  # input spacing is 1 in index units
    origin = -0.5 + 0.5 * new_spacing
    out = sitk.Resample(image, [int(s) for s in new_size], sitk.Transform(), interpolator,
                        origin.tolist(), new_spacing.tolist(), image.GetDirection(), 0.0, image.GetPixelID())
    return sitk.GetArrayFromImage(out)


def resample(array: np.ndarray, new_shape: tuple[int, ...], is_label: bool,
             spacing: tuple[float, ...] | None = None, order: int = 3,
             target_spacing: tuple[float, ...] | None = None,
             anisotropy_threshold: float = ANISOTROPY_THRESHOLD) -> np.ndarray:
    """Resample (C, z, y, x) or (z, y, x) to the spatial ``new_shape``.

    ``spacing``/``target_spacing`` (z-y-x) enable the anisotropic rule (:func:`anisotropic_axis`): in-plane
    with the normal interpolator, then nearest neighbour along the coarse axis (``anisotropy_threshold``: the
    plans' ``resampling``). ``order`` (3, 1 or 0) applies to images.
    """
    new_shape = tuple(int(s) for s in new_shape)
    if array.ndim == 4:
        return np.stack([resample(c, new_shape, is_label, spacing, order, target_spacing, anisotropy_threshold)
                         for c in array])
    if tuple(array.shape) == new_shape:
        return array
    interpolator = sitk.sitkLabelLinear if is_label else _INTERPOLATORS[order]
    dtype = array.dtype
    work = array if is_label else array.astype(np.float32, copy=False)
    axis = anisotropic_axis(spacing, target_spacing, anisotropy_threshold) if spacing is not None else None
    if axis is not None and new_shape[axis] != array.shape[axis]:
        in_plane = tuple(new_shape[a] if a != axis else array.shape[a] for a in range(3))
        if in_plane != work.shape:  # skip the in-plane pass when only the coarse axis changes
            work = _resample_3d(work, in_plane, interpolator)
        work = _resample_3d(work, new_shape, sitk.sitkNearestNeighbor)
    else:
        work = _resample_3d(work, new_shape, interpolator)
    return work.astype(dtype, copy=False)
