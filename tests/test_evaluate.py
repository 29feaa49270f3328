"""pirl_evaluate: per-case functions on arrays, folder evaluation, summary files, and bad input."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from pirl_pipeline.cli.evaluate import main
from pirl_pipeline.data.dataset_json import DatasetJson
from pirl_pipeline.evaluation.evaluate import mean_table
from pirl_pipeline.evaluation.metrics import psnr, ssim
from pirl_pipeline.evaluation.segmentation import (
    evaluate_segmentation_folder,
    segmentation_metrics,
    segmentation_targets,
)
from pirl_pipeline.evaluation.translation import evaluate_translation_folder, reference_mask, translation_metrics
from tests.synthetic import MRI4, write_image

SHAPE = (6, 7, 8)
BRATS = DatasetJson(MRI4, {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [1, 3], "enhancing tumor": 3},
                    5, regions_class_order=[2, 1, 3], extra={"label_names": {"1": "NCR", "2": "ED", "3": "ET"}})


@pytest.fixture
def brats(pirl_raw):
    BRATS.save(pirl_raw / "Dataset501_BraTS")
    return pirl_raw / "Dataset501_BraTS"


def labels(seed: int) -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint8)
    lab[1:5, 2:6, 2:7] = 2
    lab[2:4, 3:5, 3:6] = 1
    lab[2:4, 3:5, 3] = 3 if seed % 2 == 0 else 1
    return lab


def test_targets_and_case_metrics_by_hand():
    assert segmentation_targets(BRATS) == {"NCR": (1,), "ED": (2,), "ET": (3,), "whole tumor": (1, 2, 3),
                                           "tumor core": (1, 3), "enhancing tumor": (3,)}
    ref = np.zeros((2, 5), np.uint8)
    ref[0, :4] = [1, 1, 2, 3]
    pred = np.zeros((2, 5), np.uint8)
    pred[0, :4] = [1, 2, 2, 0]
    m = segmentation_metrics(pred, ref, BRATS)
    assert m["Dice/NCR"] == pytest.approx(2 / 3) and m["Dice/ED"] == pytest.approx(2 / 3)
    assert m["Dice/ET"] == 0.0 and m["TPR/ET"] == 0.0 and m["FPR/ET"] == 0.0
    # WT: ref {0,1,2,3}, pred {0,1,2} -> TP 3, FN 1, TN 6
    assert m["Dice/whole tumor"] == pytest.approx(6 / 7) and m["TPR/whole tumor"] == pytest.approx(3 / 4)
    assert m["TNR/whole tumor"] == 1.0 and m["FNR/whole tumor"] == pytest.approx(1 / 4)
    plain = DatasetJson({"0": "CT"}, {"background": 0, "lesion": 1}, 1)
    assert segmentation_targets(plain) == {"lesion": (1,)}
    empty = segmentation_metrics(np.zeros(4), np.zeros(4), plain)
    assert empty["Dice/lesion"] == 1.0 and math.isnan(empty["TPR/lesion"])


def test_seg_cli_writes_summary(brats, tmp_path, run_cli):
    ref, pred = tmp_path / "labelsTs", tmp_path / "pred"
    for i in range(3):
        write_image(labels(i), ref / f"case{i}.nii.gz")
        write_image(labels(i) if i < 2 else np.zeros(SHAPE, np.uint8), pred / f"case{i}.nii.gz")
    code, err = run_cli(main, ["-ref", ref, "-pred", pred, "-d", 501, "-t", "seg", "-np", 1])
    assert code == 0, err
    summary = json.loads((pred / "summary.json").read_text())
    assert summary["num_cases"] == 3 and "Dice" in summary["metric_conventions"]
    assert summary["mean"]["whole tumor"]["Dice"] == pytest.approx(2 / 3)
    assert summary["per_case"][2]["metrics"]["tumor core"]["TPR"] == 0.0
    # case1 has no ET in either: Dice 1, TPR undefined (null), not counted in the TPR mean
    assert summary["per_case"][1]["metrics"]["ET"] == {"Dice": 1.0, "TPR": None, "TNR": 1.0, "FNR": None,
                                                       "FPR": 0.0}
    assert summary["count"]["ET"]["TPR"] == 2 and summary["mean"]["ET"]["TPR"] == pytest.approx(0.5)
    table = pd.read_csv(pred / "summary.csv", index_col="case")
    assert list(table.index) == ["case0", "case1", "case2"] and table.loc["case2", "Dice/ED"] == 0.0
    api = evaluate_segmentation_folder(ref, pred, brats / "dataset.json")
    pd.testing.assert_frame_equal(api, table, check_dtype=False, check_names=False)
    assert mean_table(api).loc["whole tumor", "Dice"] == pytest.approx(2 / 3)


def write_translation(tmp_path, shift=0.0, garbage=0.0):
    rng = np.random.default_rng(0)
    ref, pred = tmp_path / "imagesTs", tmp_path / "pred"
    shape = (14, 15, 16)
    body = np.zeros(shape, bool)
    body[2:12, 2:13, 2:14] = True
    arrays = {}
    for case in ("a", "b"):
        images = np.where(body, rng.random((4, *shape)) * 100 + 50, 0).astype(np.float32)
        arrays[case] = images
        for c in range(4):
            write_image(images[c], ref / f"{case}_{c:04d}.nii.gz")
        out = np.where(body, images[2] + shift, garbage).astype(np.float32)
        write_image(out, pred / f"{case}_0002.nii.gz")
    return ref, pred, arrays, body


def test_translate_cli_masks_without_patching(brats, tmp_path, run_cli):
    ref, pred, arrays, body = write_translation(tmp_path, shift=2.0, garbage=500.0)
    out = tmp_path / "scores" / "t.json"
    code, err = run_cli(main, ["-ref", ref, "-pred", pred, "-dj", brats / "dataset.json", "-t", "translate",
                               "-o", out, "-np", 1])
    assert code == 0, err
    summary = json.loads(out.read_text())
    assert set(summary["mean"]) == {"T2"}  # only the predicted channel
    a = arrays["a"][2][body]
    assert summary["per_case"][0]["metrics"]["T2"]["PSNR"] == pytest.approx(
        10 * math.log10(float(a.max() - a.min()) ** 2 / 4.0), rel=1e-5)
    # the background garbage is outside the mask for PSNR but seen by SSIM windows at the edge
    expected = ssim(np.where(body, arrays["a"][2] + 2, 500.0), arrays["a"][2], body)
    assert summary["per_case"][0]["metrics"]["T2"]["SSIM"] == pytest.approx(expected, rel=1e-5)
    assert expected < ssim(np.where(body, arrays["a"][2] + 2, 0.0), arrays["a"][2], body)
    assert (tmp_path / "scores" / "t.csv").is_file() and not (pred / "summary.json").exists()


def test_translation_api_on_arrays(tmp_path, brats):
    ref, pred, arrays, body = write_translation(tmp_path)
    images = arrays["b"]
    assert np.array_equal(reference_mask(images), body)
    m = translation_metrics(images[1:3], images[1:3], reference_mask(images), ["T1ce", "T2"])
    assert m["PSNR/T2"] == math.inf and m["NMSE/T1ce"] == 0.0 and m["SSIM/T2"] == pytest.approx(1.0)
    assert translation_metrics(images[2] * 0.5, images[2])["PSNR/0"] == pytest.approx(
        psnr(images[2] * 0.5, images[2], body))
    table = evaluate_translation_folder(ref, pred, 501, num_processes=2)
    assert list(table.columns) == ["PSNR/T2", "NMSE/T2", "SSIM/T2"] and (table["NMSE/T2"] == 0).all()


def error_of(run_cli, argv) -> str:
    code, err = run_cli(main, [str(a) for a in argv])
    assert code == 2, err
    assert err.startswith("error: "), err
    return err


def test_bad_input(brats, tmp_path, run_cli):
    ref, pred = tmp_path / "labelsTs", tmp_path / "pred"
    base = ["-ref", ref, "-pred", pred, "-d", 501, "-t", "seg", "-np", 1]
    assert "reference folder not found" in error_of(run_cli, base)
    for i in range(3):
        write_image(labels(i), ref / f"case{i}.nii.gz")
    for i in (1, 2, 3):
        write_image(labels(i), pred / f"case{i}.nii.gz")
    err = error_of(run_cli, base)
    assert "have no prediction" in err and "case0" in err and "no reference" in err and "case3" in err
    (pred / "case3.nii.gz").unlink()
    write_image(labels(0), pred / "case0.nii.gz", spacing=(1.0, 1.0, 2.0))
    err = error_of(run_cli, base)
    assert "case0.nii.gz" in err and "grid" in err and "spacing" in err
    write_image(labels(0) * 2, pred / "case0.nii.gz")
    assert "label value(s) [4, 6]" in error_of(run_cli, base)
    write_image(labels(0), pred / "case0.nii.gz")
    assert "inside the reference folder" in error_of(run_cli, [*base, "-o", ref / "summary.json"])
    assert "no dataset with id 777" in error_of(run_cli, [*base[:5], 777, *base[6:]])
    assert not list(pred.glob("summary*")) and not list(ref.glob("summary*"))
    assert run_cli(main, base)[0] == 0 and (pred / "summary.csv").is_file()


def test_translate_bad_input(brats, tmp_path, run_cli):
    ref, pred, _, _ = write_translation(tmp_path)
    (pred / "b_0002.nii.gz").unlink()
    err = error_of(run_cli, ["-ref", ref, "-pred", pred, "-d", 501, "-t", "translate", "-np", 1])
    assert "1 reference case(s) have no prediction" in err and ": b" in err
    (ref / "b_0001.nii.gz").rename(pred / "b_0001.nii.gz")
    err = error_of(run_cli, ["-ref", ref, "-pred", pred, "-d", 501, "-t", "translate", "-np", 1])
    assert "b_0001.nii.gz: no reference image for channel 0001" in err
