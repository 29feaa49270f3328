"""Lesion-wise Dice and HD95, the ranking metrics of the BraTS 2023+ segmentation challenges.

Definition (that of the challenge's reference code, github.com/rachitsaluja/BraTS-2023-Metrics, metrics.py;
written anew here on scipy and MONAI), for one binary target (e.g. "whole tumor") of one case:

1. Reference lesions: the reference is dilated (``dilation`` iterations of the 18-neighbourhood, 3D) and the
   dilated mask is split into 26-connected components; the reference voxels of one dilated component form
   one lesion (nearby fragments count as one lesion; the reference itself is not changed).
2. Predicted components: 26-connected components of the prediction.
3. Each lesion is matched with every predicted component that touches the lesion dilated once more by
   ``dilation``; its Dice and HD95 (mm, :func:`pirl_pipeline.evaluation.metrics.hd95`: DeepMind's surfel-area
   weighted percentile, as in the reference code; :data:`HD95_PENALTY_MM` = 374 mm when nothing is matched)
   compare the lesion with the union of its matched components. A component may match several lesions.
4. False positives: predicted components matched by no lesion (small lesions included).
5. Lesions of volume <= ``min_volume_mm3`` are left out of the score (neither TP nor FN).
   LesionDice = sum of the Dice of the scored lesions / (scored lesions + false positives);
   LesionHD95 = (sum of their HD95 + 374 x false positives) / (scored lesions + false positives);
   1 and 0 when that denominator is 0 (no scored lesion, no false positive).

Defaults: :data:`LESION_DILATION` 3 and :data:`LESION_MIN_VOLUME_MM3` 50 (BraTS-GLI, also SSA and PED;
BraTS-MEN uses dilation 1 / 50 mm^3, BraTS-MET dilation 1 / 2 mm^3); ``dilation=0`` here means no
dilation (every 26-connected fragment is its own lesion). Dice, HD95 and the lesion counts equal the
reference code's on the 55 real-label pairs of ``../shared/metrics_reference`` (1 mm and anisotropic grids;
``tests/test_metrics_reference.py``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pirl_pipeline.evaluation.metrics import HD95_PENALTY_MM, Array, bounding_box, hd95

LESION_DILATION = 3
LESION_MIN_VOLUME_MM3 = 50.0
LESIONWISE_METRICS = ("LesionDice", "LesionHD95")


@dataclass(frozen=True)
class Lesion:
    """One reference lesion (after combining by dilation)."""

    volume_mm3: float
    dice: float
    hd95: float
    matched: tuple[int, ...]  # labels of the predicted components matched with it (1-based)
    scored: bool  # volume above the threshold: counted in the case's score


@dataclass(frozen=True)
class LesionwiseResult:
    """Lesion-wise scores of one target of one case."""

    dice: float  # LesionDice
    hd95: float  # LesionHD95, mm
    num_tp: int  # scored lesions with >= 1 matched component
    num_fn: int  # scored lesions with none
    num_fp: int  # predicted components matched by no lesion
    lesions: tuple[Lesion, ...]

    def as_metrics(self) -> dict[str, float]:
        return {"LesionDice": self.dice, "LesionHD95": self.hd95}


def _grow(box: tuple[slice, ...], margin: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box, shape))


def _union(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def lesionwise_metrics(pred: Array, ref: Array, spacing: Sequence[float], dilation: int = LESION_DILATION,
                       min_volume_mm3: float = LESION_MIN_VOLUME_MM3) -> LesionwiseResult:
    """Lesion-wise Dice and HD95 of two boolean masks (see the module docstring); ``spacing`` in mm per
    array axis. Dilations run on bounding boxes (same result as on the full grid)."""
    p, r = np.asarray(pred, bool), np.asarray(ref, bool)
    if p.shape != r.shape:
        raise ValueError(f"shapes differ: {p.shape} vs {r.shape}")
    if len(spacing) != r.ndim:
        raise ValueError(f"spacing {tuple(spacing)}: need one value per array axis ({r.ndim})")
    if int(dilation) != dilation or dilation < 0:
        raise ValueError(f"dilation {dilation}: need a whole number of iterations >= 0")
    voxel_mm3 = float(np.prod(spacing))
    connect = ndimage.generate_binary_structure(r.ndim, r.ndim)  # 26-connectivity in 3D
    grow = ndimage.generate_binary_structure(r.ndim, min(2, r.ndim))  # 18-neighbourhood dilation in 3D

    def dilate(mask: np.ndarray) -> np.ndarray:
        return ndimage.binary_dilation(mask, grow, iterations=dilation) if dilation else mask

    pred_cc, num_pred = ndimage.label(p, connect)
    lesions = np.zeros(r.shape, np.int32)
    box = bounding_box(r, margin=dilation)
    if box is not None:
        dilated_cc, _ = ndimage.label(dilate(r[box]), connect)
        lesions[box] = np.where(r[box], dilated_cc, 0)
    sizes = np.bincount(pred_cc.ravel(), minlength=num_pred + 1)
    pred_boxes = ndimage.find_objects(pred_cc)
    found, matched_any = [], set()
    for k, lesion_box in enumerate(ndimage.find_objects(lesions), start=1):
        near = _grow(lesion_box, dilation, r.shape)
        lesion = lesions[near] == k
        matched = tuple(int(c) for c in np.unique(pred_cc[near][dilate(lesion)]) if c)
        matched_any.update(matched)
        volume = float(lesion.sum())
        if matched:
            joint = near
            for c in matched:
                joint = _union(joint, pred_boxes[c - 1])
            lesion_j, pred_j = lesions[joint] == k, np.isin(pred_cc[joint], matched)
            dice = 2.0 * float((lesion_j & pred_j).sum()) / (volume + float(sizes[list(matched)].sum()))
            distance = hd95(pred_j, lesion_j, spacing)  # fix: DeepMind surfel HD95 as the reference, was edge voxels
        else:
            dice, distance = 0.0, HD95_PENALTY_MM
        found.append(Lesion(volume * voxel_mm3, dice, distance, matched, volume * voxel_mm3 > min_volume_mm3))
    scored = [les for les in found if les.scored]
    num_fp = num_pred - len(matched_any)
    denominator = len(scored) + num_fp
    if denominator == 0:
        dice, distance = 1.0, 0.0
    else:
        dice = sum(les.dice for les in scored) / denominator
        distance = (sum(les.hd95 for les in scored) + HD95_PENALTY_MM * num_fp) / denominator
    num_tp = sum(1 for les in scored if les.matched)
    return LesionwiseResult(dice, distance, num_tp, len(scored) - num_tp, num_fp, tuple(found))
