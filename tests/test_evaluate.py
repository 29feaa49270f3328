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
from pirl_pipeline.evaluation.metrics import HD95_PENALTY_MM
from pirl_pipeline.evaluation.segmentation import (
    SegmentationOptions,
    default_empty_reference,
    evaluate_segmentation_folder,
    segmentation_metrics,
    segmentation_targets,
)
from tests.evaluate_helpers import BRATS, SHAPE, error_of, labels
from tests.synthetic import MRI4, write_image


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
    assert empty["CaseTNR/lesion"] == 1.0 and math.isnan(empty["CaseTPR/lesion"]) and "HD95/lesion" not in empty
    # case-level detection: ET missed entirely, NCR touched by one voxel
    assert m["CaseTPR/ET"] == 0.0 and m["CaseTPR/NCR"] == 1.0 and math.isnan(m["CaseTNR/ET"])


def test_distance_metrics_and_empty_reference_policy_on_arrays():
    ref = np.zeros((10, 12, 14), np.uint8)
    ref[2:6, 3:8, 4:9] = 2  # ED 100 voxels
    pred = np.roll(ref, 1, axis=2)  # shifted by one voxel along x (2 mm)
    pred[8, 10, 12] = 3  # a stray ET voxel: ET is absent from the reference
    spacing = (1.0, 1.0, 2.0)
    m = segmentation_metrics(pred, ref, BRATS, spacing=spacing)
    assert m["HD95/ED"] == pytest.approx(2.0) and m["NSD/ED"] < 1 and m["LesionDice/ED"] == pytest.approx(0.8)
    assert m["LesionHD95/ED"] == pytest.approx(2.0)  # 200 mm^3, found: one lesion, no false positive
    # ET: reference empty, prediction not -> BraTS convention: Dice 0, HD95 374, one false-positive component
    assert (m["Dice/ET"], m["HD95/ET"], m["NSD/ET"], m["CaseTNR/ET"]) == (0.0, HD95_PENALTY_MM, 0.0, 0.0)
    assert (m["LesionDice/ET"], m["LesionHD95/ET"]) == (0.0, HD95_PENALTY_MM)
    assert m["Dice/NCR"] == 1.0 and m["HD95/NCR"] == 0.0 and m["LesionDice/NCR"] == 1.0  # absent from both
    excluded = segmentation_metrics(pred, ref, BRATS, spacing=spacing,
                                    options=SegmentationOptions(empty_reference="exclude"))
    for metric in ("Dice", "HD95", "NSD", "LesionDice", "LesionHD95"):
        assert math.isnan(excluded[f"{metric}/ET"]) and math.isnan(excluded[f"{metric}/NCR"])
    assert excluded["CaseTNR/ET"] == 0.0 and excluded["CaseTNR/NCR"] == 1.0 and excluded["Dice/ED"] == m["Dice/ED"]
    cheap = segmentation_metrics(pred, ref, BRATS, spacing=spacing, options=SegmentationOptions(False))
    assert cheap == {k: v for k, v in m.items() if k.split("/")[0] not in ("HD95", "NSD", "LesionDice", "LesionHD95")}
    # the policy default depends on the dataset: PET data (many lesion-free cases) excludes
    autopet = DatasetJson({"0": "CT", "1": "PET"}, {"background": 0, "lesion": 1}, 1)
    assert default_empty_reference(autopet) == "exclude" and default_empty_reference(BRATS) == "one_if_both_empty"
    assert math.isnan(segmentation_metrics(np.zeros(4), np.zeros(4), autopet)["Dice/lesion"])
    with pytest.raises(ValueError, match="'one_if_both_empty', 'exclude'"):
        SegmentationOptions(empty_reference="zero")


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
    assert summary["per_case"][1]["metrics"]["ET"] == {
        "Dice": 1.0, "TPR": None, "TNR": 1.0, "FNR": None, "FPR": 0.0, "CaseTPR": None, "CaseTNR": 1.0,
        "HD95": 0.0, "NSD": None, "LesionDice": 1.0, "LesionHD95": 0.0}  # NSD undefined without a surface
    assert summary["count"]["ET"]["TPR"] == 2 and summary["mean"]["ET"]["TPR"] == pytest.approx(0.5)
    assert summary["count"]["ET"]["NSD"] == 2 and summary["count"]["ET"]["HD95"] == 3
    # case2 predicted nothing: whole tumour (80 mm^3, above the 50 mm^3 lesion threshold) missed
    wt = summary["per_case"][2]["metrics"]["whole tumor"]
    assert (wt["CaseTPR"], wt["HD95"], wt["NSD"], wt["LesionDice"], wt["LesionHD95"]) == (0.0, 374.0, 0.0, 0.0, 374.0)
    assert summary["mean"]["whole tumor"]["HD95"] == pytest.approx(374 / 3)
    assert summary["per_case"][0]["metrics"]["ET"]["LesionDice"] == 1.0  # 4 mm^3 ET: under the threshold
    assert summary["segmentation_options"]["empty_reference"] == "one_if_both_empty"
    assert "CaseTPR" in summary["metric_conventions"] and "LesionHD95" in summary["metric_conventions"]
    table = pd.read_csv(pred / "summary.csv", index_col="case")
    assert list(table.index) == ["case0", "case1", "case2"] and table.loc["case2", "Dice/ED"] == 0.0
    api = evaluate_segmentation_folder(ref, pred, brats / "dataset.json")
    pd.testing.assert_frame_equal(api, table, check_dtype=False, check_names=False)
    assert mean_table(api).loc["whole tumor", "Dice"] == pytest.approx(2 / 3)
    code, err = run_cli(main, ["-ref", ref, "-pred", pred, "-d", 501, "-t", "seg", "-np", 1, "--no_distance_metrics",
                               "--empty_reference", "exclude"])
    assert code == 0, err
    summary = json.loads((pred / "summary.json").read_text())
    assert "HD95" not in summary["mean"]["ET"] and summary["count"]["ET"]["Dice"] == 2  # case1 excluded
    assert summary["mean"]["ET"]["Dice"] == pytest.approx(0.5) and summary["mean"]["ET"]["CaseTNR"] == 1.0














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
    assert "--nsd_tolerance_mm: nsd_tolerance_mm -1.0" in error_of(run_cli, [*base, "--nsd_tolerance_mm", -1])
    assert "no dataset with id 777" in error_of(run_cli, [*base[:5], 777, *base[6:]])
    assert not list(pred.glob("summary*")) and not list(ref.glob("summary*"))
    assert run_cli(main, base)[0] == 0 and (pred / "summary.csv").is_file()








def test_small_et_postprocessing_is_scored_beside_the_raw_et():
    """RFNet/DeMoSeg: a predicted ET under the threshold becomes NCR; 'ET (post-processed)' is scored on that map,
    the raw ET and whole tumour / tumour core stay as predicted."""
    ref = np.zeros((10, 12, 14), np.uint8)
    ref[2:6, 3:8, 4:9] = 2
    ref[3:5, 4:6, 5:7] = 1  # NCR, no ET in the reference
    pred = ref.copy()
    pred[3:5, 4:6, 5] = 3  # 4 voxels of spurious ET (8 mm^3 at 1 x 1 x 2 mm)
    spacing = (1.0, 1.0, 2.0)
    options = SegmentationOptions(small_et_voxels=500)
    m = segmentation_metrics(pred, ref, BRATS, spacing=spacing, options=options)
    raw = segmentation_metrics(pred, ref, BRATS, spacing=spacing)
    assert m["Dice/ET"] == raw["Dice/ET"] == 0.0 and m["HD95/ET"] == HD95_PENALTY_MM
    assert m["Dice/ET (post-processed)"] == 1.0 and m["HD95/ET (post-processed)"] == 0.0
    assert m["Dice/enhancing tumor (post-processed)"] == 1.0 and m["Dice/enhancing tumor"] == 0.0
    assert {k: v for k, v in m.items() if "post-processed" not in k} == raw
    assert "Dice/NCR (post-processed)" not in m and "Dice/tumor core (post-processed)" not in m
    # the threshold decides: 4 voxels are not fewer than 4; 8 mm^3 is less than 9 mm^3, not less than 8
    for small_et, relabelled in ((SegmentationOptions(small_et_voxels=4), False),
                                 (SegmentationOptions(small_et_voxels=5), True),
                                 (SegmentationOptions(small_et_mm3=8.0), False),
                                 (SegmentationOptions(small_et_mm3=9.0), True)):
        got = segmentation_metrics(pred, ref, BRATS, spacing=spacing, options=small_et)["Dice/ET (post-processed)"]
        assert got == (1.0 if relabelled else 0.0), small_et
    with pytest.raises(ValueError, match="small_et_mm3 9.0: needs the voxel spacing"):
        segmentation_metrics(pred, ref, BRATS, options=SegmentationOptions(small_et_mm3=9.0))
    plain = DatasetJson({"0": "CT"}, {"background": 0, "lesion": 1}, 1)
    with pytest.raises(ValueError, match="labels named ET and NCR"):
        SegmentationOptions(small_et_voxels=500).resolved(plain)
    with pytest.raises(ValueError, match="not both"):
        SegmentationOptions(small_et_voxels=500, small_et_mm3=500.0)


def test_small_et_cli(brats, tmp_path, run_cli, pirl_raw):
    ref, pred = tmp_path / "labelsTs", tmp_path / "pred"
    no_et = labels(0)
    no_et[no_et == 3] = 1
    write_image(labels(0), ref / "case0.nii.gz")
    write_image(no_et, ref / "case1.nii.gz")  # no ET in the reference of case1
    for i in range(2):
        write_image(labels(0), pred / f"case{i}.nii.gz")  # 4 voxels of ET predicted in both
    base = ["-ref", ref, "-pred", pred, "-d", 501, "-t", "seg", "-np", 1]
    code, err = run_cli(main, [*base, "--small_et_voxels"])  # RFNet's 500 voxels
    assert code == 0, err
    summary = json.loads((pred / "summary.json").read_text())
    assert summary["segmentation_options"]["small_et_voxels"] == 500
    assert "post-processed" in summary["metric_conventions"] and "Dice" in summary["metric_conventions"]
    # case0: a correct 4-voxel ET removed by the post-processing; case1: a false one removed
    assert [c["metrics"]["ET"]["Dice"] for c in summary["per_case"]] == [1.0, 0.0]
    assert [c["metrics"]["ET (post-processed)"]["Dice"] for c in summary["per_case"]] == [0.0, 1.0]
    assert summary["mean"]["whole tumor"]["Dice"] == 1.0 and "whole tumor (post-processed)" not in summary["mean"]
    table = pd.read_csv(pred / "summary.csv", index_col="case")
    assert list(table["Dice/enhancing tumor (post-processed)"]) == [0.0, 1.0]
    DatasetJson(MRI4, {"background": 0, "lesion": 1, "other": 2, "third": 3}, 2).save(pirl_raw / "plain")
    assert "labels named ET and NCR" in error_of(run_cli, ["-ref", ref, "-pred", pred, "-dj", pirl_raw / "plain",
                                                           "-t", "seg", "-np", 1, "--small_et_voxels", 10])
    assert "--small_et_mm3: small_et_mm3 -1.0" in error_of(run_cli, [*base, "--small_et_mm3", -1])
    assert "only with -t seg" in error_of(run_cli, [*base[:6], "-t", "translate", "--small_et_voxels"])






def test_missing_modality_table_has_hd95_sensitivity_specificity(tmp_path):
    """pirl_evaluate_missing's table: Dice, HD95 (mm, the reference's spacing), sensitivity and specificity per
    subset, one matrix each; the numbers of segmentation_metrics (pirl_evaluate)."""
    from types import SimpleNamespace

    from pirl_pipeline.evaluation.missing_modalities import segmentation_matrices, segmentation_table

    ref = np.zeros((10, 12, 14), np.uint8)
    ref[2:6, 3:8, 4:9] = 2
    write_image(ref, tmp_path / "x.nii.gz", spacing=(2.0, 1.0, 1.0))  # x (the last array axis): 2 mm
    shifted = np.roll(ref, 1, axis=2)

    class Predictor:
        num_modalities = 2
        model = SimpleNamespace(dataset_json=BRATS)

        def read_case(self, case, files):
            return {c: np.ones(ref.shape, np.float32) for c in files}, None

        def predict_case(self, available, geometry):  # T1 finds the oedema one voxel off; T1ce alone finds nothing
            return SimpleNamespace(segmentation=shifted if 0 in available else np.zeros_like(ref))

    table = segmentation_table(Predictor(), {"x": {0: "x_0000", 1: "x_0001"}}, {"x": tmp_path / "x.nii.gz"})
    assert list(table["subset"]) == ["T1", "T1ce", "T1+T1ce"]
    matrices = segmentation_matrices(table)
    assert list(matrices) == ["missing_modalities_dice", "missing_modalities_hd95", "missing_modalities_sensitivity",
                              "missing_modalities_specificity"]
    assert list(matrices["missing_modalities_hd95"]["ED"]) == [2.0, HD95_PENALTY_MM, 2.0]
    assert list(matrices["missing_modalities_sensitivity"]["ED"]) == [0.8, 0.0, 0.8]
    tnr = 1 - 20 / (ref.size - 100)  # 20 false-positive voxels among the background ones
    assert matrices["missing_modalities_specificity"].loc["T1", "ED"] == pytest.approx(tnr)
    expected = segmentation_metrics(shifted, ref, BRATS, spacing=(1.0, 1.0, 2.0))
    assert table.iloc[0]["NSD/whole tumor"] == pytest.approx(expected["NSD/whole tumor"])
    cheap = segmentation_table(Predictor(), {"x": {0: "x_0000", 1: "x_0001"}}, {"x": tmp_path / "x.nii.gz"},
                               options=SegmentationOptions(distance_metrics=False, small_et_voxels=500))
    assert "missing_modalities_hd95" not in segmentation_matrices(cheap)
    assert "ET (post-processed)" in segmentation_matrices(cheap)["missing_modalities_dice"].columns
