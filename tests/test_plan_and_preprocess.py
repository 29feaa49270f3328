"""End to end: raw dataset -> fingerprint -> plans -> preprocessed cases -> splits, and bad input."""
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from pirl_pipeline.cli.plan_and_preprocess import main
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.file_io import load_json
from plans.plans_manager import Plans
from tests.synthetic import make_case, write_image, write_raw_dataset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def roots(tmp_path, monkeypatch):
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    monkeypatch.setenv("PIRL_raw", str(raw))
    monkeypatch.setenv("PIRL_preprocessed", str(pre))
    return raw, pre


def test_end_to_end_resumable(roots):
    raw, pre = roots
    write_raw_dataset(raw, 901, num_cases=3, spacing=(1.0, 1.0, 2.0))
    assert main(["-d", "901", "-np", "2"]) == 0
    out = pre / "Dataset901_Synthetic"
    plans = Plans.load(out / "PIRLPlans.json")
    config = plans.configuration("3d_fullres")
    assert config.spacing == [2.0, 1.0, 1.0]  # numpy (z, y, x) order: sitk x spacing 1, z spacing 2
    fingerprint = load_json(out / "dataset_fingerprint.json")
    assert fingerprint["modality_kinds"] == ["MRI"] * 4 and len(fingerprint["spacings"]) == 3
    folder = out / config.data_identifier
    data = np.load(folder / "case000.npy")
    seg = np.load(folder / "case000_seg.npy")
    props = load_json(folder / "case000.json")
    assert data.dtype == np.float32 and data.shape[0] == 4 and seg.shape == (1, *data.shape[1:])
    assert set(np.unique(seg)) <= {-1, 0, 1, 2} and (seg == 1).any()
    inside = seg[0] >= 0
    assert abs(data[0][inside].mean()) < 0.05 and (data[0][~inside] == 0).all()
    assert props["geometry"]["sitk_spacing"] == [1.0, 1.0, 2.0]
    assert len(props["class_locations"]["1"]) == (seg == 1).sum()
    splits = load_json(out / "splits_final.json")
    assert len(splits) == 3 and sorted(c for s in splits for c in s["val"]) == ["case000", "case001", "case002"]
    assert not list(out.rglob(".tmp-*"))
    # resumable: a second run skips every finished case and leaves the files untouched
    mtime = (folder / "case000.npy").stat().st_mtime_ns
    assert main(["-d", "Dataset901_Synthetic", "-np", "1"]) == 0
    assert (folder / "case000.npy").stat().st_mtime_ns == mtime
    # a half-finished case (array but no properties) is redone; a temp file kill -9 left is removed
    (folder / "case001.json").unlink()
    (stale := folder / ".tmp-deadbeef-case001.npy").write_bytes(b"\x93NUMPY half an array")
    assert main(["-d", "901", "-np", "1"]) == 0
    assert (folder / "case001.json").is_file() and (folder / "case000.npy").stat().st_mtime_ns == mtime
    assert not stale.exists()


def test_image_only_dataset_gets_foreground_masks(roots):
    raw, pre = roots
    write_raw_dataset(raw, 902, name="NoLabels", num_cases=2, with_labels=False)
    assert main(["-d", "902", "-np", "1", "--clean"]) == 0
    folder = pre / "Dataset902_NoLabels" / "pirl_plans_3d_fullres"
    seg = np.load(folder / "case000_seg.npy")
    assert set(np.unique(seg)) == {-1, 0}
    assert len(load_json(pre / "Dataset902_NoLabels" / "splits_final.json")) == 2


def _corrupt(kind: str, folder: Path) -> str:
    """Damage a raw dataset in one way; returns the text the error must contain."""
    images = folder / "imagesTr"
    if kind == "missing_dataset_json":
        (folder / "dataset.json").unlink()
        return "dataset.json is missing"
    if kind == "invalid_dataset_json":
        (folder / "dataset.json").write_text("{")
        return "invalid JSON"
    if kind == "missing_keys":
        (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0}}))
        return "missing key(s) channel_names"
    if kind == "missing_channel":
        (images / "case001_0003.nii.gz").unlink()
        return "case001_0003.nii.gz"
    if kind == "channel_grid":
        data, _ = make_case((24, 28, 26), seed=1)
        write_image(data[2], images / "case001_0002.nii.gz", spacing=(1.0, 1.0, 1.5))
        return "case001_0002.nii.gz: not on the grid"
    if kind == "label_grid":
        _, label = make_case((24, 28, 26), seed=1)
        write_image(label, folder / "labelsTr" / "case001.nii.gz", origin=(5.0, 0.0, 0.0))
        return "case001.nii.gz: not on the grid"
    if kind == "undeclared_label":
        _, label = make_case((24, 28, 26), seed=1)
        label[0, 0, 0] = 7
        write_image(label, folder / "labelsTr" / "case001.nii.gz")
        return "label value(s) [7] not declared"
    if kind == "nan_nifti":  # ITK's NIfTI reader turns NaN into 0: the stored values are checked too
        data, _ = make_case((24, 28, 26), seed=1)
        data[0, 3, 3, 3] = np.nan
        write_image(data[0], images / "case001_0000.nii.gz")
        return "case001_0000.nii.gz: contains 1 NaN/Inf"
    if kind == "nan":
        shutil.rmtree(folder)
        write_raw_dataset(folder.parent, 903, name="Bad", num_cases=2, file_ending=".nrrd")
        data, _ = make_case((24, 28, 26), seed=1)
        data[0, 3, 3, 3] = np.inf
        write_image(data[0], images / "case001_0000.nrrd")
        return "case001_0000.nrrd: contains 1 NaN/Inf"
    if kind == "unreadable":
        (images / "case001_0001.nii.gz").write_bytes(b"this is not an image")
        return "case001_0001.nii.gz: not a readable image"
    if kind == "empty_images":
        shutil.rmtree(images)
        images.mkdir()
        return "no images"
    if kind == "wrong_file_ending":
        d = json.loads((folder / "dataset.json").read_text())
        d["file_ending"] = ".nrrd"
        (folder / "dataset.json").write_text(json.dumps(d))
        return "does not follow CASE_XXXX.nrrd"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["missing_dataset_json", "invalid_dataset_json", "missing_keys",
                                  "missing_channel", "channel_grid", "label_grid", "undeclared_label", "nan", "nan_nifti",
                                  "unreadable", "empty_images", "wrong_file_ending"])
def test_bad_input_is_one_clear_line_and_writes_nothing(roots, capsys, kind):
    raw, pre = roots
    folder = write_raw_dataset(raw, 903, name="Bad", num_cases=2)
    expected = _corrupt(kind, folder)
    assert main(["-d", "903", "-np", "1"]) == 2
    err = capsys.readouterr().err  # progress bars share stderr; the error is one line of its own
    lines = [line[line.index("error: "):] for line in err.splitlines() if "error: " in line]
    assert len(lines) == 1 and expected in lines[0], err
    assert not (pre / "Dataset903_Bad").exists()


def test_unknown_dataset_id(roots, capsys):
    raw, _ = roots
    raw.mkdir(parents=True)
    assert main(["-d", "555"]) == 2
    assert "no dataset with id 555" in capsys.readouterr().err


def test_no_integrity_check_skips_the_checks(roots):
    raw, pre = roots
    folder = write_raw_dataset(raw, 904, name="Unchecked", num_cases=2)
    _corrupt("undeclared_label", folder)
    assert main(["-d", "904", "-np", "1", "--no_integrity_check"]) == 0
    assert (pre / "Dataset904_Unchecked" / "PIRLPlans.json").is_file()


@pytest.mark.shared_data
def test_real_brats_cases_end_to_end(roots):
    """Real BraTS-2020 cases (int16, negative values, an LPS-like direction) through the whole step."""
    source = SHARED / "brats2020_style"
    if not source.is_dir():
        pytest.skip(f"shared real data not found at {source}")
    raw, pre = roots
    folder = raw / "Dataset905_RealBraTS"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for case in sorted(p.name for p in source.iterdir()):
        for i, m in enumerate(("t1", "t1ce", "t2", "flair")):
            (folder / "imagesTr" / f"{case}_{i:04d}.nii.gz").symlink_to(source / case / f"{case}_{m}.nii.gz")
        (folder / "labelsTr" / f"{case}.nii.gz").symlink_to(source / case / f"{case}_seg.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"},
        "labels": {"background": 0, "NCR": 1, "ED": 2}, "numTraining": 2, "file_ending": ".nii.gz"}))
    assert main(["-d", "905", "-np", "2"]) == 0
    plans = Plans.load(pre / "Dataset905_RealBraTS" / "PIRLPlans.json")
    config = plans.configuration("3d_fullres")
    assert config.spacing == [1.0, 1.0, 1.0] and config.patch_size == [96, 96, 96]
    for case in ("TCGA-DU-7294", "AURORA-MET-0001"):
        props = load_json(pre / "Dataset905_RealBraTS" / config.data_identifier / f"{case}.json")
        data = np.load(pre / "Dataset905_RealBraTS" / config.data_identifier / f"{case}.npy", mmap_mode="r")
        box = props["bbox_used_for_cropping"]
        assert list(data.shape[1:]) == [b - a for a, b in box] and props["shape_before_cropping"] == [155, 240, 240]
    assert props["geometry"]["sitk_direction"] == [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0]


def test_spacing_override_resamples_and_redoes_cases(roots):
    raw, pre = roots
    write_raw_dataset(raw, 905, name="Coarse", num_cases=2, spacing=(1.0, 1.0, 1.0))
    assert main(["-d", "905", "-np", "1"]) == 0
    out = pre / "Dataset905_Coarse"
    fine_shape = np.load(out / "pirl_plans_3d_fullres" / "case000.npy", mmap_mode="r").shape
    assert main(["-d", "905", "-np", "1", "--spacing", "2", "2", "2"]) == 0
    config = Plans.load(out / "PIRLPlans.json").configuration("3d_fullres")
    assert config.spacing == [2.0, 2.0, 2.0] and "--spacing" in config.extra["explanation"]["spacing"]
    coarse_shape = np.load(out / config.data_identifier / "case000.npy", mmap_mode="r").shape
    assert [round(f / c) for f, c in zip(fine_shape[1:], coarse_shape[1:])] == [2, 2, 2]


def test_spacing_override_must_be_positive(roots, capsys):
    raw, _ = roots
    write_raw_dataset(raw, 906, name="Bad", num_cases=1)
    assert main(["-d", "906", "--spacing", "1", "0", "1"]) == 2
    assert "--spacing" in capsys.readouterr().err


def test_hand_edited_plans_are_kept_unless_overwritten(roots, capsys, caplog):
    raw, pre = roots
    write_raw_dataset(raw, 907, name="Edited", num_cases=2)
    plans_file = pre / "Dataset907_Edited" / "PIRLPlans.json"
    assert main(["-d", "907", "-np", "1", "--plan_only"]) == 0
    plans = json.loads(plans_file.read_text())
    plans["configurations"]["3d_fullres"]["batch_size"] = 1
    plans_file.write_text(json.dumps(plans))
    with caplog.at_level(logging.WARNING, "pirl"):
        assert main(["-d", "907", "-np", "1", "--plan_only"]) == 0
    assert json.loads(plans_file.read_text())["configurations"]["3d_fullres"]["batch_size"] == 1
    assert "configurations.3d_fullres.batch_size" in caplog.text and str(plans_file) in caplog.text
    capsys.readouterr()
    assert main(["-d", "907", "-np", "1", "--plan_only", "--spacing", "2", "2", "2"]) == 2
    assert "--overwrite_plans" in capsys.readouterr().err
    assert main(["-d", "907", "-np", "1", "--plan_only", "--overwrite_plans"]) == 0
    assert json.loads(plans_file.read_text())["configurations"]["3d_fullres"]["batch_size"] == 2


def _incomplete(raw: Path, dataset_id: int, deleted: dict[str, list[int]]) -> Path:
    """A 3-case synthetic dataset declaring allow_missing_channels, with the channel files ``deleted`` removed."""
    folder = write_raw_dataset(raw, dataset_id, name="Incomplete", num_cases=3)
    for case, channels in deleted.items():
        for c in channels:
            (folder / "imagesTr" / f"{case}_{c:04d}.nii.gz").unlink()
    d = json.loads((folder / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps({**d, "allow_missing_channels": True}))
    return folder


def test_incomplete_case_is_redone_when_its_channels_change(roots):
    raw, pre = roots
    folder = _incomplete(raw, 908, {"case001": [0, 2]})
    assert main(["-d", "908", "-np", "1"]) == 0
    out = pre / "Dataset908_Incomplete" / "pirl_plans_3d_fullres"
    props, data = load_json(out / "case001.json"), np.load(out / "case001.npy")
    assert props["channels_present"] == [1, 3] and np.isnan(data[[0, 2]]).all() and np.isfinite(data[[1, 3]]).all()
    assert "channels_present" not in load_json(out / "case000.json")
    # the crop box comes from the channels the case has (a NaN-filled stack would keep the whole image)
    raw_data, _ = make_case((24, 28, 26), seed=1)
    hits = [np.flatnonzero(np.any(raw_data[[1, 3]] != 0, axis=(0, *[a for a in (1, 2, 3) if a != axis])))
            for axis in (1, 2, 3)]
    assert props["bbox_used_for_cropping"] == [[int(h[0]), int(h[-1]) + 1] for h in hits] != [[0, 24], [0, 28], [0, 26]]
    complete_mtime = (out / "case000.npy").stat().st_mtime_ns
    data_full, _ = make_case((24, 28, 26), seed=1)  # the channels come back: the case is redone, complete
    for c in (0, 2):
        write_image(data_full[c], folder / "imagesTr" / f"case001_{c:04d}.nii.gz")
    assert main(["-d", "908", "-np", "1"]) == 0
    assert "channels_present" not in load_json(out / "case001.json") and np.isfinite(np.load(out / "case001.npy")).all()
    assert (out / "case000.npy").stat().st_mtime_ns == complete_mtime


@pytest.mark.parametrize("problem, expected", [
    ("channel_in_no_case", "no case has channel(s) 0002 (T2)"),
    ("all_zero_present_channel", "case001_0001.nii.gz: every voxel is 0"),
    ("grid_of_present_channels", "case001_0003.nii.gz: not on the grid of case001_0001.nii.gz"),
    ("label_without_images", "labelsTr/case001.nii.gz: a label without images"),
    ("flag_not_boolean", "allow_missing_channels must be true or false"),
])
def test_incomplete_dataset_still_refuses_what_is_broken(roots, capsys, problem, expected):
    raw, pre = roots
    folder = _incomplete(raw, 909, {"case001": [0, 2]})
    data, _ = make_case((24, 28, 26), seed=1)
    if problem == "channel_in_no_case":
        for case in ("case000", "case002"):
            (folder / "imagesTr" / f"{case}_0002.nii.gz").unlink()
    elif problem == "all_zero_present_channel":
        write_image(np.zeros_like(data[1]), folder / "imagesTr" / "case001_0001.nii.gz")
    elif problem == "grid_of_present_channels":
        write_image(data[3], folder / "imagesTr" / "case001_0003.nii.gz", spacing=(1.0, 1.0, 1.5))
    elif problem == "label_without_images":
        for c in (1, 3):
            (folder / "imagesTr" / f"case001_{c:04d}.nii.gz").unlink()
    else:
        d = json.loads((folder / "dataset.json").read_text())
        (folder / "dataset.json").write_text(json.dumps({**d, "allow_missing_channels": "yes"}))
    assert main(["-d", "909", "-np", "1"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error: " in line]
    assert len(lines) == 1 and expected in lines[0], lines
    assert not (pre / "Dataset909_Incomplete" / "pirl_plans_3d_fullres").exists()


def test_incomplete_case_warnings_name_the_channels_it_has(roots, caplog):
    raw, pre = roots
    folder = _incomplete(raw, 910, {"case001": [0]})
    data, _ = make_case((24, 28, 26), seed=1)
    write_image(np.where(data[1] != 0, 5.0, 0.0).astype(np.float32), folder / "imagesTr" / "case001_0001.nii.gz")
    with caplog.at_level(logging.WARNING, "pirl"):
        assert main(["-d", "910", "-np", "1", "--plan_only"]) == 0
    fingerprint = load_json(pre / "Dataset910_Incomplete" / "dataset_fingerprint.json")
    assert fingerprint["warnings"] == {
        "channel 1 (T1ce) is constant inside the non-zero region (std 0: it normalises to 0)": ["case001"]}
    assert fingerprint["channels_per_case"] == [[0, 1, 2, 3], [1, 2, 3], [0, 1, 2, 3]]


def test_published_split_file_is_checked_and_used(roots, capsys, tmp_path):
    """--split_file: nnU-Net's splits_final.json layout or one fold; a bad file is one line naming it, before any
    work; a good one becomes splits_final.json, which pirl_train's fold selection reads back."""
    from pirl_pipeline.splits import load_or_create_splits

    raw, pre = roots
    write_raw_dataset(raw, 907, name="Published", num_cases=4)
    out = pre / "Dataset907_Published"
    bad = {"unknown": ({"train": ["case000", "caseXYZ"], "val": ["case001"]},
                       "fold 0: 1 case(s) in 'train' not in the dataset: caseXYZ"),
           "overlap": ([{"train": ["case000", "case001"], "val": ["case001"]}],
                       "fold 0: 1 case(s) both in 'train' and 'val': case001"),
           "empty": ([{"train": ["case000"], "val": ["case001"]}, {"train": ["case001"], "val": []}],
                     "fold 1: 'val' is empty"),
           "keys": ({"train": ["case000"], "validation": ["case001"]}, "fold 0: need exactly the keys 'train' and 'val'"),
           "twice": ({"train": ["case000", "case000"], "val": ["case001"]}, "fold 0: 'train' lists case000 more than once"),
           "no_folds": ([], "expected a list of folds")}
    for name, (content, expected) in bad.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(content))
        assert main(["-d", "907", "-np", "1", "--split_file", str(path)]) == 2, name
        err = capsys.readouterr().err
        assert f"error: {path}: {expected}" in err, (name, err)
        assert not out.exists(), name  # refused before any work
    assert main(["-d", "907", "--split_file", str(tmp_path / "none.json")]) == 2
    assert "none.json: split file not found" in capsys.readouterr().err
    published = tmp_path / "published.json"  # one fold; case003 held out (a test case)
    published.write_text(json.dumps({"train": ["case000", "case001"], "val": ["case002"]}))
    assert main(["-d", "907", "-np", "1", "--split_file", str(published)]) == 0
    expected_splits = [{"train": ["case000", "case001"], "val": ["case002"]}]
    assert load_json(out / "splits_final.json") == expected_splits
    cases = [f"case{i:03d}" for i in range(4)]
    assert load_or_create_splits(out, cases) == expected_splits  # what pirl_train -f 0 trains and validates on
    nnunet = tmp_path / "splits_final.json"  # nnU-Net's layout replaces it
    folds = [{"train": ["case001", "case002", "case003"], "val": ["case000"]},
             {"train": ["case000", "case002", "case003"], "val": ["case001"]}]
    nnunet.write_text(json.dumps(folds))
    assert main(["-d", "907", "-np", "1", "--plan_only", "--split_file", str(nnunet)]) == 0
    assert load_json(out / "splits_final.json") == folds
    # a hand-edited splits_final.json is checked too when it is read
    (out / "splits_final.json").write_text(json.dumps([{"train": ["case000"], "val": ["case000"]}]))
    with pytest.raises(PirlInputError, match=r"splits_final.json: fold 0: 1 case\(s\) both in 'train' and 'val'"):
        load_or_create_splits(out, cases)
    assert load_or_create_splits(out, ["case000"]) == [{"train": ["case000"], "val": ["case000"]}]  # one case: smoke
