"""Voxel metrics against hand-computed values on tiny arrays, and against MONAI where MONAI has them."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import PSNRMetric, compute_dice, get_confusion_matrix
from monai.metrics.regression import compute_ssim_and_cs

from pirl_pipeline.evaluation.metrics import confusion, dice, nmse, overlap_metrics, psnr, ssim, ssim_map


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
