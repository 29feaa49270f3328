"""BraTS 2023 lesion-wise Dice and HD95: hand-computed small cases, and the challenge's reference code on a
real label map."""
from __future__ import annotations

import numpy as np
import pytest

from pirl_pipeline.evaluation.lesionwise import lesionwise_metrics
from pirl_pipeline.evaluation.metrics import HD95_PENALTY_MM, hd95

SHAPE = (30, 30, 40)
ONE_MM = (1.0, 1.0, 1.0)


def cube(corner: tuple[int, int, int], size: int = 4) -> np.ndarray:
    m = np.zeros(SHAPE, bool)
    m[tuple(slice(c, c + size) for c in corner)] = True
    return m


def test_found_missed_and_false_positive_lesions():
    ref = cube((2, 2, 2)) | cube((20, 20, 30))  # two 64 mm^3 lesions (> 50 mm^3: both scored)
    pred = cube((2, 2, 2)) | cube((20, 2, 20), size=2)  # the first one exactly, plus a false positive
    result = lesionwise_metrics(pred, ref, ONE_MM)
    assert (result.num_tp, result.num_fn, result.num_fp) == (1, 1, 1)
    assert result.dice == pytest.approx((1 + 0 + 0) / 3)
    assert result.hd95 == pytest.approx((0 + HD95_PENALTY_MM + HD95_PENALTY_MM) / 3)
    assert [les.matched for les in result.lesions] == [(1,), ()]
    perfect = lesionwise_metrics(ref, ref, ONE_MM)
    assert (perfect.dice, perfect.hd95, perfect.num_fp) == (1.0, 0.0, 0)


def test_fragments_within_the_dilation_are_one_lesion():
    ref = cube((5, 5, 5)) | cube((5, 5, 11))  # a gap of 2 voxels: one lesion after dilation by 3
    pred = cube((5, 5, 5))
    result = lesionwise_metrics(pred, ref, ONE_MM)
    assert len(result.lesions) == 1 and result.lesions[0].volume_mm3 == 128
    assert result.dice == pytest.approx(2 * 64 / (64 + 128))
    assert result.hd95 == pytest.approx(hd95(pred, ref, ONE_MM))
    apart = lesionwise_metrics(pred, ref, ONE_MM, dilation=0)  # no dilation: two lesions, one missed
    assert len(apart.lesions) == 2 and apart.dice == pytest.approx(0.5)


def test_near_miss_is_matched_not_a_false_positive():
    ref, pred = cube((5, 5, 5)), cube((5, 5, 11))  # no overlap, 2 voxels apart: inside the dilated lesion
    result = lesionwise_metrics(pred, ref, ONE_MM)
    assert (result.num_tp, result.num_fp) == (1, 0) and result.dice == 0.0
    assert result.hd95 == pytest.approx(hd95(pred, ref, ONE_MM)) and result.hd95 < 10


def test_volume_threshold_in_mm3_and_empty_masks():
    small = cube((5, 5, 5), size=3)  # 27 voxels
    assert lesionwise_metrics(np.zeros(SHAPE, bool), small, ONE_MM).dice == 1.0  # 27 mm^3 <= 50: not scored
    missed = lesionwise_metrics(np.zeros(SHAPE, bool), small, (2.0, 2.0, 2.0))  # 216 mm^3: scored, missed
    assert (missed.dice, missed.hd95, missed.num_fn) == (0.0, HD95_PENALTY_MM, 1)
    empty = lesionwise_metrics(np.zeros(SHAPE, bool), np.zeros(SHAPE, bool), ONE_MM)
    assert (empty.dice, empty.hd95, empty.lesions) == (1.0, 0.0, ())
    only_fp = lesionwise_metrics(small, np.zeros(SHAPE, bool), ONE_MM)
    assert (only_fp.dice, only_fp.hd95, only_fp.num_fp) == (0.0, HD95_PENALTY_MM, 1)
    with pytest.raises(ValueError, match="one value per array axis"):
        lesionwise_metrics(small, small, (1.0, 1.0))


BRATS_2020_TO_2023 = np.array([0, 1, 2, 0, 3], np.uint8)  # label 4 (enhancing) -> 3
REGIONS = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}


def perturbed(ref: np.ndarray) -> np.ndarray:
    """A prediction with every kind of error: the second-largest reference fragment dropped (a missed
    lesion), the rest shifted, ET eroded, and four false-positive cubes (two ET, two ED)."""
    from scipy import ndimage

    components, _ = ndimage.label(ref > 0, np.ones((3, 3, 3)))
    pred = np.where(components == np.argsort(np.bincount(components.ravel())[1:])[-2] + 1, 0, ref)
    pred = np.roll(pred, (1, 2, -1), axis=(0, 1, 2))
    pred[(pred == 3) & ~ndimage.binary_erosion(pred == 3)] = 1
    for k, (z, y, x) in enumerate([(30, 40, 40), (120, 200, 60), (80, 50, 200), (140, 180, 190)]):
        pred[z - 2:z + 2, y - 2:y + 2, x - 2:x + 2] = 3 if k < 2 else 2
    return pred


# The BraTS 2023 reference code (rachitsaluja/BraTS-2023-Metrics metrics.py, get_LesionWiseResults with
# "BraTS-GLI": dilation 3, 50 mm^3) run on UPENN-GBM-00006_11's label map and perturbed() of it:
# (LesionWise_Score_Dice, LesionWise_Score_HD95, Num_TP, Num_FP, Num_FN). WT has a 55 mm^3 lesion that is
# missed, two lesions under 50 mm^3 and four false positives.
REFERENCE_CODE = {"WT": (0.1528203405017921, 312.0, 1, 4, 1), "TC": (0.29857022708158115, 250.0, 1, 2, 0),
                  "ET": (0.0838165524512388, 250.14982991426106, 1, 2, 0)}


def test_agrees_with_the_brats_reference_code_on_a_real_label_map(shared_data):
    from pirl_pipeline.data.image_io import read_array

    labels, geometry = read_array(shared_data / "upenn_gbm" / "UPENN-GBM-00006_11" / "UPENN-GBM-00006_11_SEG.nii.gz",
                                  np.int16)
    ref = BRATS_2020_TO_2023[labels]
    pred = perturbed(ref)
    for region, values in REGIONS.items():
        result = lesionwise_metrics(np.isin(pred, values), np.isin(ref, values), geometry.spacing)
        dice, distance, tp, fp, fn = REFERENCE_CODE[region]
        assert (result.num_tp, result.num_fp, result.num_fn) == (tp, fp, fn), region
        assert result.dice == pytest.approx(dice, abs=1e-12), region
        # HD95 by the reference's own definition (DeepMind surfels, area-weighted percentile; docs/design.md §8): 1e-3 mm
        assert result.hd95 == pytest.approx(distance, abs=1e-3), region
