"""pirl_convert_brats: the BraTS, UPENN-GBM and GLISTR namings, one label convention, geometry kept,
bad input refused, --no-labels."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from dataset_conversion.brats import main
from pirl_pipeline.data.dataset_json import list_cases, load_dataset_json
from pirl_pipeline.data.integrity import load_case

SHAPE = (5, 6, 7)
NAMING = {  # separator, channel suffixes in output order, seg suffix
    "2020": ("_", ("t1", "t1ce", "t2", "flair"), "seg"),
    "2023": ("-", ("t1n", "t1c", "t2w", "t2f"), "seg"),
    "upenn": ("_", ("T1", "T1GD", "T2", "FLAIR"), "SEG"),
    "glistr": ("_", ("t1_sus_n3_r_strip_hist", "t1ce_sus_n3_strip_hist", "t2_sus_n3_r_strip_hist",
                     "flair_sus_n3_r_strip_hist"), None),
}
LPS = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture
def make_case(tmp_path, write_image):
    """``make_case(case, naming, seg_values=..., skip=(), folder="src", dtype=..., seg_dtype=..., spell={},
    **geometry)`` -> source root.

    Channel k holds the value k + 1; the seg holds each of ``seg_values`` (None: no seg file); ``spell``
    maps a suffix to the spelling written (``{"t2w": "t2W"}``)."""

    def make(case, naming, seg_values=(0, 1, 2, 4), skip=(), folder="src", dtype=np.int16, seg_dtype=np.uint8,
             spell=None, **geometry):
        sep, suffixes, seg_suffix = NAMING[naming]
        spell = spell or {}
        for k, suffix in enumerate(suffixes):
            if suffix not in skip:
                write_image(tmp_path / folder / case / f"{case}{sep}{spell.get(suffix, suffix)}.nii.gz",
                            np.full(SHAPE, k + 1, dtype), **geometry)
        if seg_values is not None:
            seg = np.zeros(SHAPE, seg_dtype)
            seg.ravel()[:len(seg_values)] = seg_values
            write_image(tmp_path / folder / case / f"{case}{sep}{seg_suffix}.nii.gz", seg, **geometry)
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


def test_upenn_gbm_and_glistr_namings(make_case, pirl_raw, run_cli):
    make_case("UPENN-GBM-00006_11", "upenn", seg_values=(0, 1, 2, 4), dtype=np.int16)
    src = make_case("ex0", "glistr", seg_values=None, dtype=np.float32, spacing=(0.9765625, 0.9765625, 1.0))
    assert run_cli(main, ["-i", src, "-d", 501])[0] == 0
    out = pirl_raw / "Dataset501_BraTS"
    for k in range(4):  # T1, T1GD / t1ce, T2, FLAIR -> channels 0..3
        assert np.all(read(out / "imagesTr" / f"UPENN-GBM-00006_11_{k:04d}.nii.gz") == k + 1)
        assert np.all(read(out / "imagesTs" / f"ex0_{k:04d}.nii.gz") == k + 1)
    assert read(out / "labelsTr" / "UPENN-GBM-00006_11.nii.gz").ravel()[:4].tolist() == [0, 1, 2, 3]  # 4 -> 3
    assert sitk.ReadImage(str(out / "imagesTs" / "ex0_0000.nii.gz")).GetSpacing() == (0.9765625, 0.9765625, 1.0)


def test_suffixes_ignore_case_and_float_labels_with_integer_values(make_case, pirl_raw, run_cli):
    src = make_case("BraTS-GLI-00000-000", "2023", seg_values=(0, 1, 2, 3), seg_dtype=np.float32,
                    spell={"t2w": "t2W"})
    assert run_cli(main, ["-i", src, "-d", 501])[0] == 0
    out = pirl_raw / "Dataset501_BraTS"
    assert np.all(read(out / "imagesTr" / "BraTS-GLI-00000-000_0002.nii.gz") == 3)  # -t2W is the T2 channel
    label = sitk.ReadImage(str(out / "labelsTr" / "BraTS-GLI-00000-000.nii.gz"))
    assert label.GetPixelID() == sitk.sitkUInt8 and sitk.GetArrayFromImage(label).ravel()[:4].tolist() == [0, 1, 2, 3]


def test_no_labels_writes_every_case_to_imagesTr(make_case, pirl_raw, run_cli):
    make_case("A", "2020", seg_values=(0, 1, 2, 4))
    make_case("B", "2023", seg_values=None)
    src = make_case("C", "upenn", seg_values=(0, 7))  # a label value no naming allows: not even read
    assert run_cli(main, ["-i", src, "-d", 501, "--no-labels"])[0] == 0
    out = pirl_raw / "Dataset501_BraTS"
    assert not (out / "labelsTr").exists() and not (out / "imagesTs").exists()
    dj = load_dataset_json(out)
    assert dj.num_training == 3 and [c.name for c in list_cases(out, dj)] == ["A", "B", "C"]
    assert all(c.label is None for c in list_cases(out, dj))


BAD_INPUTS = {  # name: (cases to make, fragments the error must name)
    "missing channel": ([("A", "2020", {"skip": ("t1ce",)})], ["A/A_t1ce.nii.gz"]),
    "missing UPENN-GBM channel": ([("A", "upenn", {"skip": ("T1GD",)})], ["A/A_T1GD.nii.gz"]),
    "undeclared label value": ([("A", "2020", {"seg_values": (0, 3)})], ["A/A_seg.nii.gz"]),
    "label value 4 in 2023 naming": ([("B", "2023", {"seg_values": (0, 4)})], ["B/B-seg.nii.gz"]),
    "non-integer float label": ([("B", "2023", {"seg_values": (0, 1.5), "seg_dtype": np.float32})],
                                ["B/B-seg.nii.gz", "non-integer", "1.5"]),
    "one case mixing namings": ([("A", "2020", {}), ("A", "2023", {})], ["src/A/A"]),
    "GLISTR and BraTS files in one case": ([("A", "glistr", {"seg_values": None}), ("A", "2020", {})], ["src/A/A"]),
    "one suffix spelt twice": ([("A", "2023", {}), ("A", "2023", {"spell": {"t2w": "t2W"}})],
                               ["A-t2w.nii.gz", "A-t2W.nii.gz"]),
}


@pytest.mark.parametrize("problem", BAD_INPUTS)
def test_bad_input(problem, make_case, pirl_raw, run_cli):
    cases, named = BAD_INPUTS[problem]
    for case, naming, options in cases:
        src = make_case(case, naming, **options)
    code, line = run_cli(main, ["-i", src, "-d", 501])
    assert code == 2 and line.startswith("error: ") and all(n in line for n in named), line
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


@pytest.mark.shared_data
def test_brats2023_more_as_shipped(shared_data, pirl_raw, run_cli):
    """BraTS-GLI-00000-000: '-t2W' and a float32 seg {0,1,2,3}; 00027/00028 unlabelled -> imagesTs."""
    src, case = shared_data / "brats2023_more", "BraTS-GLI-00000-000"
    assert run_cli(main, ["-i", src, "-d", 501])[0] == 0
    out = pirl_raw / "Dataset501_BraTS"
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [f"{case}.nii.gz"]
    assert sorted({p.name[:-12] for p in (out / "imagesTs").iterdir()}) == ["BraTS-GLI-00027-000",
                                                                            "BraTS-GLI-00028-000"]
    np.testing.assert_array_equal(read(out / "imagesTr" / f"{case}_0002.nii.gz"), read(src / case / f"{case}-t2W.nii.gz"))
    seg = read(src / case / f"{case}-seg.nii.gz")
    assert seg.dtype == np.float32
    np.testing.assert_array_equal(read(out / "labelsTr" / f"{case}.nii.gz"), seg.astype(np.uint8))


@pytest.mark.shared_data
def test_upenn_gbm_and_glistr_as_shipped(shared_data, tmp_path, pirl_raw, run_cli):
    """UPENN-GBM _T1GD is T1ce and _SEG 4 becomes 3; GLISTR ex0 (no label -> imagesTs) keeps its own grid."""
    both = tmp_path / "both"
    both.mkdir()
    for source in ("upenn_gbm/UPENN-GBM-00006_11", "glistr_example/ex0"):
        (both / source.split("/")[1]).symlink_to(shared_data / source)
    assert run_cli(main, ["-i", both, "-d", 501])[0] == 0
    out, case = pirl_raw / "Dataset501_BraTS", "UPENN-GBM-00006_11"
    np.testing.assert_array_equal(read(out / "imagesTr" / f"{case}_0001.nii.gz"),
                                  read(both / case / f"{case}_T1GD.nii.gz"))
    seg = read(both / case / f"{case}_SEG.nii.gz")
    np.testing.assert_array_equal(read(out / "labelsTr" / f"{case}.nii.gz"), np.where(seg == 4, 3, seg))
    glistr = sitk.ReadImage(str(out / "imagesTs" / "ex0_0003.nii.gz"))
    source = sitk.ReadImage(str(both / "ex0" / "ex0_flair_sus_n3_r_strip_hist.nii.gz"))
    assert glistr.GetSize() == source.GetSize() == (192, 256, 192) and glistr.GetSpacing() == source.GetSpacing()
