"""Bad-input battery, round two (issue 26, data side): label storage, dataset.json types, NIfTI headers checked
before ITK reads them, case names and folders, temp names, output folders and the PIRL_* roots. Each case
asserts the exit code, one error line naming the file, no partial output and inputs left as they were."""
from __future__ import annotations

import gzip
import json
import re
import struct
from pathlib import Path

import nibabel
import numpy as np
import pytest
import torch

from pirl_pipeline.cli.plan_and_preprocess import main as plan_main
from pirl_pipeline.cli.predict import main as predict_main
from pirl_pipeline.cli.reference import main as reference_main
from pirl_pipeline.data import image_io
from pirl_pipeline.data.dataset_json import MAX_CASE_NAME_BYTES, DatasetJson, label_file_dtype, seg_dtype
from pirl_pipeline.data.image_io import NiftiHeader
from pirl_pipeline.dataloading import make_train_loader, make_val_loader
from pirl_pipeline.dataloading.dataset import PreprocessedDataset
from pirl_pipeline.errors import PirlInputError, PirlWriteError
from pirl_pipeline.file_io import atomic_path, remove_stale
from pirl_pipeline.inference.export import labels_from_probabilities
from plans.plans_manager import Plans
from tests.synthetic import pirl_roots, write_image
from tests.test_bad_inputs import (
    CONVERTERS,
    no_partial_output,
    raw_dataset,
    refused,
    run,
    snapshot,
    write_source,
)


@pytest.fixture
def roots(tmp_path):
    with pirl_roots(tmp_path):
        yield tmp_path / "raw", tmp_path / "pre"

# ---- 1. label maps are stored in a dtype that holds every declared label ------------------------------------


@pytest.mark.parametrize("max_label, dtype", [(0, np.int8), (127, np.int8), (128, np.int16), (32767, np.int16)])
def test_seg_dtype_holds_every_label_and_the_outside_marker(max_label, dtype):
    assert seg_dtype(max_label) == dtype and np.iinfo(dtype).min <= -1


def test_labels_above_127_survive_preprocessing_and_loading(roots, capsys):
    raw, pre = roots
    folder = raw_dataset(raw)
    for case in ("case000", "case001"):  # labels 1, 2 -> 128, 200
        path = folder / "labelsTr" / f"{case}.nii.gz"
        label = np.asarray(nibabel.load(path).dataobj)
        write_image(np.choose(label, [0, 128, 200]).astype(np.uint8), path)
    d = json.loads((folder / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps({**d, "labels": {"background": 0, "a": 128, "b": 200}}))
    assert plan_main(["-d", "941", "-np", "1"]) == 0
    plans = Plans.load(pre / "Dataset941_Bad" / "PIRLPlans.json")
    data = pre / "Dataset941_Bad" / plans.configuration("3d_fullres").data_identifier
    seg = np.load(data / "case000_seg.npy")
    assert seg.dtype == np.int16 and set(np.unique(seg)) == {-1, 0, 128, 200}
    (batch,) = make_val_loader(data, ["case000"], batch_size=1, patch_size=(16, 16, 16),
                               foreground_patches_per_case=0)
    assert batch["target"].dtype == torch.int16 and set(np.unique(batch["target"])) == {-1, 0, 128, 200}
    with make_train_loader(data, ["case000"], batch_size=1, patch_size=(16, 16, 16), oversample_foreground=1.0,
                           seed=0) as stream:
        target = next(stream)["target"]
        assert target.dtype == torch.int16 and {128, 200} & set(np.unique(target)) <= {128, 200}
    # a case stored by the old code (int8: 200 became -56, "outside the body") is refused by the loaders, naming
    # the file, and is not taken as finished by preprocessing: it is redone
    np.save(data / "case001_seg.npy", np.load(data / "case001_seg.npy").astype(np.int8))
    with pytest.raises(PirlInputError, match=f"{re.escape(str(data / 'case001_seg.npy'))}: stored as int8 but labels reach 200 "
                                             r"\(int16 holds them\): rerun pirl_plan_and_preprocess"):
        list(make_val_loader(data, ["case001"], batch_size=1, patch_size=(16, 16, 16),
                             foreground_patches_per_case=0))
    assert PreprocessedDataset(data, ["case001"], labels=[0, 1]).arrays("case001")[1].dtype == np.int8  # explicit
    assert plan_main(["-d", "941", "-np", "1"]) == 0
    assert np.load(data / "case001_seg.npy").dtype == np.int16
    assert PreprocessedDataset(data, ["case001"]).arrays("case001")[1].dtype == np.int16


def test_int8_preprocessed_data_is_kept_and_loads(roots):
    raw, pre = roots
    raw_dataset(raw)
    assert plan_main(["-d", "941", "-np", "1"]) == 0
    data = next((pre / "Dataset941_Bad").glob("pirl_plans_*"))
    seg = data / "case000_seg.npy"
    assert np.load(seg).dtype == np.int8
    stamp = seg.stat().st_mtime_ns
    assert plan_main(["-d", "941", "-np", "1"]) == 0 and seg.stat().st_mtime_ns == stamp  # skipped, not redone


@pytest.mark.parametrize("max_label, dtype", [(0, np.uint8), (255, np.uint8), (256, np.int16), (32767, np.int16)])
def test_label_file_dtype_holds_every_label(max_label, dtype):
    assert label_file_dtype(max_label) == dtype
    with pytest.raises(ValueError, match="outside 0..32767"):
        label_file_dtype(32768)


def test_predicted_label_maps_hold_labels_above_255():
    """A region painted with label 300 (regions_class_order) is written as 300, not 300 mod 256 = 44."""
    dj = DatasetJson({"0": "CT"}, {"background": 0, "organ": [1, 300], "lesion": 300}, 1,
                     regions_class_order=[1, 300])
    probs = np.zeros((2, 2, 2, 2), np.float32)
    probs[0, 0] = 0.9  # organ on in the first slab
    probs[1, 0, 0] = 0.9  # lesion (inside the organ) on in one row of it
    labels = labels_from_probabilities(probs, dj)
    assert labels.dtype == np.int16 and labels[0, 0].tolist() == [300, 300] and labels[0, 1].tolist() == [1, 1]
    assert labels_from_probabilities(np.ones((3, 2, 2, 2)), DatasetJson({"0": "CT"}, {"background": 0, "a": 1,
                                                                                      "b": 2}, 1)).dtype == np.uint8


# ---- 2. dataset.json: types checked, duplicate keys and absurd nesting refused ------------------------------

GOOD = ('"channel_names": {"0": "T1", "1": "FLAIR"}, "labels": {"background": 0, "core": 1, "edema": 2}, '
        '"numTraining": 2, "file_ending": ".nii.gz"')


def changed(old: str, new: str) -> str:
    assert old in GOOD
    return "{" + GOOD.replace(old, new) + "}"


@pytest.mark.parametrize("text, expected", [
    (changed('"0": "T1"', '"a": "T1"'), "channel_names keys must be 0..1"),
    (changed('"0": "T1"', '"0": 1'), "channel_names values must be modality names"),
    (changed('"numTraining": 2', '"numTraining": "four"'), "numTraining must be a whole number >= 0, got 'four'"),
    (changed('"numTraining": 2', '"numTraining": null'), "numTraining must be a whole number >= 0, got None"),
    (changed('"numTraining": 2', '"numTraining": 4.9'), "numTraining must be a whole number >= 0, got 4.9"),
    (changed('"background": 0, "core": 1', '"background": false, "core": true'), "labels must map names"),
    (changed('"core": 1', '"core": -1'), "labels must map names"),
    (changed('"core": 1', '"core": [1, true]'), "labels must map names"),
    (changed('"core": 1', '"core": 40000'), "labels must map names to integers 0..32767"),
    (changed('"channel_names"', '"channel_names": {"0": "FLAIR", "1": "T1"}, "channel_names"'),
     "key 'channel_names' appears twice"),
    (changed('"core": 1', '"core": 1, "core": 2'), "key 'core' appears twice"),
    (changed('"numTraining"', '"deep": ' + "[" * 100_000 + "]" * 100_000 + ', "numTraining"'), "nested too deeply"),
])
def test_dataset_json_types(roots, capsys, text, expected):
    raw, pre = roots
    named = raw_dataset(raw) / "dataset.json"
    named.write_text(text)
    refused(capsys, raw, pre, expected, named)


# ---- 3. NIfTI headers: checked before ITK allocates ----------------------------------------------------------

def patch_header(path: Path, offset: int, fmt: str, *values) -> None:
    """Overwrite header bytes of a (gzipped) NIfTI-1 file in place."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = bytearray(f.read())
    data[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, *values)
    with opener(path, "wb") as f:
        f.write(bytes(data))


@pytest.fixture
def itk_reads(monkeypatch) -> list[str]:
    """The files SimpleITK is asked to read (to prove a damaged header never reaches it)."""
    calls, read = [], image_io.sitk.ReadImage
    monkeypatch.setattr(image_io.sitk, "ReadImage", lambda path, *a, **k: calls.append(str(path)) or read(path, *a, **k))
    return calls


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
@pytest.mark.parametrize("damage, expected", [
    ("pixdim0", "pixdim [0.0, 1.0, 1.0]: a voxel size of 0"),
    ("pixdim_nan", "a voxel size of 0 or NaN/Inf"),
    ("huge", "truncated: "),
    ("dim0", "every size must be >= 1"),
])
def test_nifti_headers_are_refused_before_itk_reads_them(roots, capsys, itk_reads, ending, damage, expected):
    raw, pre = roots
    folder = raw_dataset(raw)
    if ending == ".nii":
        for path in folder.rglob("*.nii.gz"):
            write_image(np.asarray(nibabel.load(path).dataobj), path.with_name(path.name[:-3]))
            path.unlink()
        d = json.loads((folder / "dataset.json").read_text())
        (folder / "dataset.json").write_text(json.dumps({**d, "file_ending": ".nii"}))
    named = folder / "imagesTr" / f"case001_0001{ending}"
    if damage.startswith("pixdim"):
        patch_header(named, 80, "<f", 0.0 if damage == "pixdim0" else float("nan"))  # pixdim[1]
    else:
        patch_header(named, 42, "<3h", *((1000, 1000, 1000) if damage == "huge" else (10, 0, 10)))
    refused(capsys, raw, pre, expected, named)
    assert str(named) not in itk_reads


def test_converter_refuses_a_zero_voxel_size(tmp_path, capsys):
    main, files, index, extra = CONVERTERS["folder"]
    damaged = write_source(tmp_path / "src", files)[index]
    patch_header(damaged, 84, "<f", 0.0)  # pixdim[2]
    before = snapshot(tmp_path / "src")
    code, errors = run(main, ["-i", tmp_path / "src", "-o", tmp_path / "raw", *extra], capsys)
    assert code == 2 and len(errors) == 1 and str(damaged) in errors[0] and "pixdim" in errors[0], errors
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())
    assert snapshot(tmp_path / "src") == before


def test_nifti2_headers_are_parsed(tmp_path):
    path = tmp_path / "two.nii"
    nibabel.save(nibabel.Nifti2Image(np.zeros((4, 5, 6), np.float32), np.diag([2.0, 2, 2, 1])), path)
    header = NiftiHeader.parse(path.read_bytes()[:544])
    assert header.dims == (4, 5, 6) and header.pixdim == (2, 2, 2) and header.problem() is None
    assert header.data_end == int(header.vox_offset) + 4 * 5 * 6 * 4
    data = bytearray(path.read_bytes())
    data[104 + 8:104 + 16] = struct.pack("<d", 0.0)  # pixdim[1]
    assert "pixdim" in NiftiHeader.parse(bytes(data[:544])).problem()


# ---- 4. names and folders -------------------------------------------------------------------------------------

def rename_case(folder: Path, old: str, new: str) -> Path:
    for path in [*folder.rglob(f"{old}_*.nii.gz"), *folder.rglob(f"{old}.nii.gz")]:
        path.rename(path.with_name(path.name.replace(old, new)))
    return folder / "imagesTr" / f"{new}_0000.nii.gz"


@pytest.mark.parametrize("name, expected", [("x" * 230, f"bytes long; at most {MAX_CASE_NAME_BYTES}"),
                                            ("case\n001", "case name 'case\\n001' is empty or holds control")])
def test_case_names_are_bounded_where_they_arrive(roots, capsys, name, expected):
    raw, pre = roots
    named = rename_case(raw_dataset(raw), "case001", name)
    refused(capsys, raw, pre, expected, str(named).replace("\n", "\\n"))


@pytest.mark.parametrize("folder_name, expected", [("c" * 250, "bytes long"), ("c\t2", "control characters")])
def test_converter_refuses_case_folders_it_cannot_name(tmp_path, capsys, folder_name, expected):
    main, files, _, extra = CONVERTERS["folder"]
    write_source(tmp_path / "src", files)
    write_source(tmp_path / "src", [f.replace("c1/", f"{folder_name}/") for f in files])
    before = snapshot(tmp_path / "src")
    code, errors = run(main, ["-i", tmp_path / "src", "-o", tmp_path / "raw", *extra], capsys)
    assert code == 2 and len(errors) == 1 and expected in errors[0], errors
    assert folder_name.replace("\t", "\\t") in errors[0]
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())
    assert snapshot(tmp_path / "src") == before


@pytest.mark.parametrize("converter", CONVERTERS)
def test_a_case_folder_that_is_a_link_loop_is_an_error(tmp_path, capsys, converter):
    main, files, _, extra = CONVERTERS[converter]
    write_source(tmp_path / "src", files)
    loop = tmp_path / "src" / "zz_loop"
    loop.symlink_to(loop)  # a link to itself: not a folder, not a file, skipped without a word before
    code, errors = run(main, ["-i", tmp_path / "src", "-o", tmp_path / "raw", *extra], capsys)
    assert code == 2 and len(errors) == 1 and str(loop) in errors[0] and "link loop" in errors[0], errors
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())


def test_brats_refuses_a_link_back_to_its_source(tmp_path, capsys):
    main, files, _, extra = CONVERTERS["brats"]
    write_source(tmp_path / "src", files)
    (tmp_path / "src" / "c1" / "up").symlink_to(tmp_path / "src")
    code, errors = run(main, ["-i", tmp_path / "src", "-o", tmp_path / "raw", *extra], capsys)
    assert code == 2 and len(errors) == 1 and "a link loop" in errors[0], errors


def test_only_pirls_own_temp_names_are_removed(tmp_path):
    keep = [".tmp-notes", ".tmp-install-0123abcd", ".tmp-DEADBEEF-a.nii.gz", ".tmp-deadbeef", "a.nii.gz"]
    stale = [".tmp-deadbeef-a.nii.gz", ".tmp-0123abcd-Dataset012_F"]
    for name in keep + stale:
        (tmp_path / name).mkdir() if "." not in name[1:] else (tmp_path / name).write_text("x")
    (tmp_path / ".tmp-notes" / "mine.txt").write_text("my notes")
    assert remove_stale(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)
    assert (tmp_path / ".tmp-notes" / "mine.txt").read_text() == "my notes"


def test_converter_clears_only_its_own_leftovers(tmp_path):
    main, files, _, extra = CONVERTERS["folder"]
    write_source(tmp_path / "src", files)
    (tmp_path / "raw" / ".tmp-notes-Dataset012_F").mkdir(parents=True)
    (tmp_path / "raw" / ".tmp-0123abcd-Dataset012_F").mkdir()  # what a killed conversion left
    assert main([str(a) for a in ["-i", tmp_path / "src", "-o", tmp_path / "raw", *extra]]) == 0
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == [".tmp-notes-Dataset012_F", "Dataset012_F"]


def test_a_name_too_long_for_a_temp_file_is_one_error(tmp_path):
    target = tmp_path / ("x" * 245 + ".nii.gz")  # a valid name, but not with the 14-byte temp prefix
    with pytest.raises(PirlWriteError, match="file name too long"), atomic_path(target) as tmp:
        tmp.write_bytes(b"x")
    assert not list(tmp_path.iterdir())


def test_reference_refuses_an_output_inside_its_input(roots, capsys):
    raw, _ = roots
    inputs = raw_dataset(raw) / "imagesTr"
    before = snapshot(raw)
    code, errors = run(reference_main, ["-i", inputs, "-o", inputs / "out", "-d", 941, "-t", "seg",
                                        "--kind", "whole_brain"], capsys)
    expected = f"error: {inputs / 'out'}: the output folder must not be (inside) the input folder"
    assert code == 2 and errors == [expected], errors
    assert snapshot(raw) == before and not (inputs / "out").exists()


@pytest.mark.parametrize("variable", ["PIRL_raw", "PIRL_preprocessed", "PIRL_results"])
def test_a_root_variable_naming_a_file(roots, tmp_path, capsys, monkeypatch, variable):
    raw, _ = roots
    raw_dataset(raw)
    file = tmp_path / "a_file"
    file.write_text("x")
    monkeypatch.setenv(variable, str(file))
    if variable == "PIRL_results":
        code, errors = run(predict_main, ["-i", raw / "Dataset941_Bad" / "imagesTr", "-o", tmp_path / "out",
                                          "-d", 941, "-t", "seg", "-device", "cpu"], capsys)
    else:
        code, errors = run(plan_main, ["-d", 941, "-np", 1], capsys)
    assert code == 2 and errors == [f"error: {file}: {variable} must name a folder, but this is a file"], errors
    assert file.read_text() == "x" and not (tmp_path / "out").exists()
    no_partial_output(tmp_path)

