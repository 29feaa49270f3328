"""pirl_convert_autopet on tiny files in the AutoPET-II layout PATIENT/STUDY/{SUV,CTres,SEG}.nii.gz."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from dataset_conversion.autopet import main
from pirl_pipeline.data.dataset_json import list_cases, load_dataset_json

SHAPE = (4, 5, 6)
STUDY = "08-12-2005-NA-PET-CT Ganzkoerper  primaer mit KM-10445"


def read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture
def make_study(tmp_path, write_image):
    """``make_study(patient, study, seg=True)`` writes SUV (values 0.5), CTres (-100) and SEG ({0, 1})."""

    def make(patient, study, seg=True):
        folder = tmp_path / "autopet" / patient / study
        write_image(folder / "SUV.nii.gz", np.full(SHAPE, 0.5, np.float32))
        write_image(folder / "CTres.nii.gz", np.full(SHAPE, -100, np.int16))
        write_image(folder / "CT.nii.gz", np.zeros((8, 8, 8), np.int16))  # original-resolution CT: ignored
        if seg:
            label = np.zeros(SHAPE, np.uint8)
            label[1:3, 1:3, 1:3] = 1
            write_image(folder / "SEG.nii.gz", label)
        return tmp_path / "autopet"

    return make


def test_converts_pet_ct_and_lesion(make_study, pirl_raw, run_cli):
    make_study("PETCT_0af7ffe12a", STUDY)
    make_study("PETCT_0af7ffe12a", "08-12-2005-NA-PET-CT second")  # same date: the name gets "-2"
    src = make_study("PETCT_1b2", "no date", seg=False)
    assert run_cli(main, ["-i", src, "-d", 504])[0] == 0
    out = pirl_raw / "Dataset504_AutoPET"
    dj = json.loads((out / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "PET", "1": "CT"} and dj["labels"] == {"background": 0, "lesion": 1}
    names = sorted(c.name for c in list_cases(out, load_dataset_json(out)))
    assert names == ["PETCT_0af7ffe12a_08-12-2005", "PETCT_0af7ffe12a_08-12-2005-2"]
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == ["PETCT_1b2_no-date_0000.nii.gz",
                                                                     "PETCT_1b2_no-date_0001.nii.gz"]
    case = "PETCT_0af7ffe12a_08-12-2005"
    assert np.all(read(out / "imagesTr" / f"{case}_0000.nii.gz") == np.float32(0.5))
    assert np.all(read(out / "imagesTr" / f"{case}_0001.nii.gz") == -100)
    np.testing.assert_array_equal(read(out / "labelsTr" / f"{case}.nii.gz"),
                                  read(src / "PETCT_0af7ffe12a" / STUDY / "SEG.nii.gz"))


@pytest.mark.parametrize("problem", ["missing CTres", "lesion value 2", "NaN in SUV"])
def test_bad_input(problem, make_study, write_image, pirl_raw, run_cli):
    src = make_study("PETCT_1", STUDY)
    study = src / "PETCT_1" / STUDY
    if problem == "missing CTres":
        (study / "CTres.nii.gz").unlink()
        named = study / "CTres.nii.gz"
    elif problem == "lesion value 2":
        named = write_image(study / "SEG.nii.gz", np.full(SHAPE, 2, np.uint8))
    else:
        suv = np.full(SHAPE, 0.5, np.float32)
        suv[0, 0, 0] = np.nan
        named = write_image(study / "SUV.nii.gz", suv)
    code, line = run_cli(main, ["-i", src, "-d", 504])
    assert code == 2 and line.startswith(f"error: {named}:"), line
    assert not pirl_raw.exists() or not any(pirl_raw.iterdir())


def test_no_studies(tmp_path, pirl_raw, run_cli):
    (tmp_path / "empty" / "PETCT_1").mkdir(parents=True)
    code, line = run_cli(main, ["-i", tmp_path / "empty", "-d", 504])
    assert code == 2 and "no AutoPET studies" in line
