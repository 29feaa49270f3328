"""--resample_to: channels and label on different grids brought onto one grid in physical space.

Generated cases: a coarse "PET" grid (4 x 4 x 3 mm) and a finer, shifted "CT" grid (1.25 x 1.25 x 1 mm) showing
the same Gaussian blob and the same sphere (the label), each evaluated at its own voxel centres; when
../shared/data is present, one real PET/CT subject of sts_pet_ct.
"""
from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
import SimpleITK as sitk

from dataset_conversion import autopet, generic_folder
from dataset_conversion.common import CONVERSION_RECORD
from dataset_conversion.resample import OntoGrid
from pirl_pipeline.data.image_io import Geometry
from pirl_pipeline.errors import PirlInputError

PET = {"size": (14, 14, 12), "spacing": (4.0, 4.0, 3.0), "origin": (0.0, 0.0, 0.0)}
CT = {"size": (40, 40, 36), "spacing": (1.25, 1.25, 1.0), "origin": (3.1, 2.7, 1.2)}
BLOB, BLOB_SIGMA = np.array([27.3, 25.9, 17.4]), 6.0  # mm, x y z
SPHERE, RADIUS = np.array([26.1, 28.4, 18.2]), 9.0
CT_BACKGROUND, PET_BACKGROUND = -100.0, 0.5


def points(grid: dict) -> np.ndarray:
    """(z, y, x, 3) physical x, y, z of every voxel centre of an axis-aligned grid."""
    axes = [o + s * np.arange(n) for n, s, o in zip(grid["size"], grid["spacing"], grid["origin"])]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    return np.stack([x, y, z], -1).transpose(2, 1, 0, 3)


def blob(grid: dict) -> np.ndarray:
    return np.exp(-((points(grid) - BLOB) ** 2).sum(-1) / (2 * BLOB_SIGMA**2))


def sphere(grid: dict) -> np.ndarray:
    return (((points(grid) - SPHERE) ** 2).sum(-1) <= RADIUS**2).astype(np.uint8)


def centroid(weights: np.ndarray, grid: dict) -> np.ndarray:
    """Physical x, y, z centroid of non-negative (z, y, x) weights on ``grid``."""
    return (points(grid) * weights[..., None]).sum((0, 1, 2)) / weights.sum()


def read(path):
    """(z, y, x) array and its grid, rounded as NIfTI stores it (float32)."""
    image = sitk.ReadImage(str(path))
    grid = {k: tuple(round(v, 4) for v in getattr(image, f"Get{k.title()}")()) for k in ("spacing", "origin")}
    return sitk.GetArrayFromImage(image), {"size": image.GetSize(), **grid}


@pytest.fixture
def source(tmp_path, write_image):
    """``source(ct=..., label=...)``: case folder ``src/case_a`` with PET.nii.gz and CT.nii.gz (overrides of the CT
    grid as keyword arguments, e.g. ``origin``) and ``ct_mask``/``pet_mask`` (the sphere on each grid)."""

    def make(label=None, **ct_grid):
        ct, folder = {**CT, **ct_grid}, tmp_path / "src" / "case_a"
        write_image(folder / "PET.nii.gz", (PET_BACKGROUND + 10 * blob(PET)).astype(np.float32), PET["spacing"],
                    PET["origin"])
        geometry = (ct["spacing"], ct["origin"], *([ct["direction"]] if "direction" in ct else []))
        write_image(folder / "CT.nii.gz", (CT_BACKGROUND + 1000 * blob(ct)).astype(np.float32), *geometry)
        write_image(folder / "ct_mask.nii.gz", sphere(ct) if label is None else label, *geometry)
        write_image(folder / "pet_mask.nii.gz", sphere(PET), PET["spacing"], PET["origin"])
        return tmp_path / "src"

    return make


def convert(source, grid, label="ct_mask*", *extra):
    return ["-i", source, "-d", 21, "-n", "PetCt", "--channel", "PET=PET*", "--channel", "CT=CT*",
            "--label", label, "--resample_to", grid, *extra]


def dice(a, b):
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_onto_the_pet_grid_alignment_label_and_record(source, pirl_raw, run_cli, caplog):
    """CT and its mask resampled onto the PET grid stay where they were in physical space (blob centroid within
    0.05 PET voxel, sphere centroid within 0.1), the PET channel is written unchanged, and conversion.json and
    the log say what was resampled."""
    src = source()
    with caplog.at_level(logging.INFO):
        assert run_cli(generic_folder.main, convert(src, "PET"))[0] == 0
    out = pirl_raw / "Dataset021_PetCt"
    pet, grid = read(out / "imagesTr" / "case_a_0000.nii.gz")
    ct, _ = read(out / "imagesTr" / "case_a_0001.nii.gz")
    label, _ = read(out / "labelsTr" / "case_a.nii.gz")
    assert grid == PET and np.array_equal(pet, read(src / "case_a" / "PET.nii.gz")[0])
    voxel = np.array(PET["spacing"])
    assert np.all(np.abs(centroid(np.clip(ct - CT_BACKGROUND, 0, None), grid) - BLOB) < 0.05 * voxel)
    assert ct.min() == -1000  # outside the CT's field of view
    assert np.all(np.abs(centroid(label, grid) - centroid(sphere(CT), CT)) < 0.1 * voxel)
    assert dice(label > 0, sphere(PET) > 0) > 0.95
    record = json.loads((out / CONVERSION_RECORD).read_text())
    assert record["resample_to"] == "PET" and record["method"]["padding"]["CT"] == -1000
    done = record["cases"]["case_a"]["resampled"]
    assert [r["as"] for r in done] == ["channel CT", "label"] and done[0]["geometry"]["sitk_size"] == list(CT["size"])
    assert "case case_a: channel CT CT.nii.gz resampled onto the PET grid" in caplog.text


def test_onto_the_ct_grid_and_a_label_already_there(source, pirl_raw, run_cli):
    """PET onto the finer CT grid: blob centroid within 0.05 CT voxel, SUV never above the source's maximum
    (linear), no negative SUV; the CT mask, already on the CT grid, is written unchanged."""
    src = source()
    assert run_cli(generic_folder.main, convert(src, "CT"))[0] == 0
    out = pirl_raw / "Dataset021_PetCt"
    pet, grid = read(out / "imagesTr" / "case_a_0000.nii.gz")
    assert grid == CT
    shift = centroid(np.clip(pet - PET_BACKGROUND, 0, None), grid) - BLOB
    assert np.all(np.abs(shift) < 0.05 * np.array(CT["spacing"]))
    assert 0 <= pet.min() and pet.max() <= read(src / "case_a" / "PET.nii.gz")[0].max()
    assert np.array_equal(read(out / "labelsTr" / "case_a.nii.gz")[0], sphere(CT))
    assert [r["as"] for r in json.loads((out / CONVERSION_RECORD).read_text())["cases"]["case_a"]["resampled"]] == [
        "channel PET"]


def _tiny_label():
    label = np.zeros(CT["size"][::-1], np.uint8)
    label[6, 20, 20] = 1  # one 1.6 mm³ CT voxel: no PET voxel (48 mm³) can hold it
    return label


@pytest.mark.parametrize("problem, grid, file, expected", [
    ("no overlap", {"origin": (900.0, 0.0, 0.0)}, "CT.nii.gz", "does not overlap PET.nii.gz in physical space"),
    ("little overlap", {"origin": (40.0, 2.7, 1.2)}, "CT.nii.gz", "covers only 22% of the grid of PET.nii.gz"),
    ("permuted axes", {"direction": (0.0, 1, 0, 1, 0, 0, 0, 0, 1)}, "CT.nii.gz", "direction cosines differ"),
    ("rotation", {"direction": (0.8, -0.6, 0, 0.6, 0.8, 0, 0, 0, 1)}, "CT.nii.gz", "beyond a flipped axis"),
    ("label volume", {"label": _tiny_label()}, "ct_mask.nii.gz", "label 1 would change volume by -100.0%"),
])
def test_what_cannot_be_resampled_honestly_is_refused(problem, grid, file, expected, source, pirl_raw, run_cli):
    code, line = run_cli(generic_folder.main, convert(source(**grid), "PET"))
    assert code == 2 and line.startswith("error: ") and f"case_a/{file}: " in line and expected in line, line
    assert not pirl_raw.exists() or not any(pirl_raw.iterdir())


def test_a_flipped_axis_is_resampled_in_physical_space(source, pirl_raw, run_cli, write_image):
    """The CT and its mask stored with x running the other way (origin at the far end, direction cosine -1: the
    same voxels in physical space) give the same PET-grid channel and label as stored the usual way."""
    src = source()
    assert run_cli(generic_folder.main, convert(src, "PET"))[0] == 0
    out = pirl_raw / "Dataset021_PetCt"
    expected = [read(out / "imagesTr" / "case_a_0001.nii.gz")[0], read(out / "labelsTr" / "case_a.nii.gz")[0]]
    far = CT["origin"][0] + (CT["size"][0] - 1) * CT["spacing"][0]
    for name in ("CT", "ct_mask"):
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(src / "case_a" / f"{name}.nii.gz")))
        write_image(src / "case_a" / f"{name}.nii.gz", array[:, :, ::-1], CT["spacing"], (far, *CT["origin"][1:]),
                    (-1.0, 0, 0, 0, 1, 0, 0, 0, 1))
    assert run_cli(generic_folder.main, convert(src, "PET", "ct_mask*", "--overwrite"))[0] == 0
    ct, label = read(out / "imagesTr" / "case_a_0001.nii.gz")[0], read(out / "labelsTr" / "case_a.nii.gz")[0]
    assert np.allclose(ct, expected[0], atol=0.05) and np.array_equal(label, expected[1])


def _grid(grid: dict) -> sitk.Image:
    image = sitk.Image(list(grid["size"]), sitk.sitkFloat32)
    image.SetSpacing(grid["spacing"])
    image.SetOrigin(grid["origin"])
    return image


@pytest.mark.parametrize("lesion, onto, refused", [
    ((slice(5, 6), slice(5, 6), slice(5, 6)), "CT", None),  # one PET voxel onto CT: 48 -> 11 mm³, kept (warned)
    ((slice(5, 6), slice(5, 7), slice(5, 7)), "CT", None),  # 2 x 2 x 1 PET voxels: 192 -> 144 mm³ (-25 %), kept
    ((slice(15, 18), slice(15, 18), slice(15, 18)), "PET", None),  # 27 CT voxels onto PET: 42 -> 48 mm³, kept
    ((slice(15, 17), slice(15, 17), slice(15, 17)), "PET", "-100.0%"),  # 8 CT voxels vanish: always refused
    ((slice(15, 25), slice(15, 25), slice(15, 25)), "PET", "-17.1%"),  # 1562 -> 1296 mm³: above 10 % and 96 mm³
])
def test_small_lesions_change_volume_within_two_coarse_voxels(lesion, onto, refused, tmp_path, caplog):
    """autoPET lesions of a few PET voxels: a label volume change above 10 % is refused only beyond 2 voxels of the
    coarser grid (PET, 96 mm³ here), and a class that vanishes always; a kept change above 10 % is a warning."""
    own = CT if onto == "PET" else PET
    label = np.zeros(own["size"][::-1], np.uint8)
    label[lesion] = 1
    grid = OntoGrid(_grid(PET if onto == "PET" else CT), tmp_path / f"{onto}.nii.gz", resample=True)
    geometry = Geometry.of(_grid(own))
    if refused:
        with pytest.raises(PirlInputError, match=f"label 1 would change volume by {re.escape(refused)}"):
            grid.label(label, geometry, tmp_path / "mask.nii.gz")
        return
    with caplog.at_level(logging.WARNING):
        out = grid.label(label, geometry, tmp_path / "mask.nii.gz")
    before, after = grid.record["resampled"][0]["volume_mm3"]["1"]
    assert out.any() and abs(after / before - 1) > 0.10 and "but within 2 voxels of the coarser grid" in caplog.text


def test_bad_resample_channel_and_default_grid_check(source, pirl_raw, run_cli):
    code, line = run_cli(generic_folder.main, convert(source(), "MRI"))
    assert code == 2 and "resample_to 'MRI': not a channel of this dataset (PET, CT)" in line
    code, line = run_cli(generic_folder.main, convert(source(), "PET")[:-2])  # without --resample_to
    assert code == 2 and "CT.nii.gz: not on the grid of PET.nii.gz" in line
    assert not pirl_raw.exists() or not any(pirl_raw.iterdir())


def test_autopet_resample_to_ct_reads_the_original_ct(tmp_path, write_image, pirl_raw, run_cli):
    study = tmp_path / "autopet" / "PETCT_1" / "08-12-2005-NA-PET-CT"
    write_image(study / "SUV.nii.gz", (PET_BACKGROUND + 10 * blob(PET)).astype(np.float32), PET["spacing"])
    write_image(study / "CTres.nii.gz", np.zeros(PET["size"][::-1], np.float32), PET["spacing"])
    write_image(study / "CT.nii.gz", (CT_BACKGROUND + 1000 * blob(CT)).astype(np.float32), CT["spacing"], CT["origin"])
    write_image(study / "SEG.nii.gz", sphere(PET), PET["spacing"])
    assert run_cli(autopet.main, ["-i", tmp_path / "autopet", "-d", 22, "--resample_to", "CT"])[0] == 0
    out = pirl_raw / "Dataset022_AutoPET"
    ct, grid = read(out / "imagesTr" / "PETCT_1_08-12-2005_0001.nii.gz")
    assert grid == CT and np.array_equal(ct, read(study / "CT.nii.gz")[0])
    label, _ = read(out / "labelsTr" / "PETCT_1_08-12-2005.nii.gz")
    assert dice(label > 0, sphere(CT) > 0) > 0.8  # the coarse PET-grid sphere, upsampled
    assert [r["as"] for r in json.loads((out / CONVERSION_RECORD).read_text())["cases"]["PETCT_1_08-12-2005"][
        "resampled"]] == ["channel PET", "label"]


@pytest.mark.parametrize("channel, values, warning", [
    ("CT", lambda b: 24 + 1000 * b, "channel 1 (CT) has no value between -1000 and 0, so it is not in Hounsfield"),
    ("PET", lambda b: 100 + 9000 * b, "channel 0 (PET) reaches 8559, above any SUV"),
])
def test_pet_ct_units_are_warned_about_not_a_zero_background(channel, values, warning, source, pirl_raw, caplog):
    """CT has no zero background (air -1000 HU) and PET none exactly: no MRI zero-background warning; CT stored
    without its rescale intercept and PET in Bq/ml are named."""
    src = source()
    image = sitk.ReadImage(str(src / "case_a" / f"{channel}.nii.gz"))
    raw = values(blob(PET if channel == "PET" else CT)).astype(np.float32)
    sitk.WriteImage(_like(raw, image), str(src / "case_a" / f"{channel}.nii.gz"))
    with caplog.at_level(logging.WARNING):
        assert generic_folder.main([str(a) for a in convert(src, "PET")]) == 0
    assert warning in caplog.text and "no voxel is 0" not in caplog.text


def _like(array: np.ndarray, image: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


@pytest.mark.parametrize("grid, label, reference, bound", [("PET", "CT_mask*", "PET_mask", 0.99),
                                                          ("CT", "PET_mask*", "CT_mask", 0.93)])
def test_real_pet_ct_subject(grid, label, reference, bound, shared_data, tmp_path, pirl_raw, run_cli):
    """STS_002 (PET 5.47 mm, CT 0.98 mm in-plane): the mask of the other grid, resampled, matches this grid's own
    mask (measured Dice 0.996 onto PET, 0.941 onto CT; all 16 subjects: mean 0.974 and 0.924)."""
    subject = shared_data / "sts_pet_ct" / "STS_002"
    if not subject.is_dir():
        pytest.skip(f"{subject} not found")
    (tmp_path / "sts").mkdir()
    (tmp_path / "sts" / "STS_002").symlink_to(subject)  # a link: shared data are never copied
    argv = ["-i", tmp_path / "sts", "-d", 23, "-n", "Sts", "--channel", "PET=PET_image*", "--channel",
            "CT=CT_image*", "--label", label, "--labels", "lesion=1", "--resample_to", grid]
    assert run_cli(generic_folder.main, argv)[0] == 0
    out, _ = read(pirl_raw / "Dataset023_Sts" / "labelsTr" / "STS_002.nii.gz")
    assert dice(out > 0, read(subject / f"{reference}.nii.gz")[0] > 0) > bound


def test_small_pet_crops_plan_without_a_hand_edit(caplog):
    """PET-grid crops (median 52 x 29 x 29 voxels, as sts_pet_ct on its PET grid) get the smallest patch SwinUNETR
    takes, 64^3, the padding is explained and warned about, and the PET/CT normalisation is explained with the
    dataset's numbers."""
    from pirl_pipeline.data.dataset_json import DatasetJson
    from plans.planner import plan

    props = {"mean": 35.0, "std": 38.0, "median": 36.0, "min": -634.0, "max": 865.0, "percentile_00_5": -62.0,
             "percentile_99_5": 253.0}
    fingerprint = {"spacings": [[3.27, 5.47, 5.47]] * 3, "shapes_after_cropping": [[52, 29, 29]] * 3,
                   "shapes_before_cropping": [[52, 29, 29]] * 3, "modality_kinds": ["PET", "CT"],
                   "foreground_intensity_properties_per_channel": {"0": {**props, "percentile_99_5": 20.9},
                                                                   "1": props},
                   "nonzero_intensity_properties_per_channel": {"0": props, "1": props}}
    with caplog.at_level(logging.WARNING, "pirl"):
        config = plan(fingerprint, DatasetJson({"0": "PET", "1": "CT"}, {"background": 0, "lesion": 1}, 3),
                      "Dataset601_Sts").configuration("3d_fullres")
    assert config.patch_size == [64, 64, 64]
    assert config.normalization_schemes == ["PETNormalization", "CTNormalization"]
    assert "83% of a patch is padding" in caplog.text and "(83% of a patch" in config.extra["explanation"]["patch_size"]
    explained = config.extra["explanation"]["normalization_schemes"]
    assert "max(SUV, 0) / 20.9" in explained and "percentiles [-62, 253]" in explained
