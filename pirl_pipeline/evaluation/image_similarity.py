"""Image similarity for translation: PSNR, NMSE, 3D SSIM and per-volume percentile scaling, inside a mask.
The conventions (data range from the reference, percentile scaling, SSIM windows) are stated in
:mod:`pirl_pipeline.evaluation.metrics` and its ``CONVENTIONS``, which every ``summary.json`` carries."""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

from pirl_pipeline.evaluation.arrays import Array, ratio, to_bool_array, to_tensor

IMAGE_METRICS = ("PSNR", "NMSE", "SSIM", "PSNR_raw", "NMSE_raw", "SSIM_raw")
SSIM_KERNEL_SIZE, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
SCALE_PERCENTILES = (0.5, 99.5)


def _masked(pred: Array, ref: Array, mask: Array | None) -> tuple[torch.Tensor, torch.Tensor]:
    pred, ref = to_tensor(pred), to_tensor(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"shapes differ: {tuple(pred.shape)} vs {tuple(ref.shape)}")
    if mask is None:
        return pred.reshape(-1).double(), ref.reshape(-1).double()
    mask = to_tensor(mask).bool()
    return pred[mask].double(), ref[mask].double()


def psnr(pred: Array, ref: Array, mask: Array | None = None, data_range: float | None = None) -> float:
    """PSNR in dB inside ``mask``; data range = max - min of the REFERENCE inside the mask unless given."""
    p, r = _masked(pred, ref, mask)
    if r.numel() == 0:
        return math.nan
    rng = float(r.max() - r.min()) if data_range is None else float(data_range)
    mse = float(torch.mean((p - r) ** 2))
    if mse == 0:
        return math.inf
    return 10 * math.log10(rng**2 / mse) if rng > 0 and math.isfinite(mse) else math.nan


def nmse(pred: Array, ref: Array, mask: Array | None = None) -> float:
    """||pred - ref||^2 / ||ref||^2 inside ``mask`` (NaN when the reference is all zero there)."""
    p, r = _masked(pred, ref, mask)
    return ratio(float(torch.sum((p - r) ** 2)), float(torch.sum(r**2)))


def percentile_scale(volume: Array, mask: Array, low: float = SCALE_PERCENTILES[0],
                     high: float = SCALE_PERCENTILES[1]) -> np.ndarray:
    """``volume`` (any shape) scaled by ITS OWN ``low``/``high`` percentiles inside ``mask`` to [0, 1], clipped
    (float64, every voxel, inside the mask or not). The only intensity normalisation of the translation scores.

    A volume constant inside the mask (no contrast to scale) becomes all 0; an empty mask gives all 0 (every
    metric is then NaN: no voxel is scored); a non-finite value inside the mask gives all NaN.
    """
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles low={low}, high={high}: need 0 <= low < high <= 100")
    v = to_tensor(volume).double().numpy()
    m = to_bool_array(mask)
    if m.shape != v.shape:
        raise ValueError(f"mask shape {m.shape} != volume shape {v.shape}")
    inside = v[m]
    if not np.isfinite(inside).all():
        return np.full(v.shape, np.nan)
    if inside.size == 0:
        return np.zeros(v.shape)
    lo, hi = np.percentile(inside, [low, high])
    if not hi > lo:
        return np.zeros(v.shape)
    return np.clip((v - lo) / (hi - lo), 0.0, 1.0)


def image_metrics(pred: Array, ref: Array, mask: Array | None = None) -> dict[str, float]:
    """The translation scores of one image pair inside ``mask`` (default: everywhere), see the module
    docstring: PSNR, NMSE, SSIM after :func:`percentile_scale` of each volume with its own statistics
    (data range 1), then PSNR_raw, NMSE_raw, SSIM_raw on the given intensities."""
    pred, ref = to_tensor(pred).double().numpy(), to_tensor(ref).double().numpy()
    if pred.shape != ref.shape:
        raise ValueError(f"shapes differ: {pred.shape} vs {ref.shape}")
    mask = np.ones(ref.shape, bool) if mask is None else to_bool_array(mask)
    p, r = percentile_scale(pred, mask), percentile_scale(ref, mask)
    return {"PSNR": psnr(p, r, mask, 1.0), "NMSE": nmse(p, r, mask), "SSIM": ssim(p, r, mask, 1.0),
            "PSNR_raw": psnr(pred, ref, mask), "NMSE_raw": nmse(pred, ref, mask), "SSIM_raw": ssim(pred, ref, mask)}


def gaussian_1d(kernel_size: int = SSIM_KERNEL_SIZE, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """The normalised 1D Gaussian whose outer products form MONAI's SSIM kernel (same sampling)."""
    dist = np.arange((1 - kernel_size) / 2, (1 + kernel_size) / 2, 1.0)
    g = np.exp(-((dist / sigma) ** 2) / 2)
    return g / g.sum()


def _filter_valid(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable correlation of ``x`` with ``kernel`` along every axis, keeping only full ("valid") windows."""
    r = len(kernel) // 2
    for axis in range(x.ndim):
        x = ndimage.correlate1d(x, kernel, axis=axis, mode="constant")
        x = x[(slice(None),) * axis + (slice(r, x.shape[axis] - r),)]
    return x


def ssim_map(pred: np.ndarray, ref: np.ndarray, data_range: float, kernel_size: int = SSIM_KERNEL_SIZE,
             sigma: float = SSIM_SIGMA, k1: float = SSIM_K1, k2: float = SSIM_K2) -> np.ndarray:
    """SSIM at every valid window centre: shape ``ref.shape - (kernel_size - 1)`` (MONAI's ssim map)."""
    kernel = gaussian_1d(kernel_size, sigma)
    # SSIM is invariant to scaling both images and the range together: work in units of the data range.
    x = np.asarray(pred, np.float64) / data_range
    y = np.asarray(ref, np.float64) / data_range
    c1, c2 = k1**2, k2**2
    mu_x, mu_y = _filter_valid(x, kernel), _filter_valid(y, kernel)
    sigma_x = _filter_valid(x * x, kernel) - mu_x**2
    sigma_y = _filter_valid(y * y, kernel) - mu_y**2
    sigma_xy = _filter_valid(x * y, kernel) - mu_x * mu_y
    cs = (2 * sigma_xy + c2) / (sigma_x + sigma_y + c2)
    return (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs


def ssim(pred: Array, ref: Array, mask: Array | None = None, data_range: float | None = None,
         kernel_size: int = SSIM_KERNEL_SIZE) -> float:
    """Mean 3D SSIM over the window centres inside ``mask`` (see the module docstring).

    Only the bounding box of the mask (plus half a window) is filtered: identical values, less work.
    """
    pred = to_tensor(pred).double().numpy()
    ref = to_tensor(ref).double().numpy()
    if pred.shape != ref.shape:
        raise ValueError(f"shapes differ: {pred.shape} vs {ref.shape}")
    mask = np.ones(ref.shape, bool) if mask is None else to_tensor(mask).bool().numpy()
    if not mask.any():
        return math.nan
    if data_range is None:
        data_range = float(ref[mask].max() - ref[mask].min())
    if data_range <= 0 or not np.isfinite(pred[mask]).all():
        return math.nan
    r = kernel_size // 2
    nz = np.nonzero(mask)
    box = tuple(slice(max(int(i.min()) - r, 0), min(int(i.max()) + r + 1, s)) for i, s in zip(nz, mask.shape))
    if any(b.stop - b.start < kernel_size for b in box):
        return math.nan
    values = ssim_map(pred[box], ref[box], data_range, kernel_size)
    inner = mask[box][tuple(slice(r, b.stop - b.start - r) for b in box)]
    return float(values[inner].mean()) if inner.any() else math.nan
