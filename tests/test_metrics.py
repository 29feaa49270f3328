"""Voxel, surface and image metrics against hand-computed values on tiny arrays, and against MONAI where MONAI
has them."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import (
    PSNRMetric,
    compute_dice,
    compute_surface_dice,
    get_confusion_matrix,
)
from monai.metrics.regression import compute_ssim_and_cs

from pirl_pipeline.evaluation.image_similarity import image_metrics, nmse, percentile_scale, psnr, ssim, ssim_map
from pirl_pipeline.evaluation.metrics import (
    HD95_PENALTY_MM,
    apply_empty_reference,
    confusion,
    detection,
    dice,
    hd95,
    overlap_metrics,
    surface_dice,
)


def mask(*on: int, n: int = 10) -> np.ndarray:
    m = np.zeros(n, bool)
    m[list(on)] = True
    return m


def test_perfect_prediction():
    ref = mask(1, 2, 3)
    assert overlap_metrics(ref, ref) == {"Dice": 1.0, "TPR": 1.0, "TNR": 1.0, "FNR": 0.0, "FPR": 0.0}


def test_empty_prediction():
    assert overlap_metrics(mask(), mask(1, 2)) == {"Dice": 0.0, "TPR": 0.0, "TNR": 1.0, "FNR": 1.0, "FPR": 0.0}


def test_empty_reference():
    m = overlap_metrics(mask(4, 5), mask())
    assert m["Dice"] == 0.0 and math.isnan(m["TPR"]) and math.isnan(m["FNR"])
    assert m["TNR"] == pytest.approx(8 / 10) and m["FPR"] == pytest.approx(2 / 10)


def test_both_empty_and_all_foreground():
    m = overlap_metrics(mask(), mask())
    assert m["Dice"] == 1.0 and math.isnan(m["TPR"]) and m["TNR"] == 1.0 and m["FPR"] == 0.0
    full = np.ones(5, bool)
    m = overlap_metrics(full, full)
    assert m["Dice"] == 1.0 and m["TPR"] == 1.0 and math.isnan(m["TNR"]) and math.isnan(m["FPR"])


def test_known_partial_overlap():
    # ref {0,1,2,3}, pred {2,3,4}: TP 2, FP 1, FN 2, TN 5
    pred, ref = mask(2, 3, 4), mask(0, 1, 2, 3)
    assert confusion(pred, ref) == (2.0, 1.0, 2.0, 5.0)
    m = overlap_metrics(pred, ref)
    assert m["Dice"] == pytest.approx(4 / 7) and m["TPR"] == pytest.approx(0.5) and m["FNR"] == pytest.approx(0.5)
    assert m["TNR"] == pytest.approx(5 / 6) and m["FPR"] == pytest.approx(1 / 6)


def test_overlap_agrees_with_monai():
    rng = np.random.default_rng(0)
    pred, ref = rng.random((7, 8, 9)) > 0.6, rng.random((7, 8, 9)) > 0.5
    y_pred = torch.as_tensor(pred)[None, None].float()
    y = torch.as_tensor(ref)[None, None].float()
    tp, fp, tn, fn = get_confusion_matrix(y_pred, y)[0, 0].tolist()
    assert confusion(pred, ref) == (tp, fp, fn, tn)
    assert dice(pred, ref) == pytest.approx(float(compute_dice(y_pred, y)))


def test_torch_inputs_still_work():
    # pirl_pipeline.training.downstream calls dice/psnr on torch tensors
    a = torch.tensor([[True, False], [True, True]])
    assert dice(a, a) == 1.0 and dice(a, ~a) == 0.0
    x = torch.arange(5.0)
    assert psnr(x + 1, x) == pytest.approx(10 * math.log10(16))


def test_psnr_of_known_mse_inside_mask():
    ref = np.array([0.0, 1, 2, 3, 4, 0])
    pred = ref + 1
    pred[5] = 1000.0  # outside the mask: ignored
    inside = np.array([1, 1, 1, 1, 1, 0], bool)
    # MSE 1, range 4 -> 10 log10(16)
    assert psnr(pred, ref, inside) == pytest.approx(10 * math.log10(16))
    assert psnr(pred, ref, inside, data_range=2.0) == pytest.approx(10 * math.log10(4))
    assert psnr(ref, ref, inside) == math.inf
    monai = PSNRMetric(max_val=4.0)(torch.tensor(pred[:5])[None, None], torch.tensor(ref[:5])[None, None])
    assert psnr(pred, ref, inside) == pytest.approx(float(monai))
    assert math.isnan(psnr(pred, ref, np.zeros(6, bool)))


def test_nmse():
    ref, pred = np.array([1.0, 2, 3, 7]), np.array([1.0, 2, 5, 0])
    assert nmse(pred, ref, np.array([1, 1, 1, 0], bool)) == pytest.approx(4 / 14)
    assert nmse(ref, ref) == 0.0 and math.isnan(nmse(ref, np.zeros(4)))


def test_ssim_identical_is_one_and_shift_is_lower():
    rng = np.random.default_rng(1)
    ref = rng.random((14, 15, 16)) * 100
    assert ssim(ref, ref) == pytest.approx(1.0)
    shifted = ssim(ref + 10, ref)
    assert 0 < shifted < 1
    # identical structure: only the luminance term drops
    assert ssim(ref + 10, ref) > ssim(ref + rng.normal(0, 10, ref.shape), ref)


def test_ssim_of_constant_images_by_hand():
    # no variance: contrast-structure term = c2/c2 = 1, luminance = (2ab + c1) / (a^2 + b^2 + c1)
    a, b, c1 = 0.6, 0.5, 0.01**2
    value = ssim(np.full((12, 12, 12), a), np.full((12, 12, 12), b), data_range=1.0)
    assert value == pytest.approx((2 * a * b + c1) / (a**2 + b**2 + c1))


def test_ssim_matches_monai():
    rng = np.random.default_rng(2)
    ref = rng.random((16, 17, 18)) * 50
    pred = ref + rng.normal(0, 5, ref.shape)
    rng_ = float(ref.max() - ref.min())
    monai, _ = compute_ssim_and_cs(torch.tensor(pred)[None, None], torch.tensor(ref)[None, None], 3,
                                   [11] * 3, [1.5] * 3, data_range=rng_)
    np.testing.assert_allclose(ssim_map(pred, ref, rng_), monai[0, 0].numpy(), atol=1e-5)
    assert ssim(pred, ref) == pytest.approx(float(monai.mean()), abs=1e-5)


def test_ssim_mask_uses_window_centres_in_mask():
    rng = np.random.default_rng(3)
    ref = rng.random((20, 22, 24))
    pred = ref + rng.normal(0, 0.1, ref.shape)
    m = np.zeros(ref.shape, bool)
    m[6:12, 4:15, 9:20] = True
    full = ssim_map(pred, ref, float(ref[m].max() - ref[m].min()))
    assert ssim(pred, ref, m) == pytest.approx(float(full[m[5:-5, 5:-5, 5:-5]].mean()))
    assert math.isnan(ssim(np.ones((8, 30, 30)), np.ones((8, 30, 30)), data_range=1.0))  # smaller than a window


def test_percentile_scale_uses_the_volumes_own_percentiles():
    volume = np.arange(1000.0).reshape(10, 10, 10)
    inside = volume < 800  # values 0..799 inside, 800..999 outside
    lo, hi = np.percentile(np.arange(800.0), [0.5, 99.5])
    scaled = percentile_scale(volume, inside)
    np.testing.assert_allclose(scaled[inside], np.clip((np.arange(800.0) - lo) / (hi - lo), 0, 1))
    assert scaled.min() == 0.0 and (scaled[~inside] == 1.0).all()  # outside: same map, clipped
    # invariant to gain and offset of the volume itself
    np.testing.assert_allclose(percentile_scale(volume * 3.5 + 40, inside), scaled, atol=1e-12)
    assert percentile_scale(volume, inside, 10, 90)[inside].mean() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="0 <= low < high <= 100"):
        percentile_scale(volume, inside, 60, 40)


def test_percentile_scale_edge_cases():
    inside = np.ones((4, 4, 4), bool)
    assert (percentile_scale(np.full((4, 4, 4), 7.0), inside) == 0).all()  # constant: no contrast to scale
    assert (percentile_scale(np.ones((4, 4, 4)), np.zeros((4, 4, 4), bool)) == 0).all()  # empty mask
    broken = np.ones((4, 4, 4))
    broken[1, 1, 1] = np.inf
    assert np.isnan(percentile_scale(broken, inside)).all()


def test_normalised_scores_ignore_gain_and_offset_raw_scores_do_not():
    rng = np.random.default_rng(4)
    ref = rng.random((14, 15, 16)) * 100
    m = image_metrics(ref * 3 + 50, ref)
    assert m["PSNR"] > 200 and m["NMSE"] == pytest.approx(0, abs=1e-20) and m["SSIM"] == pytest.approx(1.0)
    assert m["PSNR_raw"] == pytest.approx(psnr(ref * 3 + 50, ref)) and m["SSIM_raw"] < 0.5
    # the prediction is scaled by its own statistics only: the normalised scores do not move when the
    # reference is rescaled, and equal the metrics of the two separately scaled volumes
    pred = ref + rng.normal(0, 10, ref.shape)
    a, b = image_metrics(pred, ref), image_metrics(pred, ref * 0.01 - 7)
    for metric in ("PSNR", "NMSE", "SSIM"):
        assert a[metric] == pytest.approx(b[metric], rel=1e-9)
    everywhere = np.ones(ref.shape, bool)
    p, r = percentile_scale(pred, everywhere), percentile_scale(ref, everywhere)
    assert a["PSNR"] == pytest.approx(10 * math.log10(1 / np.mean((p - r) ** 2)))
    assert a["SSIM"] == pytest.approx(ssim(p, r, data_range=1.0))


def test_constant_prediction_scores_by_hand():
    rng = np.random.default_rng(5)
    ref = rng.random((12, 12, 12)) * 100
    m = image_metrics(np.full(ref.shape, 42.0), ref)
    r = percentile_scale(ref, np.ones(ref.shape, bool))
    assert m["PSNR"] == pytest.approx(10 * math.log10(1 / np.mean(r**2))) and m["NMSE"] == pytest.approx(1.0)


def test_empty_reference_policies_and_case_detection():
    lesion = {"Dice": 0.0, "TPR": math.nan, "HD95": 374.0, "NSD": 0.0, "LesionDice": 0.0, "TNR": 0.8}
    assert apply_empty_reference(lesion, True, "one_if_both_empty") == lesion
    excluded = apply_empty_reference(lesion, True, "exclude")
    assert all(math.isnan(excluded[k]) for k in ("Dice", "HD95", "NSD", "LesionDice")) and excluded["TNR"] == 0.8
    assert apply_empty_reference({"Dice": 0.5}, False, "exclude") == {"Dice": 0.5}
    with pytest.raises(ValueError, match="'one_if_both_empty', 'exclude'"):
        apply_empty_reference(lesion, True, "zero")
    # CaseTPR: lesion overlapped by >= 1 voxel; CaseTNR: lesion-free case predicted empty
    assert detection(*confusion(mask(3, 9), mask(3, 4, 5))[:3]) == {"CaseTPR": 1.0, "CaseTNR": pytest.approx(math.nan,
                                                                                                          nan_ok=True)}
    assert detection(*confusion(mask(6), mask(3, 4))[:3])["CaseTPR"] == 0.0
    assert detection(*confusion(mask(), mask())[:3])["CaseTNR"] == 1.0
    free = detection(*confusion(mask(1), mask())[:3])
    assert free["CaseTNR"] == 0.0 and math.isnan(free["CaseTPR"])


def test_surface_metrics_by_hand():
    """Single voxels: a voxel's surface is 8 surfels at its corners, all of the same area (marching cubes: one
    corner cut off per 2x2x2 neighbourhood, its area the same up to signs whatever the spacing)."""
    a, b = np.zeros((6, 6, 8), bool), np.zeros((6, 6, 8), bool)
    a[2, 2, 1], b[2, 2, 4] = True, True  # 3 voxels apart along the last axis, spacing 0.5 mm there
    spacing = (2.0, 1.0, 0.5)
    # a's corners lie at x = 0.5 and 1.5 (voxel units), b's at 3.5 and 4.5: each direction has 4 surfels at
    # 2 x 0.5 = 1.0 mm and 4 at 1.5 mm. HD95: half the area lies within 1.0 mm (< 95 %), all within 1.5 mm.
    assert hd95(a, b, spacing) == pytest.approx(1.5)
    # NSD at 1 mm: 8 of the 16 equal surfels. The edge-voxel definition (voxel centres 1.5 mm apart) gave 0.
    assert surface_dice(a, b, spacing, tolerance_mm=1.0) == pytest.approx(0.5)
    assert surface_dice(a, b, spacing, 0.9) == 0.0 and surface_dice(a, b, spacing, 1.5) == 1.0
    b[2, 2, 1] = True  # b = {1, 4}: a's 8 surfels and b's 8 around voxel 1 at 0, b's 8 around voxel 4 as above
    assert surface_dice(a, b, spacing, 1.0) == pytest.approx((8 + 8 + 4) / 24)  # edge voxels: 2/3
    assert hd95(a, b, spacing) == pytest.approx(1.5)  # b -> a: 4/16 of the area at 1.5 mm (> 5 %)
    empty = np.zeros_like(a)
    assert hd95(empty, empty, spacing) == 0.0 and math.isnan(surface_dice(empty, empty, spacing))  # NSD 0/0
    assert hd95(a, empty, spacing) == HD95_PENALTY_MM and surface_dice(empty, a, spacing) == 0.0


def test_hd95_weights_surfels_by_area_on_an_anisotropic_grid():
    """A 10 x 10 x 10 mm cube on a 2 x 2 x 0.2 mm grid (5 x 5 x 50 voxels); the prediction has one more
    0.2 mm layer on its +x face. Every surface point of the prediction coincides with one of the reference
    except those of its +x face (at x + 1 voxel), which lie exactly 0.2 mm from the reference's +x face; the
    reference's points are all within 0.2 mm of the prediction's surface. So each directed distance is 0 or
    0.2 mm, and HD95 = 0.2 mm as soon as the +x face holds more than 5 % of the prediction's surface AREA: it
    holds 100 of about 600 mm^2 (~17 %; marching cubes bevels the box's edges a little). Counted in edge
    voxels instead (the earlier definition), the face is 25 of 834 voxels (3 %) and ref -> pred 9 of 818
    (1 %): the 95th percentile was 0."""
    spacing = (2.0, 2.0, 0.2)
    ref = np.zeros((9, 9, 56), bool)
    ref[2:7, 2:7, 2:52] = True
    pred = ref.copy()
    pred[2:7, 2:7, 52] = True
    assert hd95(pred, ref, spacing) == pytest.approx(0.2, abs=1e-6)
    assert hd95(ref, pred, spacing) == pytest.approx(0.2, abs=1e-6)  # symmetric
    assert hd95(pred, ref, (2.0, 2.0, 0.5)) == pytest.approx(0.5, abs=1e-6)  # the spacing of the axis counts


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy")  # MONAI 1.6 warns about its own call
def test_surface_metrics_on_the_bounding_box_equal_those_on_the_full_grid():
    rng = np.random.default_rng(6)
    ref = np.zeros((40, 42, 44), bool)
    ref[8:20, 10:25, 12:30] = True
    ref[0:3, 0:4, 40:44] = True  # touches the grid's border: the box is padded there, as on a larger grid
    pred = np.roll(ref, 2, axis=0) & (rng.random(ref.shape) > 0.1)
    spacing = (1.5, 1.0, 0.8)
    full = [torch.as_tensor(x)[None, None] for x in (pred, ref)]
    expected = compute_surface_dice(*full, [2.0], include_background=True, spacing=list(spacing), use_subvoxels=True)
    assert surface_dice(pred, ref, spacing, 2.0) == pytest.approx(float(expected), rel=1e-6)
    padded = [np.pad(x, 3) for x in (pred, ref)]
    assert hd95(*padded, spacing) == hd95(pred, ref, spacing)
    assert surface_dice(*padded, spacing, 2.0) == surface_dice(pred, ref, spacing, 2.0)


def test_read_only_inputs_are_scored_without_a_torch_warning():
    """Memory-mapped (read-only) volumes: torch warns that a tensor over them is undefined behaviour."""
    rng = np.random.default_rng(0)
    ref = rng.random((8, 8, 8))
    pred = ref + 0.1
    frozen = [a.copy() for a in (pred, ref)]
    for a in frozen:
        a.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert psnr(*frozen) == pytest.approx(psnr(pred, ref))
        assert nmse(*frozen) == pytest.approx(nmse(pred, ref))
