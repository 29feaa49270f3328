"""Voxel and surface metrics on numpy arrays or torch tensors: overlap (Dice, TPR, TNR, FNR, FPR), case-level
detection (CaseTPR, CaseTNR) and surface distances (HD95, NSD; MONAI); image similarity (PSNR, NMSE, 3D SSIM) is
computed in :mod:`pirl_pipeline.evaluation.image_similarity`, its conventions stated here with the others.

Conventions (also written into every ``summary.json``, see :data:`CONVENTIONS`):

- Overlap metrics come from the confusion counts TP, FP, FN, TN of two boolean masks (exact integer counts).
  Dice = 2TP / (2TP + FP + FN) is **1 when prediction and reference are both empty** and 0 when only one of
  them is (BraTS convention; nnU-Net reports NaN for "both empty", 1 keeps case means finite and rewards a
  correct empty prediction). TPR = TP / (TP + FN) and FNR = FN / (TP + FN) = 1 - TPR are **NaN when the
  reference is empty** (no positives: sensitivity is undefined), TNR = TN / (TN + FP) and
  FPR = FP / (TN + FP) = 1 - TNR are NaN when the reference has no negatives. Means over cases skip NaN.
- Empty reference, two policies (:data:`EMPTY_REFERENCE`, applied by :func:`apply_empty_reference`):
  ``"one_if_both_empty"`` keeps the values above (BraTS: a region absent from the reference and the
  prediction scores Dice 1, HD95 0); ``"exclude"`` sets every metric that needs a reference lesion (Dice,
  HD95, NSD, lesion-wise Dice/HD95) to NaN for such a case, so it is skipped in the means and judged by
  CaseTNR instead (AutoPET-like data where many cases are lesion-free: rewarding those with Dice 1 would
  swamp the Dice of the cases that have lesions).
- Case-level detection (the paper's Tables 7/8), one 0/1 value per case so that the case mean is a rate:
  CaseTPR = 1 when the reference is non-empty and the prediction overlaps it by >= 1 voxel, 0 when it does
  not, NaN when the reference is empty; CaseTNR = 1 when the reference is empty and so is the prediction,
  0 when the prediction is not, NaN when the reference is non-empty.
- Surface metrics, in mm from the voxel spacing (anisotropic spacing honoured), by the definitions of
  DeepMind's surface-distance library, which the BraTS 2023 reference code uses: each mask's surface is a set
  of sub-voxel surface elements (surfels: one per 2x2x2 neighbourhood that is neither all inside nor all
  outside, its area by marching cubes from the spacing), and every surfel has a distance to the other
  surface. They come from the MONAI functions behind ``get_edge_surface_distance(use_subvoxels=True)``
  (``get_mask_edges`` with the spacing, ``get_surface_distance``), once for both metrics, on the bounding box
  of prediction | reference. HD95 = max of the two directed 95th percentiles, each weighted by surfel area
  (``compute_robust_hausdorff(., 95)``: the smallest distance within which >= 95 % of the surface area lies,
  no interpolation); 0 when both masks are empty, :data:`HD95_PENALTY_MM` (374 mm, BraTS 2023's value for an
  infinite distance) when only one is. NSD (normalised surface Dice, ``compute_surface_dice_at_tolerance``)
  = surfel area of both surfaces within ``tolerance_mm`` of the other surface / total surfel area of both
  (default :data:`NSD_TOLERANCE_MM`: one voxel of the 1 mm BraTS grid); 0 when only one mask is empty, NaN
  when both are (undefined: no surface; means over cases skip it and count the cases with a value).
  ``tests/test_metrics_reference.py`` checks both, whole-target and lesion-wise, against the reference
  code's values on 55 real-label pairs (``../shared/metrics_reference``).
- Image metrics are computed inside a mask (the whole array when none is given) and never modify the
  prediction. The data range is ``max - min`` of the REFERENCE inside the mask (unless given).
  PSNR = 10 log10(range^2 / MSE) dB (+inf when MSE = 0, NaN when the range is 0);
  NMSE = sum((pred - ref)^2) / sum(ref^2) (NaN when the reference is all zero).
- Translation scores (:func:`image_metrics`) come in two sets. The default ``PSNR``/``NMSE``/``SSIM`` are
  computed after :func:`percentile_scale` has put each volume — prediction and reference, each with ITS
  OWN 0.5/99.5 percentiles inside the reference mask — on [0, 1] (clipped), with data range 1 (BraTS
  2023 synthesis convention: MRI has no absolute unit, so a synthesis that is right up to a gain and an
  offset scores as right). ``PSNR_raw``/``NMSE_raw``/``SSIM_raw`` are the same metrics on the unmodified
  intensities with the reference's data range (comparable with papers that score scanner units).
- SSIM is the 3D SSIM of MONAI's ``compute_ssim_and_cs`` (Gaussian window 11^3, sigma 1.5, k1 0.01,
  k2 0.03, "valid" windows only: no padding), averaged over the window centres that lie in the mask. It is
  evaluated with a separable filter (scipy, float64) instead of MONAI's dense 11^3 convolution: the same
  numbers (checked against MONAI in the tests) about 15x faster.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import get_mask_edges, get_surface_distance
from scipy import ndimage

from pirl_pipeline.data.modalities import EMPTY_REFERENCE  # the two policies; a dataset's kinds choose its default
from pirl_pipeline.evaluation.arrays import Array, ratio, to_bool_array
from pirl_pipeline.evaluation.image_similarity import (
    SCALE_PERCENTILES,
    SSIM_K1,
    SSIM_K2,
    SSIM_KERNEL_SIZE,
    SSIM_SIGMA,
)

OVERLAP_METRICS = ("Dice", "TPR", "TNR", "FNR", "FPR")
DETECTION_METRICS = ("CaseTPR", "CaseTNR")
SURFACE_METRICS = ("HD95", "NSD")
HD95_PENALTY_MM = 374.0
NSD_TOLERANCE_MM = 1.0
# metrics that compare against a reference lesion: NaN for an empty reference under the "exclude" policy
NEEDS_REFERENCE_LESION = ("Dice", "HD95", "NSD", "LesionDice", "LesionHD95")

_NORMALISED = (f"after percentile_scale: each volume (prediction and reference separately) mapped by its own "
               f"{SCALE_PERCENTILES[0]}/{SCALE_PERCENTILES[1]} percentiles inside the mask to [0, 1], clipped; "
               f"data range 1")
_RAW = "on the unmodified intensities; data range = max-min of the reference inside the mask"
_SSIM = (f"3D SSIM (MONAI compute_ssim_and_cs: gaussian window {SSIM_KERNEL_SIZE}, sigma {SSIM_SIGMA}, k1 {SSIM_K1}, "
         f"k2 {SSIM_K2}, valid windows only) averaged over the window centres inside the mask; NaN if no mask "
         f"voxel is {SSIM_KERNEL_SIZE // 2}+ voxels from the border")
CONVENTIONS = {
    "Dice": "2TP/(2TP+FP+FN); 1 if reference and prediction are both empty, 0 if only one of them is "
            "(empty_reference='exclude': NaN whenever the reference is empty)",
    "TPR": "sensitivity TP/(TP+FN); NaN (null) if the reference is empty",
    "FNR": "FN/(TP+FN) = 1-TPR; NaN (null) if the reference is empty",
    "TNR": "specificity TN/(TN+FP) over all voxels of the image (scan background included); NaN (null) if "
           "the reference has no background",
    "FPR": "FP/(TN+FP) = 1-TNR; NaN (null) if the reference has no background",
    "CaseTPR": "case-level detection: 1 if the reference is non-empty and the prediction overlaps it by >= 1 "
               "voxel, 0 if not; NaN if the reference is empty. Mean over cases = detection rate",
    "CaseTNR": "case-level: 1 if the reference is empty and the prediction is empty too, 0 if the prediction "
               "is not; NaN if the reference is non-empty. Mean over cases = fraction of lesion-free cases "
               "predicted lesion-free",
    "surface_definitions": "HD95, NSD and LesionHD95 follow DeepMind surface-distance as used by the BraTS 2023 "
                           "reference code (BraTS-2023-Metrics): sub-voxel surface elements (surfels) with "
                           "marching-cubes areas, distances in mm from the voxel spacing (anisotropic honoured), "
                           "computed with MONAI get_mask_edges(spacing) and get_surface_distance, i.e. "
                           "get_edge_surface_distance(use_subvoxels=True)",
    "HD95": f"DeepMind compute_robust_hausdorff(., 95) in mm: max of the two directed 95th percentiles of the "
            f"surfel distances, each weighted by surfel area (no interpolation); 0 if both masks are empty, "
            f"{HD95_PENALTY_MM:g} if only one is (BraTS 2023); empty_reference='exclude': NaN whenever the "
            f"reference is empty",
    "NSD": "normalised surface Dice, DeepMind compute_surface_dice_at_tolerance: surfel area of both surfaces "
           "within the tolerance (mm, see nsd_tolerance_mm) of the other surface / total surfel area; NaN "
           "(null; undefined) if both masks are empty, 0 if only one is; empty_reference='exclude': NaN "
           "whenever the reference is empty",
    "LesionDice": "BraTS 2023 lesion-wise Dice (see pirl_pipeline.evaluation.lesionwise): mean Dice over the "
                  "reference lesions above the volume threshold plus 0 for each false-positive predicted "
                  "component; 1 if there are neither",
    "LesionHD95": f"BraTS 2023 lesion-wise HD95 in mm: as LesionDice, with HD95 per lesion ({HD95_PENALTY_MM:g} for "
                  f"a missed lesion and for each false-positive component; per lesion the HD95 above); 0 if "
                  f"there are neither",
    "empty_reference": "policy for a target absent from the reference: 'one_if_both_empty' (values above) or "
                       "'exclude' (Dice, HD95, NSD, LesionDice, LesionHD95 NaN; judged by CaseTNR); the policy "
                       "used is in this summary's segmentation_options",
    "PSNR": f"10*log10(1/MSE) in dB inside the mask, {_NORMALISED}; 'inf' if MSE = 0",
    "NMSE": f"sum((pred-ref)^2)/sum(ref^2) inside the mask, {_NORMALISED}",
    "SSIM": f"{_SSIM}; {_NORMALISED}",
    "PSNR_raw": f"10*log10(range^2/MSE) in dB inside the mask, {_RAW}; 'inf' if MSE = 0",
    "NMSE_raw": f"sum((pred-ref)^2)/sum(ref^2) inside the mask, {_RAW}",
    "SSIM_raw": f"{_SSIM}; {_RAW}",
    "mask": "union of the non-zero voxels of the case's reference images (all reference channels); the "
            "prediction is used as is, never patched with reference voxels",
    "aggregation": "mean and std (sample, ddof=1) over cases, NaN values skipped; 'count' = cases with a value",
}


def confusion(pred: Array, ref: Array) -> tuple[float, float, float, float]:
    """TP, FP, FN, TN of two boolean masks of the same shape (exact counts, returned as floats)."""
    pred, ref = to_bool_array(pred), to_bool_array(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"shapes differ: {tuple(pred.shape)} vs {tuple(ref.shape)}")
    tp = np.count_nonzero(pred & ref)
    fp = np.count_nonzero(pred) - tp
    fn = np.count_nonzero(ref) - tp
    return float(tp), float(fp), float(fn), float(pred.size - tp - fp - fn)


def rates(tp: float, fp: float, fn: float, tn: float) -> dict[str, float]:
    """Dice, TPR, TNR, FNR, FPR from confusion counts, with the empty-mask conventions of this module."""
    return {"Dice": 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn),
            "TPR": ratio(tp, tp + fn), "TNR": ratio(tn, tn + fp),
            "FNR": ratio(fn, tp + fn), "FPR": ratio(fp, tn + fp)}


def overlap_metrics(pred: Array, ref: Array) -> dict[str, float]:
    """Dice, TPR, TNR, FNR, FPR of boolean masks ``pred`` against ``ref``."""
    return rates(*confusion(pred, ref))


def dice(pred: Array, ref: Array) -> float:
    """Dice of two boolean masks; 1 when both are empty."""
    return rates(*confusion(pred, ref))["Dice"]


def check_empty_reference(policy: str) -> str:
    """``policy`` if it is one of :data:`EMPTY_REFERENCE`, else a ValueError naming the choices."""
    if policy not in EMPTY_REFERENCE:
        raise ValueError(f"empty_reference {policy!r}: choose one of {', '.join(map(repr, EMPTY_REFERENCE))}")
    return policy


def detection(tp: float, fp: float, fn: float) -> dict[str, float]:
    """CaseTPR (lesion present: overlapped by >= 1 voxel?) and CaseTNR (lesion-free: predicted empty?) as 0/1,
    NaN where undefined, from confusion counts."""
    if tp + fn > 0:
        return {"CaseTPR": 1.0 if tp > 0 else 0.0, "CaseTNR": math.nan}
    return {"CaseTPR": math.nan, "CaseTNR": 1.0 if fp == 0 else 0.0}


def apply_empty_reference(scores: dict[str, float], reference_empty: bool, policy: str) -> dict[str, float]:
    """``scores`` of one target under the empty-reference ``policy``: with ``"exclude"`` and an empty
    reference, the metrics of :data:`NEEDS_REFERENCE_LESION` become NaN; otherwise unchanged."""
    if check_empty_reference(policy) == "exclude" and reference_empty:
        return {k: math.nan if k in NEEDS_REFERENCE_LESION else v for k, v in scores.items()}
    return dict(scores)


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """Slices of the smallest box holding every True voxel of ``mask``, grown by ``margin`` voxels (clipped
    to the array); None for an empty mask."""
    box = ndimage.find_objects(mask.astype(np.uint8, copy=False))
    if not box:
        return None
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box[0], mask.shape))


def _mask_pair(pred: Array, ref: Array) -> tuple[np.ndarray, np.ndarray]:
    p, r = to_bool_array(pred), to_bool_array(ref)
    if p.shape != r.shape:
        raise ValueError(f"shapes differ: {p.shape} vs {r.shape}")
    return p, r


_Surfaces = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _surfaces(p: np.ndarray, r: np.ndarray, spacing: Sequence[float]) -> _Surfaces:
    """``((distances, areas) of the prediction's surfels to the reference surface, the same reference ->
    prediction)`` in mm and mm^2, both masks non-empty: DeepMind's ``compute_surface_distances`` by the two MONAI
    functions behind ``get_edge_surface_distance(use_subvoxels=True)``: ``get_mask_edges(spacing=...)`` (a surfel
    per 2x2x2 neighbourhood that is neither all in nor all out, its area by marching cubes from the spacing)
    and ``get_surface_distance`` (distances between the surfel positions; KD-tree). They run on the bounding
    box of p | r padded with one voxel of background, as MONAI's own crop does: the surfels and distances of
    the full grid. Called directly, without that crop (MONAI MetaTensors), they cost half as much for the same
    numbers (checked in the tests): a BraTS case, 6 targets with lesion-wise, 2.0 instead of 4.4 s."""
    if len(spacing) != r.ndim:
        raise ValueError(f"spacing {tuple(spacing)}: need one value per array axis ({r.ndim})")
    box = bounding_box(p | r)
    p, r = (torch.from_numpy(np.pad(x[box], 1)) for x in (p, r))
    spacing = [float(s) for s in spacing]
    edges_p, edges_r, areas_p, areas_r = (t.numpy() for t in get_mask_edges(p, r, crop=False, spacing=spacing))
    return ((np.asarray(get_surface_distance(edges_p, edges_r, "euclidean", spacing), np.float64),
             areas_p[edges_p].astype(np.float64)),
            (np.asarray(get_surface_distance(edges_r, edges_p, "euclidean", spacing), np.float64),
             areas_r[edges_r].astype(np.float64)))


def _weighted_percentile(distances: np.ndarray, areas: np.ndarray, q: float) -> float:
    """The smallest distance whose surfels, with all nearer ones, hold >= ``q`` % of the surface area
    (DeepMind's ``compute_robust_hausdorff`` for one direction; no interpolation)."""
    order = np.argsort(distances, kind="stable")
    cumulative = np.cumsum(areas[order]) / areas.sum()
    return float(distances[order][min(int(np.searchsorted(cumulative, q / 100.0)), len(distances) - 1)])


def _hd95(surfaces: _Surfaces) -> float:
    # fix: surfel-area-weighted 95th percentile of sub-voxel surfel distances (DeepMind/BraTS), was edge voxels
    return max(_weighted_percentile(d, a, 95.0) for d, a in surfaces)


def _nsd(surfaces: _Surfaces, tolerance_mm: float) -> float:
    # fix: surfel area of both surfaces within the tolerance / total surfel area (DeepMind), was edge-voxel counts
    return sum(float(a[d <= tolerance_mm].sum()) for d, a in surfaces) / sum(float(a.sum()) for _, a in surfaces)


def hd95(pred: Array, ref: Array, spacing: Sequence[float]) -> float:
    """95th-percentile Hausdorff distance in mm (``spacing``: one value per array axis; surfel-area weighted,
    see the module docstring) of two boolean masks; 0 when both are empty, :data:`HD95_PENALTY_MM` when only
    one is."""
    return surface_metrics(pred, ref, spacing)["HD95"]


def surface_dice(pred: Array, ref: Array, spacing: Sequence[float], tolerance_mm: float = NSD_TOLERANCE_MM) -> float:
    """Normalised surface Dice at ``tolerance_mm`` (surfel areas); NaN when both masks are empty, 0 when only
    one is."""
    return surface_metrics(pred, ref, spacing, tolerance_mm)["NSD"]


def surface_metrics(pred: Array, ref: Array, spacing: Sequence[float],
                    tolerance_mm: float = NSD_TOLERANCE_MM) -> dict[str, float]:
    """HD95 (mm) and NSD of two 3D (or 2D) boolean masks from one pass of MONAI's sub-voxel surface distances,
    with the empty-mask values of the module docstring."""
    p, r = _mask_pair(pred, ref)
    if not (p.any() and r.any()):
        one_empty = bool(p.any() or r.any())
        # fix: NSD is NaN (undefined, DeepMind's 0/0) when both masks are empty, was 1
        return {"HD95": HD95_PENALTY_MM if one_empty else 0.0, "NSD": 0.0 if one_empty else math.nan}
    surfaces = _surfaces(p, r, spacing)
    return {"HD95": _hd95(surfaces), "NSD": _nsd(surfaces, tolerance_mm)}
