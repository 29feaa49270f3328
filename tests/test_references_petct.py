"""The PET references (issue 24): SUV >= a threshold and >= a fraction of the case's SUVmax, read in the raw image's
units, nothing fitted; "every voxel" as whole_brain on PET + CT; written like pirl_predict's output and scored
by the same evaluators (pirl_evaluate, and the rows of segmentation_reference_table with HD95)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pirl_pipeline.cli.evaluate import main as evaluate_main
from pirl_pipeline.cli.reference import main as reference_main
from pirl_pipeline.data.dataset_json import DatasetJson
from pirl_pipeline.data.image_io import read_array
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.evaluation.references.segmentation import (
    SEGMENTATION_KINDS,
    UptakeThreshold,
    segmentation_reference,
    segmentation_reference_table,
    uptake_channel,
)
from pirl_pipeline.file_io import load_json
from tests.synthetic import ellipsoid, write_image

SHAPE = (12, 14, 16)
SPACING = (4.0, 4.0, 3.0)  # SimpleITK (x, y, z): a coarse PET grid
PETCT = DatasetJson({"0": "PET", "1": "CT"}, {"background": 0, "lesion": 1}, 2)


def make_case(hot: float = 10.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(PET in SUV, CT in HU, lesion label): a body of SUV 1 and 40 HU in air (-1000 HU, SUV 0); the lesion a
    sphere of SUV 6 with a core of SUV ``hot``; outside it a spot of SUV 3 (above 2.5, below 41 % of 10)."""
    body = ellipsoid(SHAPE, np.array(SHAPE) / 2, np.array(SHAPE) * 0.45)
    lesion = ellipsoid(SHAPE, (6, 7, 6), (2.5, 2.5, 2.5)) & body
    core = ellipsoid(SHAPE, (6, 7, 6), (1.0, 1.0, 1.0))
    spot = ellipsoid(SHAPE, (6, 7, 12), (1.2, 1.2, 1.2)) & body & ~lesion
    pet = np.where(body, 1.0, 0.0).astype(np.float32)
    pet[lesion], pet[core], pet[spot] = 6.0, hot, 3.0
    ct = np.where(body, 40.0, -1000.0).astype(np.float32)
    return pet, ct, lesion.astype(np.uint8)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_uptake_rules_threshold_the_raw_values():
    pet, ct, label = make_case()
    lesion, spot = label.astype(bool), (pet == 3.0)
    suv = UptakeThreshold("suv_threshold", 0, 2.5, 1).lesion({0: pet, 1: ct})
    assert np.array_equal(suv, lesion | spot)  # SUV >= 2.5: the lesion and the hot spot
    fraction = UptakeThreshold("suvmax_fraction", 0, 0.41, 1)
    assert fraction.cutoff(pet) == pytest.approx(4.1)
    assert np.array_equal(fraction.lesion({0: pet}), lesion)  # 41 % of SUVmax 10: the spot (3) is below
    assert np.array_equal(UptakeThreshold("suv_threshold", 0, 6.0, 1).lesion({0: pet}), lesion)  # >=, not >
    # the same fraction of a colder case: its own maximum (6 x 0.7 = 4.2) decides
    cold, _, _ = make_case(hot=6.0)
    assert np.array_equal(UptakeThreshold("suvmax_fraction", 0, 0.7, 1).lesion({0: cold}), lesion)
    # no uptake: no lesion (not "everything >= 0"); NaN is never lesion
    assert not UptakeThreshold("suvmax_fraction", 0, 0.41, 1).lesion({0: np.zeros(SHAPE, np.float32)}).any()
    with_nan = pet.copy()
    with_nan[6, 7, 6] = np.nan
    found = UptakeThreshold("suvmax_fraction", 0, 0.41, 1).lesion({0: with_nan})
    assert not found[6, 7, 6] and found.sum() == lesion.sum() - 1
    label_map = segmentation_reference("suv_threshold", {0: pet}, PETCT, UptakeThreshold("suv_threshold", 0, 2.5, 1))
    assert label_map.dtype == np.uint8 and set(np.unique(label_map)) == {0, 1}


def test_uptake_rules_refuse_bad_values_and_the_wrong_model():
    assert {"suv_threshold", "suvmax_fraction"} <= set(SEGMENTATION_KINDS)
    for kind, value in (("suv_threshold", 0.0), ("suv_threshold", float("nan")), ("suvmax_fraction", 1.5),
                        ("suvmax_fraction", -0.1)):
        with pytest.raises(PirlInputError, match=kind):
            UptakeThreshold(kind, 0, value, 1)
    with pytest.raises(ValueError, match="choose from"):
        UptakeThreshold("whole_brain", 0, 1.0, 1)
    pet, _, _ = make_case()
    with pytest.raises(ValueError, match="suvmax_fraction reference: pass an UptakeThreshold"):
        segmentation_reference("suvmax_fraction", {0: pet}, PETCT, UptakeThreshold("suv_threshold", 0, 2.5, 1))
    with pytest.raises(PirlInputError, match="needs channel 0000"):
        UptakeThreshold("suv_threshold", 0, 2.5, 1).lesion({1: pet})


def test_uptake_channel_is_the_pet_one_by_name():
    assert uptake_channel(PETCT) == 0
    assert uptake_channel(DatasetJson({"0": "CT", "1": "SUV"}, {"background": 0, "lesion": 1}, 1)) == 1
    assert uptake_channel(PETCT, [1]) == 1  # one channel given: the user's choice
    with pytest.raises(PirlInputError, match="none of"):
        uptake_channel(DatasetJson({"0": "T1", "1": "T2"}, {"background": 0, "lesion": 1}, 1))


def _write_case(folder, case="sts1", **kwargs):
    pet, ct, label = make_case(**kwargs)
    write_image(pet, folder / "images" / f"{case}_0000.nii.gz", SPACING)
    write_image(ct, folder / "images" / f"{case}_0001.nii.gz", SPACING)
    write_image(label, folder / "labels" / f"{case}.nii.gz", SPACING)
    return {case: {0: folder / "images" / f"{case}_0000.nii.gz", 1: folder / "images" / f"{case}_0001.nii.gz"}}, \
        {case: folder / "labels" / f"{case}.nii.gz"}


def test_reference_rows_score_hd95_and_everything_is_every_voxel(tmp_path):
    cases, labels = _write_case(tmp_path)
    pet_only = {c: {0: f[0]} for c, f in cases.items()}
    row = segmentation_reference_table("suvmax_fraction", pet_only, labels, PETCT,
                                       UptakeThreshold("suvmax_fraction", 0, 0.41, 1), distance_metrics=True).iloc[0]
    assert row["subset"] == "PET" and row["Dice/lesion"] == 1.0 and row["HD95/lesion"] == 0.0
    assert row["CaseTPR/lesion"] == 1.0
    row = segmentation_reference_table("suv_threshold", pet_only, labels, PETCT,
                                       UptakeThreshold("suv_threshold", 0, 2.5, 1), distance_metrics=True).iloc[0]
    assert row["Dice/lesion"] < 1 and row["HD95/lesion"] > 0 and row["TPR/lesion"] == 1.0
    assert "HD95/lesion" not in segmentation_reference_table(
        "suv_threshold", pet_only, labels, PETCT, UptakeThreshold("suv_threshold", 0, 2.5, 1)).columns
    # whole_brain on PET + CT: CT air is -1000 HU, never 0, so every voxel of the image is called lesion
    row = segmentation_reference_table("whole_brain", cases, labels, PETCT, distance_metrics=True).iloc[0]
    assert row["subset"] == "PET+CT" and row["TPR/lesion"] == 1.0 and row["FPR/lesion"] == 1.0
    label = read_array(labels["sts1"])[0]
    assert row["Dice/lesion"] == pytest.approx(2 * label.sum() / (label.size + label.sum()))
    # PET alone is not everything: its air is exactly 0
    alone = segmentation_reference_table("whole_brain", pet_only, labels, PETCT).iloc[0]
    assert alone["FPR/lesion"] < 1


def test_pirl_reference_writes_uptake_predictions_that_pirl_evaluate_scores(pirl_raw, tmp_path):
    raw = pirl_raw / "Dataset951_PetCt"
    for i, hot in enumerate((10.0, 6.0)):
        cases, labels = _write_case(tmp_path / "src", f"sts{i}", hot=hot)
        for f in cases[f"sts{i}"].values():
            (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
            (raw / "imagesTr" / f.name).write_bytes(f.read_bytes())
        (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
        (raw / "labelsTr" / labels[f"sts{i}"].name).write_bytes(labels[f"sts{i}"].read_bytes())
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "PET", "1": "CT"},
                                                  "labels": {"background": 0, "lesion": 1}, "numTraining": 2,
                                                  "file_ending": ".nii.gz"}))
    images = str(raw / "imagesTr")
    out = tmp_path / "suvmax"
    assert reference_main(["-i", images, "-o", str(out), "-d", "951", "-t", "seg", "--kind", "suvmax_fraction",
                           "--fraction", "0.41"]) == 0
    record = load_json(out / "reference.json")
    assert (record["channel"], record["channel_name"], record["value"], record["fitted_on"]) == (0, "PET", 0.41, [])
    predicted = read_array(out / "sts0.nii.gz")[0]
    assert np.array_equal(predicted, read_array(raw / "labelsTr" / "sts0.nii.gz")[0])
    assert evaluate_main(["-ref", str(raw / "labelsTr"), "-pred", str(out), "-d", "951", "-t", "seg", "-np", "1"]) == 0
    # sts1's SUVmax is 6: 41 % of it (2.46) takes in the SUV-3 spot as well
    label1 = read_array(raw / "labelsTr" / "sts1.nii.gz")[0].astype(bool)
    expected = (1.0 + dice(read_array(out / "sts1.nii.gz")[0].astype(bool), label1)) / 2
    assert expected < 1 and load_json(out / "summary.json")["mean"]["lesion"]["Dice"] == pytest.approx(expected)
    suv = tmp_path / "suv"
    assert reference_main(["-i", images, "-o", str(suv), "-d", "951", "-t", "seg", "--kind", "suv_threshold",
                           "--threshold", "2.5"]) == 0
    assert read_array(suv / "sts0.nii.gz")[0].sum() > predicted.sum()  # the SUV-3 spot as well
    # the value option belongs to its kind, and is checked
    for argv in (["--kind", "suv_threshold"], ["--kind", "suvmax_fraction"],
                 ["--kind", "threshold", "--threshold", "2.5"], ["--kind", "suv_threshold", "--fraction", "0.4"]):
        assert reference_main(["-i", images, "-o", str(tmp_path / "x"), "-d", "951", "-t", "seg", *argv]) == 2
    for argv in (["--kind", "suvmax_fraction", "--fraction", "1.5"], ["--kind", "suv_threshold", "--threshold", "-1"]):
        assert reference_main(["-i", images, "-o", str(tmp_path / "x"), "-d", "951", "-t", "seg", *argv]) == 2
