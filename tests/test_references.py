"""Trivial references: written in pirl_predict's layout, scored by the same evaluators, fitted on training
cases only; real-data check of the FLAIR threshold on the BraTS-2015 expert labels."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dataset_conversion.generic_folder import main as convert
from pirl_pipeline.data.dataset_json import DatasetJson, load_dataset_json
from pirl_pipeline.data.image_io import read_array
from pirl_pipeline.evaluation.image_similarity import IMAGE_METRICS
from pirl_pipeline.evaluation.references.common import raw_cases
from pirl_pipeline.evaluation.references.segmentation import (
    ThresholdModel,
    fit_threshold,
    lesion_channel,
    lesion_label,
    segmentation_reference_table,
    whole_brain_label,
    write_segmentation_references,
)
from pirl_pipeline.evaluation.references.translation import (
    IntensityMapping,
    fit_intensity_mapping,
    fit_intensity_mappings,
    translation_reference_table,
    write_translation_references,
)
from pirl_pipeline.evaluation.segmentation import evaluate_segmentation_folder
from pirl_pipeline.evaluation.translation import evaluate_translation_folder
from tests.synthetic import ellipsoid, write_image

SHAPE = (24, 28, 26)
SPACING = (1.0, 1.2, 1.5)
REGIONS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [1, 3], "enhancing tumor": 3}
BRATS = DatasetJson({"0": "T1", "1": "FLAIR"}, REGIONS, 4, regions_class_order=[2, 1, 3])
PLAIN = DatasetJson({"0": "T1", "1": "T2"}, {"background": 0, "lesion": 1}, 4)


def make_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(2, z, y, x) images and a BraTS-like label: channel 0 uniform in [1, 2] inside a head, channel 1 a
    FLAIR-like image with a bright lesion (oedema 2 around a core 1 holding enhancing 3)."""
    rng = np.random.default_rng(seed)
    head = ellipsoid(SHAPE, np.array(SHAPE) / 2 + rng.uniform(-1, 1, 3), np.array(SHAPE) * 0.42)
    centre = np.array(SHAPE) / 2 + rng.uniform(-3, 3, 3)
    radius = rng.uniform(3.5, 5.0)
    whole = ellipsoid(SHAPE, centre, (radius,) * 3) & head
    core = ellipsoid(SHAPE, centre, (radius / 2,) * 3) & head
    label = np.zeros(SHAPE, np.uint8)
    label[whole], label[core] = 2, 1
    label[ellipsoid(SHAPE, centre, (1.2,) * 3) & head] = 3
    images = np.zeros((2, *SHAPE), np.float32)
    images[0][head] = rng.uniform(1, 2, int(head.sum()))
    images[1][head] = 100 + 8 * rng.standard_normal(int(head.sum()))
    images[1][whole] += 60
    return images, label


@pytest.fixture
def dataset(tmp_path):
    """Four cases in the raw layout: ``({case: {channel: file}}, {case: label file}, {case: arrays})``."""
    arrays = {}
    for i in range(4):
        case = f"case{i}"
        images, label = make_case(i)
        arrays[case] = (images, label)
        for c in range(2):
            write_image(images[c], tmp_path / "imagesTr" / f"{case}_{c:04d}.nii.gz", SPACING)
        write_image(label, tmp_path / "labelsTr" / f"{case}.nii.gz", SPACING)
    BRATS.save(tmp_path)
    cases, labels = raw_cases(tmp_path, BRATS)
    return cases, labels, arrays


def test_label_and_channel_rules():
    brats2015 = DatasetJson({"0": "FLAIR", "1": "T1c"}, {"background": 0, "whole tumour": [1, 2, 3, 4],
                            "tumour core": [1, 3, 4], "enhancing tumour": 4}, 4, regions_class_order=[2, 1, 4])
    assert (whole_brain_label(brats2015), lesion_label(brats2015)) == (4, 2)
    assert (whole_brain_label(BRATS), lesion_label(BRATS)) == (3, 2)
    two = DatasetJson({"0": "T1"}, {"background": 0, "core": 1, "edema": 2}, 1)
    assert (whole_brain_label(two), lesion_label(two)) == (1, 1)
    names = [({"0": "T1", "1": "t2f"}, 1), ({"0": "T1", "1": "T2w", "2": "Flair"}, 2), ({"0": "CT", "1": "PET"}, 1),
             ({"0": "T1", "1": "T2"}, 1), ({"0": "a", "1": "b"}, 0)]
    for channels, expected in names:
        assert lesion_channel(DatasetJson(channels, {"background": 0, "x": 1}, 1)) == expected
    four = DatasetJson({"0": "T1", "1": "T2", "2": "T2-FLAIR", "3": "PET"}, {"background": 0, "x": 1}, 1)
    assert [lesion_channel(four, given) for given in ([0, 1, 2], [0, 1], [0, 3], [3, 0], [0])] == [2, 1, 3, 3, 0]


def test_identity_writes_the_source_as_every_target(dataset, tmp_path):
    cases, _, arrays = dataset
    folders = write_translation_references("identity", cases, tmp_path / "identity", BRATS)
    assert sorted(folders) == [0, 1] and folders[0].name == "source_0000"
    assert sorted(p.name for p in folders[0].iterdir()) == [f"case{i}_0001.nii.gz" for i in range(4)]
    written, geometry = read_array(folders[0] / "case2_0001.nii.gz")
    _, source_geometry = read_array(cases["case2"][0])
    assert np.array_equal(written, arrays["case2"][0][0]) and geometry == source_geometry
    table = evaluate_translation_folder(tmp_path / "imagesTr", folders[1], BRATS)  # the evaluator reads them
    assert list(table.columns) == [f"{m}/T1" for m in IMAGE_METRICS] and len(table) == 4


def test_histogram_mapping_recovers_an_inverted_contrast(tmp_path):
    """target = 3 - source (a contrast inversion); fitted on three cases, applied to a fourth whose target is
    never written and whose source comes from "another scanner" (a nonlinear monotone distortion, exp(2s)):
    the prediction is 3 - s to within the bin width, and distributed like the training targets."""
    cases, held_out = {}, None
    for i in range(4):
        images, _ = make_case(i)
        images[1] = np.where(images[0] != 0, 3 - images[0], 0)
        if i == 3:
            held_out = images[0].copy()
            images[0] = np.where(images[0] != 0, np.exp(2 * images[0]), 0)
        for c in range(2 if i < 3 else 1):
            write_image(images[c], tmp_path / f"case{i}_{c:04d}.nii.gz")
        cases[f"case{i}"] = {c: tmp_path / f"case{i}_{c:04d}.nii.gz" for c in range(2 if i < 3 else 1)}
    train = {k: v for k, v in cases.items() if k != "case3"}
    mapping = fit_intensity_mapping(train, 0, 1)
    assert mapping.cases == ["case0", "case1", "case2"] and len(mapping.values) == 64
    assert np.all(np.diff(mapping.values) < 0)  # inverted
    assert (mapping.target_low, mapping.target_high) == pytest.approx((1.005, 1.995), abs=0.01)
    restored = IntensityMapping.from_dict(json.loads(json.dumps(mapping.to_dict())))
    folders = write_translation_references("histogram", {"case3": cases["case3"]}, tmp_path / "out",
                                           BRATS, {(0, 1): restored}, sources=[0])
    prediction, _ = read_array(folders[0] / "case3_0001.nii.gz")
    head = held_out != 0
    error = np.abs(prediction[head] - (3 - held_out[head]))
    assert np.mean(error) < 0.01 and np.percentile(error, 99) < 0.02
    assert np.all(prediction[~head] == 0)
    normalised = (prediction[head] - mapping.target_low) / (mapping.target_high - mapping.target_low)
    levels = np.linspace(0, 1, len(mapping.target_quantiles))
    assert np.allclose(np.quantile(normalised, levels[5:-5]), mapping.target_quantiles[5:-5], atol=0.01)


def test_reference_tables_have_the_translation_table_format(tmp_path):
    """Identity scores badly on an inverted contrast, the fitted mapping well; rows as in Table 10."""
    cases = {}
    for i in range(3):
        images, _ = make_case(i)
        images[1] = np.where(images[0] != 0, 3 - images[0], 0)
        for c in range(2):
            write_image(images[c], tmp_path / f"case{i}_{c:04d}.nii.gz")
        cases[f"case{i}"] = {c: tmp_path / f"case{i}_{c:04d}.nii.gz" for c in range(2)}
    train, test = {k: cases[k] for k in ("case0", "case1")}, {"case2": cases["case2"]}
    mappings = fit_intensity_mappings(train, [(0, 1), (1, 0)])
    histogram = translation_reference_table("histogram", test, BRATS, mappings)
    identity = translation_reference_table("identity", test, BRATS)
    assert list(histogram.columns) == ["source", "target", "case", *IMAGE_METRICS]
    assert histogram[["source", "target"]].values.tolist() == [["T1", "FLAIR"], ["FLAIR", "T1"]]
    assert (histogram["PSNR"] > 35).all() and (histogram["SSIM"] > 0.99).all()
    assert (identity["PSNR"] < histogram["PSNR"] - 15).all()


def test_threshold_fitted_on_training_cases_finds_a_planted_lesion(dataset, tmp_path):
    cases, labels, arrays = dataset
    train = {k: cases[k] for k in ("case0", "case1", "case2")}
    model = fit_threshold(train, labels, BRATS)
    assert (model.channel, model.label, model.cases) == (1, 2, ["case0", "case1", "case2"])
    assert model.train_dice > 0.95
    assert ThresholdModel.from_dict(json.loads(json.dumps(model.to_dict()))) == model
    table = segmentation_reference_table("threshold", {"case3": cases["case3"]}, labels, BRATS, model)
    row = table.iloc[0]
    assert row["subset"] == "FLAIR" and row["Dice/whole tumor"] > 0.9
    assert row["Dice/tumor core"] == 0 and row["Dice/enhancing tumor"] == 0  # painted oedema: in WT only
    written = write_segmentation_references("threshold", {"case3": cases["case3"]}, tmp_path / "seg", BRATS, model)
    predicted, _ = read_array(written[0], np.int16)
    assert set(np.unique(predicted)) == {0, 2}
    lesion = arrays["case3"][1] > 0
    assert 2 * np.sum((predicted > 0) & lesion) / (np.sum(predicted > 0) + lesion.sum()) == pytest.approx(
        row["Dice/whole tumor"])


def test_threshold_cleanup_keeps_the_largest_component(dataset, tmp_path):
    """A bright speck far from the lesion: 'auto' picks the largest-component cleanup, which removes it."""
    cases, labels, _ = dataset
    for case in ("case0", "case1", "case2"):
        image, _ = read_array(cases[case][1])
        image[10:14, 4:6, 11:15] = 400  # 32 voxels 1+ voxel from any lesion, brighter than it
        write_image(image, cases[case][1], SPACING)
    train = {k: cases[k] for k in ("case0", "case1", "case2")}
    none, auto = fit_threshold(train, labels, BRATS, cleanup="none"), fit_threshold(train, labels, BRATS)
    assert auto.cleanup == "largest" and auto.train_dice > 0.99 and none.train_dice < 0.97
    with pytest.raises(ValueError, match="choose from"):
        fit_threshold(train, labels, BRATS, cleanup="biggest")


def test_whole_brain_has_sensitivity_one_and_the_evaluator_agrees(dataset, tmp_path):
    cases, labels, arrays = dataset
    out = tmp_path / "whole_brain"
    write_segmentation_references("whole_brain", cases, out, BRATS)
    predicted, _ = read_array(out / "case1.nii.gz", np.int16)
    head = arrays["case1"][0][0] != 0
    assert set(np.unique(predicted[head])) == {3} and not predicted[~head].any()
    folder = evaluate_segmentation_folder(tmp_path / "labelsTr", out, BRATS)
    table = segmentation_reference_table("whole_brain", cases, labels, BRATS).set_index("case")
    for region in ("whole tumor", "tumor core", "enhancing tumor"):
        assert (folder[f"TPR/{region}"] == 1).all()
    assert np.allclose(folder["Dice/whole tumor"], table["Dice/whole tumor"])
    lesion = arrays["case1"][1] > 0
    assert table.loc["case1", "Dice/whole tumor"] == pytest.approx(2 * lesion.sum() / (head.sum() + lesion.sum()))
    assert table.loc["case1", "subset"] == "T1+FLAIR"


def test_plain_labels_paint_the_first_foreground_label(tmp_path):
    images, label = make_case(0)
    for c in range(2):
        write_image(images[c], tmp_path / f"c_{c:04d}.nii.gz")
    write_image((label > 0).astype(np.uint8), tmp_path / "c.nii.gz")
    cases, labels = {"c": {c: tmp_path / f"c_{c:04d}.nii.gz" for c in range(2)}}, {"c": tmp_path / "c.nii.gz"}
    model = fit_threshold(cases, labels, PLAIN)
    assert (model.channel, model.label) == (1, 1)  # T2 is the lesion channel without FLAIR
    row = segmentation_reference_table("threshold", cases, labels, PLAIN, model).iloc[0]
    assert row["subset"] == "T2" and row["Dice/lesion"] > 0.95
    assert segmentation_reference_table("whole_brain", cases, labels, PLAIN).iloc[0]["TPR/lesion"] == 1


@pytest.mark.shared_data
@pytest.mark.slow
def test_flair_threshold_on_brats2015_expert_labels(shared_data, tmp_path):
    """The FLAIR threshold fitted on two BraTS-2015 cases, tested on the other two (both ways round): mean
    whole-tumour Dice 0.78 over the four test cases (0.44 / 0.88 / 0.92 / 0.87); whole brain at most 0.33."""
    convert(["-i", str(shared_data / "brats2015_two_modality"), "-d", "602", "-n", "BraTS2015", "-o",
             str(tmp_path), "--channel", "FLAIR=Flair_*.nii.gz", "--channel", "T1c=T1c_*.nii.gz", "--label",
             "OTMultiClass.nii.gz", "--mask", "brainmask.nii.gz", "--labels", "background=0",
             "whole tumour=1,2,3,4", "tumour core=1,3,4", "enhancing tumour=4", "--regions_class_order", "2", "1",
             "4"])
    folder = tmp_path / "Dataset602_BraTS2015"
    dj = load_dataset_json(folder)
    cases, labels = raw_cases(folder, dj)
    names = sorted(cases)
    dice, brain = {}, {}
    for train, test in ((names[:2], names[2:]), (names[2:], names[:2])):
        model = fit_threshold({n: cases[n] for n in train}, labels, dj)
        assert (model.channel, model.label) == (0, 2) and 0.55 < model.threshold < 0.75
        test_cases = {n: cases[n] for n in test}
        rows = segmentation_reference_table("threshold", test_cases, labels, dj, model).set_index("case")
        dice.update(rows["Dice/whole tumour"])
        brain.update(segmentation_reference_table("whole_brain", test_cases, labels, dj)
                     .set_index("case")["Dice/whole tumour"])
    assert np.mean(list(dice.values())) == pytest.approx(0.78, abs=0.03)
    assert all(dice[n] > brain[n] + 0.1 for n in names) and max(brain.values()) < 0.34
