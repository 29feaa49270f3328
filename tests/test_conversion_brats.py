"""pirl_convert_brats: both BraTS namings, one label convention, geometry kept, bad input refused."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from dataset_conversion.brats import main
from pirl_pipeline.data.dataset_json import list_cases, load_dataset_json
from pirl_pipeline.data.integrity import load_case

SHAPE = (5, 6, 7)
NAMING = {"2020": ("_", ("t1", "t1ce", "t2", "flair")), "2023": ("-", ("t1n", "t1c", "t2w", "t2f"))}
LPS = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture
def make_case(tmp_path, write_image):
    """``make_case(case, naming, seg_values=..., skip=(), folder="src", dtype=..., **geometry)`` -> source root.

    Channel k holds the value k + 1; the seg holds each of ``seg_values`` (None: no seg file)."""

    def make(case, naming, seg_values=(0, 1, 2, 4), skip=(), folder="src", dtype=np.int16, **geometry):
        sep, suffixes = NAMING[naming]
        for k, suffix in enumerate(suffixes):
            if suffix not in skip:
                write_image(tmp_path / folder / case / f"{case}{sep}{suffix}.nii.gz",
                            np.full(SHAPE, k + 1, dtype), **geometry)
        if seg_values is not None:
            seg = np.zeros(SHAPE, np.uint8)
            seg.ravel()[:len(seg_values)] = seg_values
            write_image(tmp_path / folder / case / f"{case}{sep}seg.nii.gz", seg, **geometry)
        return tmp_path / folder.split("/")[0]

    return make


def test_both_namings_in_one_folder(make_case, pirl_raw, run_cli):
    make_case("BraTS20_Training_001", "2020", seg_values=(0, 1, 2, 4))
    src = make_case("BraTS-GLI-00001-000", "2023", seg_values=(0, 1, 2, 3), folder="src/HGG")
    assert run_cli(main, ["-i", src, "-d", 501])[0] == 0
    out = pirl_raw / "Dataset501_BraTS"
    dj = json.loads((out / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
    assert dj["labels"] == {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [1, 3], "enhancing tumor": 3}
    assert dj["regions_class_order"] == [2, 1, 3] and dj["label_names"] == {"1": "NCR", "2": "ED", "3": "ET"}
    for case in ("BraTS20_Training_001", "BraTS-GLI-00001-000"):
        for k in range(4):
            assert np.all(read(out / "imagesTr" / f"{case}_{k:04d}.nii.gz") == k + 1)
        assert read(out / "labelsTr" / f"{case}.nii.gz").ravel()[:4].tolist() == [0, 1, 2, 3]
    cases = list_cases(out, load_dataset_json(out))
    assert len(cases) == 2 and all(c.label is not None for c in cases)


def test_unlabelled_cases(make_case, pirl_raw, run_cli):
    make_case("A", "2020")
    src = make_case("B", "2023", seg_values=None)
    assert run_cli(main, ["-i", src, "-d", 501])[0] == 0
    out = pirl_raw / "Dataset501_BraTS"
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == [f"B_{k:04d}.nii.gz" for k in range(4)]
    assert [p.name for p in (out / "labelsTr").iterdir()] == ["A.nii.gz"]
    src = make_case("C", "2023", seg_values=None, folder="unlabelled")
    assert run_cli(main, ["-i", src, "-d", 502, "-n", "Unlabelled"])[0] == 0
    out = pirl_raw / "Dataset502_Unlabelled"
    assert not (out / "labelsTr").exists() and load_dataset_json(out).num_training == 1


def test_float64_and_direction_are_kept(make_case, pirl_raw, run_cli):
    geometry = {"spacing": (1.0, 1.0, 1.5), "origin": (10.0, -20.0, 5.0), "direction": LPS}
    src = make_case("C", "2023", seg_values=(0, 3), dtype=np.float64, **geometry)
    assert run_cli(main, ["-i", src, "-d", 501])[0] == 0
    image = sitk.ReadImage(str(pirl_raw / "Dataset501_BraTS" / "imagesTr" / "C_0003.nii.gz"))
    assert image.GetPixelID() == sitk.sitkFloat32
    assert (image.GetSpacing(), image.GetOrigin(), image.GetDirection()) == tuple(geometry.values())


BAD_INPUTS = {  # name: (cases to make, fragment the error must name)
    "missing channel": ([("A", "2020", {"skip": ("t1ce",)})], "A/A_t1ce.nii.gz"),
    "undeclared label value": ([("A", "2020", {"seg_values": (0, 3)})], "A/A_seg.nii.gz"),
    "label value 4 in 2023 naming": ([("B", "2023", {"seg_values": (0, 4)})], "B/B-seg.nii.gz"),
    "one case mixing namings": ([("A", "2020", {}), ("A", "2023", {})], "src/A/A"),
}


@pytest.mark.parametrize("problem", BAD_INPUTS)
def test_bad_input(problem, make_case, pirl_raw, run_cli):
    cases, named = BAD_INPUTS[problem]
    for case, naming, options in cases:
        src = make_case(case, naming, **options)
    code, line = run_cli(main, ["-i", src, "-d", 501])
    assert code == 2 and line.startswith("error: ") and named in line, line
    assert not pirl_raw.exists() or not any(pirl_raw.iterdir())


def test_no_brats_files_and_existing_output(tmp_path, make_case, pirl_raw, run_cli):
    (tmp_path / "empty").mkdir()
    code, line = run_cli(main, ["-i", tmp_path / "empty", "-d", 501])
    assert code == 2 and "no BraTS files" in line and str(tmp_path / "empty") in line
    src = make_case("A", "2020")
    assert run_cli(main, ["-i", src, "-d", 501])[0] == 0
    code, line = run_cli(main, ["-i", src, "-d", 501])
    assert code == 2 and "Dataset501_BraTS" in line and "already exists" in line


@pytest.mark.shared_data
def test_brats2020_style(shared_data, pirl_raw, run_cli):
    src = shared_data / "brats2020_style"
    assert run_cli(main, ["-i", src, "-d", 501])[0] == 0
    out = pirl_raw / "Dataset501_BraTS"
    assert load_dataset_json(out).num_training == 2
    source = sitk.ReadImage(str(src / "AURORA-MET-0001" / "AURORA-MET-0001_t1ce.nii.gz"))
    converted = sitk.ReadImage(str(out / "imagesTr" / "AURORA-MET-0001_0001.nii.gz"))
    assert converted.GetDirection() == LPS
    for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection", "GetPixelID"):
        assert getattr(converted, get)() == getattr(source, get)(), get
    np.testing.assert_array_equal(sitk.GetArrayFromImage(converted), sitk.GetArrayFromImage(source))
    np.testing.assert_array_equal(read(out / "labelsTr" / "TCGA-DU-7294.nii.gz"),
                                  read(src / "TCGA-DU-7294" / "TCGA-DU-7294_seg.nii.gz"))


@pytest.mark.shared_data
def test_brats2023_style(shared_data, pirl_raw, run_cli):
    src = shared_data / "brats2023_style"
    assert run_cli(main, ["-i", src, "-d", 502])[0] == 0
    out, case = pirl_raw / "Dataset502_BraTS", "BraTS-PR138-00000-000"
    source = read(src / case / f"{case}-t2f.nii.gz")
    assert source.dtype == np.float64
    flair = read(out / "imagesTr" / f"{case}_0003.nii.gz")
    assert flair.dtype == np.float32
    np.testing.assert_array_equal(flair, source.astype(np.float32))
    assert set(np.unique(read(out / "labelsTr" / f"{case}.nii.gz"))) == {0, 1, 2, 3}


@pytest.mark.shared_data
def test_mixed_namings_from_shared_data(shared_data, tmp_path, pirl_raw, run_cli):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "TCGA-DU-7294").symlink_to(shared_data / "brats2020_style" / "TCGA-DU-7294")
    (mixed / "BraTS-PR138-00000-000").symlink_to(shared_data / "brats2023_style" / "BraTS-PR138-00000-000")
    assert run_cli(main, ["-i", mixed, "-d", 503, "-n", "Mixed"])[0] == 0
    out = pirl_raw / "Dataset503_Mixed"
    dj = load_dataset_json(out)
    cases = list_cases(out, dj)
    assert [c.name for c in cases] == ["BraTS-PR138-00000-000", "TCGA-DU-7294"]
    loaded = load_case(cases[0], dj.label_values)
    assert loaded.data.shape == (4, 155, 240, 240) and set(np.unique(loaded.label)) <= dj.label_values
