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
from pirl_pipeline.evaluation.image_similarity import psnr, ssim
from pirl_pipeline.evaluation.metrics import HD95_PENALTY_MM, bounding_box
from pirl_pipeline.evaluation.segmentation import (
    SegmentationOptions,
    default_empty_reference,
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
    assert summary["per_case"][0]["metrics"]["T2"]["PSNR_raw"] == pytest.approx(
        10 * math.log10(float(a.max() - a.min()) ** 2 / 4.0), rel=1e-5)
    # the background garbage is outside the mask for PSNR but seen by SSIM windows at the edge
    expected = ssim(np.where(body, arrays["a"][2] + 2, 500.0), arrays["a"][2], body)
    assert summary["per_case"][0]["metrics"]["T2"]["SSIM_raw"] == pytest.approx(expected, rel=1e-5)
    assert summary["per_case"][0]["metrics"]["T2"]["PSNR"] > 100  # a pure offset: perfect once scaled (float32 rounding)
    assert "percentile" in summary["metric_conventions"]["PSNR"]
    assert expected < ssim(np.where(body, arrays["a"][2] + 2, 0.0), arrays["a"][2], body)
    assert (tmp_path / "scores" / "t.csv").is_file() and not (pred / "summary.json").exists()


def test_translation_api_on_arrays(tmp_path, brats):
    ref, pred, arrays, body = write_translation(tmp_path)
    images = arrays["b"]
    assert np.array_equal(reference_mask(images), body)
    m = translation_metrics(images[1:3], images[1:3], reference_mask(images), ["T1ce", "T2"])
    assert m["PSNR/T2"] == math.inf and m["NMSE/T1ce"] == 0.0 and m["SSIM/T2"] == pytest.approx(1.0)
    half = translation_metrics(images[2] * 0.5, images[2])
    assert half["PSNR_raw/0"] == pytest.approx(psnr(images[2] * 0.5, images[2], body)) and half["PSNR/0"] > 100
    table = evaluate_translation_folder(ref, pred, 501, num_processes=2)
    assert list(table.columns) == ["PSNR/T2", "NMSE/T2", "SSIM/T2", "PSNR_raw/T2", "NMSE_raw/T2", "SSIM_raw/T2"]
    assert (table["NMSE/T2"] == 0).all() and (table["NMSE_raw/T2"] == 0).all()


def test_translation_scores_on_a_real_case(shared_data):
    """TCGA-DU-7294: a perfect synthesis up to gain and offset beats copying another modality once each
    volume is scaled by its own percentiles; in scanner units it was the other way round."""
    from pirl_pipeline.data.image_io import read_array

    folder = shared_data / "brats2020_style" / "TCGA-DU-7294"
    images = {m: read_array(folder / f"TCGA-DU-7294_{m}.nii.gz")[0] for m in ("t1", "t1ce", "t2", "flair")}
    mask = reference_mask(np.stack(list(images.values())))
    box = bounding_box(mask, margin=6)  # the brain plus more than half an SSIM window: the same scores, faster
    images, mask = {m: image[box] for m, image in images.items()}, mask[box]
    rescaled = translation_metrics(images["t2"] * 3 + 50, images["t2"], mask, ["T2"])
    copied = translation_metrics(images["t1"], images["t1ce"], mask, ["T1ce"])
    assert rescaled["PSNR/T2"] >= 35 and rescaled["SSIM/T2"] >= 0.95
    assert copied["PSNR/T1ce"] == pytest.approx(19.58, abs=0.01) and copied["SSIM/T1ce"] == pytest.approx(0.728, abs=1e-3)
    # raw units: the rescaled perfect synthesis scored far below the copy (the bug this convention fixes)
    assert rescaled["PSNR_raw/T2"] == pytest.approx(5.69, abs=0.01) and rescaled["SSIM_raw/T2"] == pytest.approx(
        0.378, abs=1e-3)
    assert copied["PSNR_raw/T1ce"] == pytest.approx(28.81, abs=0.01) and copied["SSIM_raw/T1ce"] == pytest.approx(
        0.813, abs=1e-3)


def test_synthesised_mri_stays_in_zscore_units():
    """inference/export: a synthesised z-scored (MRI) channel is not de-normalised with dataset averages
    (MRI has no shared unit); CT keeps its dataset-level Hounsfield de-normalisation."""
    from types import SimpleNamespace

    from pirl_pipeline.inference.export import intensities_in_input_units

    props = {"0": {"mean": 300.0, "std": 50.0}, "1": {"mean": 40.0, "std": 100.0, "percentile_99_5": 1000.0}}
    plans = SimpleNamespace(
        configuration=lambda name: SimpleNamespace(normalization_schemes=["ZScoreNormalization", "CTNormalization",
                                                                          "ZScoreNormalization"]),
        foreground_intensity_properties_per_channel=props, extra={})
    output = np.stack([np.full((2, 2, 2), 1.5, np.float32)] * 3)
    # channel 2 was an input (its own parameters); channels 0 (MRI) and 1 (CT) were synthesised
    properties = {"normalization": [None, None, {"mean": 10.0, "std": 2.0}]}
    restored = intensities_in_input_units(output, properties, plans, "3d_fullres")
    assert (restored[0] == 1.5).all() and (restored[1] == 1.5 * 100 + 40).all() and (restored[2] == 13.0).all()


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
    assert "--nsd_tolerance_mm: nsd_tolerance_mm -1.0" in error_of(run_cli, [*base, "--nsd_tolerance_mm", -1])
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


def test_translate_missing_reference_is_skipped_when_channels_may_be_missing(brats, pirl_raw, tmp_path, run_cli):
    """A dataset with missing channels: a synthesised channel whose reference does not exist is not scored (and
    listed); the others are scored as before, inside the mask of the references the case has."""
    ref, pred, arrays, body = write_translation(tmp_path, shift=2.0)
    (ref / "b_0002.nii.gz").unlink()  # case b has no T2
    write_image(arrays["a"][1], pred / "a_0001.nii.gz")
    dj = DatasetJson(MRI4, {"background": 0, "lesion": 1}, 2, allow_missing_channels=True)
    dj.save(pirl_raw / "Dataset502_Incomplete")
    code, err = run_cli(main, ["-ref", ref, "-pred", pred, "-d", 502, "-t", "translate", "-np", 1])
    assert code == 0, err
    summary = json.loads((pred / "summary.json").read_text())
    assert summary["not_scored"] == ["b_0002.nii.gz"]
    assert summary["count"]["T2"]["PSNR_raw"] == 1 and summary["count"]["T1ce"]["NMSE_raw"] == 1
    a = arrays["a"][2][body]
    assert summary["mean"]["T2"]["PSNR_raw"] == pytest.approx(10 * math.log10(float(a.max() - a.min()) ** 2 / 4.0),
                                                              rel=1e-5)
    assert summary["per_case"][1]["metrics"]["T2"]["PSNR_raw"] is None
    assert summary["mean"]["T1ce"]["NMSE_raw"] == 0.0
    # the same folders against a dataset that declares no missing channels: the error names the file
    err = error_of(run_cli, ["-ref", ref, "-pred", pred, "-d", 501, "-t", "translate", "-np", 1])
    assert "b_0002.nii.gz: no reference image for channel 0002" in err and "allow_missing_channels" in err


def test_translation_table_scores_the_pairs_a_case_has():
    """Final validation of translation (every single source -> every other modality) on a case lacking one."""
    from types import SimpleNamespace

    from pirl_pipeline.evaluation.missing_modalities import translation_table

    images = {c: np.full(SHAPE, 10.0 * (c + 1), np.float32) for c in (0, 2, 3)}  # channel 1 absent

    class Predictor:
        num_modalities = 4
        model = SimpleNamespace(dataset_json=BRATS)

        def __init__(self):
            self.calls = []

        def read_case(self, case, files):
            return {c: images[c] for c in files}, None

        def predict_case(self, available, geometry):
            self.calls.append(sorted(available))
            return SimpleNamespace(images=np.stack([images.get(c, np.zeros(SHAPE, np.float32)) for c in range(4)]))

    predictor = Predictor()
    table = translation_table(predictor, {"x": {0: "x_0000", 2: "x_0002", 3: "x_0003"}})
    assert predictor.calls == [[0], [2], [3]]
    pairs = list(zip(table["source"], table["target"]))
    assert pairs == [("T1", "T2"), ("T1", "FLAIR"), ("T2", "T1"), ("T2", "FLAIR"), ("FLAIR", "T1"), ("FLAIR", "T2")]
    assert (table["NMSE_raw"] == 0).all()


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


def test_brasyn_ssim_on_arrays():
    """BraSyn's scaling (whole-volume 0.5/99.5 percentiles, lower one floored at 0) and SSIM inside and outside
    the tumour of the masked volumes."""
    from pirl_pipeline.evaluation.translation import brasyn_scale, brasyn_ssim

    ramp = np.arange(-10.0, 190.0).reshape(5, 5, 8)
    lo, hi = np.percentile(ramp, [0.5, 99.5])
    assert lo < 0  # BraSyn floors it at 0 (strictlyPositive): negative voxels become 0
    np.testing.assert_allclose(brasyn_scale(ramp), np.clip(ramp / hi, 0, 1))
    rng = np.random.default_rng(0)
    shape = (24, 26, 28)
    ref = np.zeros(shape)
    ref[3:21, 3:23, 3:25] = rng.random((18, 20, 22)) * 100 + 50
    tumor = np.zeros(shape, bool)
    tumor[8:16, 9:17, 9:19] = True
    same = brasyn_ssim(ref * 3 + 0, ref, tumor)  # a gain: undone by the per-volume scaling
    assert same == {"BraSyn_SSIM_tumor": pytest.approx(1.0), "BraSyn_SSIM_non_tumor": pytest.approx(1.0)}
    wrong = ref.copy()
    wrong[tumor] = rng.random(int(tumor.sum())) * 100 + 50  # the tumour synthesised wrongly, the rest right
    scores = brasyn_ssim(wrong, ref, tumor)
    assert scores["BraSyn_SSIM_tumor"] < 0.8 and scores["BraSyn_SSIM_non_tumor"] > 0.99
    # the same numbers as pirl's SSIM on the masked, scaled volumes (data range: the larger of the two)
    p, r = brasyn_scale(wrong) * tumor, brasyn_scale(ref) * tumor
    assert scores["BraSyn_SSIM_tumor"] == pytest.approx(ssim(p, r, tumor, max(np.ptp(p), np.ptp(r))))
    assert math.isnan(brasyn_ssim(wrong, ref, np.zeros(shape, bool))["BraSyn_SSIM_tumor"])  # no tumour


def test_brasyn_cli_needs_labels(brats, tmp_path, run_cli):
    ref, pred, arrays, body = write_translation(tmp_path, shift=2.0)
    labels_dir = tmp_path / "labelsTs"
    tumor = np.zeros(body.shape, np.uint8)
    tumor[5:9, 5:10, 5:10] = 3
    write_image(tumor, labels_dir / "a.nii.gz")
    base = ["-ref", ref, "-pred", pred, "-d", 501, "-t", "translate", "-np", 1]
    err = error_of(run_cli, [*base, "--brasyn", labels_dir])
    assert f"{labels_dir / 'b.nii.gz'}: no label map for the BraSyn tumour / non-tumour SSIM" in err
    assert not (pred / "summary.json").exists()
    write_image(tumor, labels_dir / "b.nii.gz")
    code, err = run_cli(main, [*base, "--brasyn", labels_dir])
    assert code == 0, err
    summary = json.loads((pred / "summary.json").read_text())
    t2 = summary["per_case"][0]["metrics"]["T2"]
    from pirl_pipeline.evaluation.translation import brasyn_ssim

    expected = brasyn_ssim(np.where(body, arrays["a"][2] + 2, 0), arrays["a"][2], tumor > 0)
    assert t2["BraSyn_SSIM_tumor"] == pytest.approx(expected["BraSyn_SSIM_tumor"], rel=1e-5)
    assert t2["BraSyn_SSIM_non_tumor"] == pytest.approx(expected["BraSyn_SSIM_non_tumor"], rel=1e-5)
    assert t2["PSNR"] > 100  # the default scale-free metrics stay
    assert "BraSyn" in summary["metric_conventions"]["BraSyn_SSIM_tumor"] and "PSNR" in summary["metric_conventions"]
    assert summary["brasyn_labels"] == str(labels_dir.resolve())
    assert "--brasyn: only with -t translate" in error_of(run_cli, [*base[:6], "-t", "seg", "--brasyn", labels_dir])


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
