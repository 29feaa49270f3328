"""pirl_convert_folder: generic one-folder-per-case conversion, and the writer's bad-input checks."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from dataset_conversion.generic_folder import main
from pirl_pipeline.data.dataset_json import list_cases, load_dataset_json
from pirl_pipeline.data.integrity import load_case

SHAPE = (6, 7, 8)
CASES = ("case_a", "case_b")


def read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture
def source(tmp_path, write_image):
    """Two cases: t1, flair (values 1..2), seg {0,1,2}, mask (a box inside the volume)."""
    rng = np.random.default_rng(0)
    label = np.zeros(SHAPE, np.uint8)
    label[2:4, 2:4, 2:4] = 1
    label[3, 3, 3] = 2
    mask = np.zeros(SHAPE, np.uint8)
    mask[1:5, 1:6, 1:7] = 1
    for case in CASES:
        for name in ("t1", "flair"):
            write_image(tmp_path / "src" / case / f"{name}.nii.gz", rng.random(SHAPE, dtype=np.float32) + 1)
        write_image(tmp_path / "src" / case / "seg.nii.gz", label)
        write_image(tmp_path / "src" / case / "mask.nii.gz", mask)
    return tmp_path / "src"


def args(source, *extra):
    return ["-i", source, "-d", 7, "-n", "Toy", "--channel", "T1=t1.nii.gz", "--channel", "FLAIR=fl*",
            "--label", "seg.nii.gz", *extra]


def test_converts_channels_label_and_mask(source, pirl_raw, run_cli):
    assert run_cli(main, args(source, "--mask", "mask.nii.gz"))[0] == 0
    out = pirl_raw / "Dataset007_Toy"
    dj = json.loads((out / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "T1", "1": "FLAIR"}
    assert dj["labels"] == {"background": 0, "label_1": 1, "label_2": 2} and dj["numTraining"] == 2
    mask = read(source / "case_a" / "mask.nii.gz") > 0
    t1, flair = read(source / "case_a" / "t1.nii.gz"), read(source / "case_a" / "flair.nii.gz")
    np.testing.assert_array_equal(read(out / "imagesTr" / "case_a_0000.nii.gz"), np.where(mask, t1, 0))
    np.testing.assert_array_equal(read(out / "imagesTr" / "case_a_0001.nii.gz"), np.where(mask, flair, 0))
    np.testing.assert_array_equal(read(out / "labelsTr" / "case_a.nii.gz"), read(source / "case_a" / "seg.nii.gz"))
    cases = list_cases(out, load_dataset_json(out))
    assert [c.name for c in cases] == list(CASES)
    assert load_case(cases[1], load_dataset_json(out).label_values).data.shape == (2, *SHAPE)


def test_label_names_and_image_only(source, pirl_raw, run_cli):
    assert run_cli(main, args(source, "--labels", "tumour=1", "core=2"))[0] == 0
    labels = json.loads((pirl_raw / "Dataset007_Toy" / "dataset.json").read_text())["labels"]
    assert labels == {"background": 0, "tumour": 1, "core": 2}
    argv = ["-i", source, "-d", 8, "-n", "Img", "--channel", "T1=t1.nii.gz"]
    assert run_cli(main, argv)[0] == 0
    out = pirl_raw / "Dataset008_Img"
    assert not (out / "labelsTr").exists() and len(list((out / "imagesTr").iterdir())) == 2


def test_regions_are_declared_with_their_class_order(source, pirl_raw, run_cli):
    extra = ("--labels", "whole=1,2", "core=2", "--regions_class_order", "1", "2")
    assert run_cli(main, args(source, *extra))[0] == 0
    dj = load_dataset_json(pirl_raw / "Dataset007_Toy")
    assert dj.has_regions and dj.labels["whole"] == [1, 2] and dj.regions_class_order == [1, 2]
    code, line = run_cli(main, args(source, "--labels", "whole=1,2", "--overwrite"))
    assert code == 2 and "--regions_class_order" in line


def test_case_names_from_a_file_in_each_case_folder(source, pirl_raw, run_cli):
    (source / "case_a" / "subject_id.txt").write_text("Case_id: Brats18_X_1\nSubject_id: Brats18_X_1")
    (source / "case_b" / "subject_id.txt").write_text("Case_id: Brats18_A_2\nSubject_id: Brats18_A_2\n")
    naming = ("--case_name_file", "subject_id.txt", "--case_name_key", "Subject_id")
    assert run_cli(main, args(source, *naming))[0] == 0
    out = pirl_raw / "Dataset007_Toy"
    assert [c.name for c in list_cases(out, load_dataset_json(out))] == ["Brats18_A_2", "Brats18_X_1"]
    np.testing.assert_array_equal(read(out / "labelsTr" / "Brats18_X_1.nii.gz"), read(source / "case_a" / "seg.nii.gz"))
    (source / "case_a" / "name.txt").write_text("patient 7\n")
    (source / "case_b" / "name.txt").write_text("patient-8")
    assert run_cli(main, args(source, "--case_name_file", "name.txt", "--overwrite"))[0] == 0
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == ["patient-7.nii.gz", "patient-8.nii.gz"]


CASE_NAME_PROBLEMS = {  # case_b's subject_id.txt, the options, what the error names
    "two lines, no key": ("Case_id: A\nSubject_id: A", [], "--case_name_key"),
    "key absent": ("Case_id: A", ["--case_name_key", "Subject_id"], "keys in the file: Case_id"),
    "same name as case_a": ("Subject_id: S1", ["--case_name_key", "Subject_id"], "S1 is already used"),
}


@pytest.mark.parametrize("problem", CASE_NAME_PROBLEMS)
def test_case_name_file_problems_name_the_file(problem, source, pirl_raw, run_cli):
    text, extra, named = CASE_NAME_PROBLEMS[problem]
    (source / "case_a" / "subject_id.txt").write_text("Subject_id: S1\n")
    (source / "case_b" / "subject_id.txt").write_text(text)
    code, line = run_cli(main, args(source, "--case_name_file", "subject_id.txt", *extra))
    assert code == 2 and "case_b" in line and named in line, line
    assert not pirl_raw.exists() or not any(pirl_raw.iterdir())


def _garbage(path):
    path.write_bytes(b"this is not an image")


BAD_INPUTS = {
    "missing channel": (lambda src, w: (src / "case_b" / "flair.nii.gz").unlink(), [], "case_b"),
    "two matches": (lambda src, w: w(src / "case_a" / "flair2.nii.gz", np.ones(SHAPE)), [], "case_a"),
    "channels on different grids": (
        lambda src, w: w(src / "case_a" / "flair.nii.gz", np.ones(SHAPE), spacing=(1, 1, 2)), [],
        "case_a/flair.nii.gz"),
    "label on a different grid": (
        lambda src, w: w(src / "case_b" / "seg.nii.gz", np.zeros(SHAPE), origin=(0, 0, 5)), [],
        "case_b/seg.nii.gz"),
    "NaN in an image": (
        lambda src, w: w(src / "case_b" / "t1.nii.gz", np.full(SHAPE, np.nan, np.float32)), [],
        "case_b/t1.nii.gz"),
    "unreadable file": (lambda src, w: _garbage(src / "case_b" / "t1.nii.gz"), [], "case_b/t1.nii.gz"),
    "undeclared label value": (lambda src, w: None, ["--labels", "tumour=1"], "case_a/seg.nii.gz"),
    "non-integer label": (
        lambda src, w: w(src / "case_a" / "seg.nii.gz", np.full(SHAPE, 0.5, np.float32)), [],
        "case_a/seg.nii.gz"),
    "mask on a different grid": (
        lambda src, w: w(src / "case_a" / "mask.nii.gz", np.ones((6, 7, 9))), ["--mask", "mask.nii.gz"],
        "case_a/mask.nii.gz"),
}


@pytest.mark.parametrize("problem", BAD_INPUTS)
def test_bad_input_is_one_line_error_and_writes_nothing(problem, source, pirl_raw, run_cli, write_image):
    damage, extra, named = BAD_INPUTS[problem]
    damage(source, write_image)
    code, line = run_cli(main, args(source, *extra))
    assert code == 2
    assert line.startswith("error: ") and named in line, line
    assert not pirl_raw.exists() or not any(pirl_raw.iterdir())  # no dataset, no temp folder left


def test_existing_dataset_is_kept_unless_overwrite(source, pirl_raw, run_cli):
    assert run_cli(main, args(source))[0] == 0
    dataset_json = pirl_raw / "Dataset007_Toy" / "dataset.json"
    before = dataset_json.read_text()
    code, line = run_cli(main, args(source, "--labels", "a=1", "b=2"))
    assert code == 2 and "Dataset007_Toy" in line and "--overwrite" in line
    assert dataset_json.read_text() == before
    assert run_cli(main, args(source, "--labels", "a=1", "b=2", "--overwrite"))[0] == 0
    assert json.loads(dataset_json.read_text())["labels"] == {"background": 0, "a": 1, "b": 2}
    assert sorted(p.name for p in pirl_raw.iterdir()) == ["Dataset007_Toy"]


def test_refuses_to_write_into_the_source(source, monkeypatch, run_cli):
    monkeypatch.setenv("PIRL_raw", str(source / "raw"))
    code, line = run_cli(main, args(source))
    assert code == 2 and "source folder" in line
    assert not (source / "raw").exists()


@pytest.mark.shared_data
def test_brats2015_two_modality(shared_data, pirl_raw, run_cli):
    src = shared_data / "brats2015_two_modality"
    argv = ["-i", src, "-d", 503, "-n", "BraTS2015", "--channel", "FLAIR=Flair_*.nii.gz",
            "--channel", "T1c=T1c_*.nii.gz", "--label", "OTMultiClass.nii.gz", "--mask", "brainmask.nii.gz"]
    assert run_cli(main, argv)[0] == 0
    out = pirl_raw / "Dataset503_BraTS2015"
    dj = load_dataset_json(out)
    assert dj.label_values == {0, 1, 2, 3, 4} and dj.num_training == 4
    case = "brats_2013_pat0003_1"
    flair_src = read(src / case / "Flair_subtrMeanDivStd.nii.gz")
    mask = read(src / case / "brainmask.nii.gz") > 0
    flair = read(out / "imagesTr" / f"{case}_0000.nii.gz")
    assert flair_src[~mask].min() < 0  # the source background is not zero ...
    assert np.all(flair[~mask] == 0)  # ... the converted one is
    np.testing.assert_array_equal(flair[mask], flair_src[mask])
    label = sitk.ReadImage(str(out / "labelsTr" / f"{case}.nii.gz"))
    assert label.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), read(src / case / "OTMultiClass.nii.gz"))


@pytest.mark.shared_data
def test_glistr_example_with_globs(shared_data, pirl_raw, run_cli):
    """GLISTR's ex0_<mod>_sus_n3_[r_]strip_hist files: four globs, no label, its own 192x256x192 grid kept."""
    src = shared_data / "glistr_example"
    globs = [f"{name}=*_{mod}_sus_n3_*strip_hist.nii.gz"
             for name, mod in (("T1", "t1"), ("T1ce", "t1ce"), ("T2", "t2"), ("FLAIR", "flair"))]
    argv = ["-i", src, "-d", 504, "-n", "GLISTR", *[a for g in globs for a in ("--channel", g)]]
    assert run_cli(main, argv)[0] == 0
    out = pirl_raw / "Dataset504_GLISTR"
    assert not (out / "labelsTr").exists() and load_dataset_json(out).num_training == 1
    source = sitk.ReadImage(str(src / "ex0" / "ex0_t1ce_sus_n3_strip_hist.nii.gz"))
    converted = sitk.ReadImage(str(out / "imagesTr" / "ex0_0001.nii.gz"))
    assert converted.GetSize() == (192, 256, 192)
    assert (converted.GetSpacing(), converted.GetOrigin()) == (source.GetSpacing(), source.GetOrigin())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(converted), sitk.GetArrayFromImage(source))


@pytest.mark.shared_data
def test_brats2018_flair_t1_named_by_subject_id(shared_data, pirl_raw, run_cli):
    """Six cases named from subject_id.txt; float32 GT_W {0,1} -> uint8; skull-stripped (background 0)."""
    src = shared_data / "brats2018_flair_t1"
    argv = ["-i", src, "-d", 505, "-n", "BraTS2018FlairT1", "--channel", "FLAIR=FLAIR.nii.gz",
            "--channel", "T1=T1.nii.gz", "--label", "GT_W.nii.gz", "--labels", "background=0", "whole tumour=1",
            "--case_name_file", "subject_id.txt", "--case_name_key", "Subject_id"]
    assert run_cli(main, argv)[0] == 0
    out = pirl_raw / "Dataset505_BraTS2018FlairT1"
    dj = load_dataset_json(out)
    assert dj.labels == {"background": 0, "whole tumour": 1}
    assert [c.name for c in list_cases(out, dj)] == [
        "Brats18_CBICA_AOO_1", "Brats18_CBICA_ARW_1", "Brats18_CBICA_ASK_1", "Brats18_CBICA_ATV_1",
        "Brats18_TCIA02_471_1", "Brats18_TCIA08_105_1"]
    label = sitk.ReadImage(str(out / "labelsTr" / "Brats18_CBICA_AOO_1.nii.gz"))
    assert label.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), read(src / "case_0" / "GT_W.nii.gz"))
    flair = read(out / "imagesTr" / "Brats18_CBICA_AOO_1_0000.nii.gz")
    np.testing.assert_array_equal(flair, read(src / "case_0" / "FLAIR.nii.gz"))
    assert flair.min() == 0 and 0.1 < np.count_nonzero(flair) / flair.size < 0.25  # a brain, zero around it
