"""Bad-input battery (issue 15): damaged files, full disks and inconsistent datasets, for every command that
reads raw images or writes results. Each case asserts the exit code, one error line naming the file, no
partial output, and inputs left as they were."""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from dataset_conversion import autopet, brats, demo_brain, generic_folder
from pirl_pipeline.cli.evaluate import main as evaluate_main
from pirl_pipeline.cli.plan_and_preprocess import main as plan_main
from pirl_pipeline.cli.predict import main as predict_main
from pirl_pipeline.data.dataset_json import DatasetJson
from pirl_pipeline.data.image_io import data_problem
from pirl_pipeline.inference.export import labels_from_probabilities
from tests.synthetic import make_case, write_image, write_raw_dataset

SHAPE = (10, 10, 10)
CHANNELS = {"0": "T1", "1": "FLAIR"}
TINY = ["--epochs", "1", "--iters", "1", "--val-iters", "1", "--batch-size", "1", "-npa", "0", "-device", "cpu",
        "--set", "augment=false", "val_volumes=false"]


def run(main, argv, capsys) -> tuple[int, list[str]]:  # exit code, the "error:" lines of stderr
    code = main([str(a) for a in argv])
    return code, [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def no_partial_output(folder: Path, ignore: tuple[str, ...] = ()) -> None:
    """Nothing half-written under ``folder``: no temp files; every image, array and JSON reads back whole."""
    for p in folder.rglob("*") if folder.exists() else []:
        assert not p.name.startswith((".tmp-", ".old-")), p
        if p.is_file() and p.name not in ignore:
            if p.name.endswith(".nii.gz"):
                assert data_problem(p) is None, p
            elif p.suffix == ".npy":
                np.load(p, mmap_mode="r")
            elif p.suffix == ".json":
                json.loads(p.read_text())


def damage(path: Path, kind: str) -> str:
    """Damage one written image in place; returns what the error must say."""
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return "truncated gzip stream"
    if kind == "zero_byte":
        path.write_bytes(b"")
        return "empty file"
    if kind == "text":
        path.write_text("patient notes, not an image\n")
        return "not a readable image"
    if kind in ("2d", "4d"):
        image = sitk.GetImageFromArray(np.ones(SHAPE))
        sitk.WriteImage(image[:, :, 0] if kind == "2d" else sitk.JoinSeries([image, image]), str(path))
        return "expected a 3D single-component image"
    if kind == "nan":
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
        array[5, 5, 5] = np.nan
        write_image(array, path)
        return "NaN/Inf"
    raise ValueError(kind)


CONVERTERS = {  # main, source files (channels, then the label), index of the file to damage, arguments
    "brats": (brats.main, [f"c1/c1_{s}.nii.gz" for s in ("t1", "t1ce", "t2", "flair", "seg")], 2, ["-d", 11]),
    "folder": (generic_folder.main, ["c1/t1.nii.gz", "c1/flair.nii.gz", "c1/seg.nii.gz"], 1, [
        "-d", 12, "-n", "F", "--channel", "T1=t1.nii.gz", "--channel", "FLAIR=flair.nii.gz", "--label", "seg.nii.gz"]),
    "autopet": (autopet.main, ["P1/S1/SUV.nii.gz", "P1/S1/CTres.nii.gz", "P1/S1/SEG.nii.gz"], 0, ["-d", 13]),
}


def write_source(root: Path, files: list[str]) -> list[Path]:
    data, label = make_case(SHAPE, seed=0, num_channels=len(files) - 1)
    for array, name in zip([*data, (label > 0).astype(np.uint8)], files):
        write_image(array, root / name)
    return [root / name for name in files]


KINDS = ["truncated", "zero_byte", "text", "2d", "4d", "nan"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("converter", CONVERTERS)
def test_converters_refuse_damaged_images(tmp_path, capsys, converter, kind):
    main, files, index, extra = CONVERTERS[converter]
    damaged = write_source(tmp_path / "src", files)[index]
    expected = damage(damaged, kind)
    before = snapshot(tmp_path / "src")
    code, errors = run(main, ["-i", tmp_path / "src", "-o", tmp_path / "raw", *extra], capsys)
    assert code == 2 and len(errors) == 1 and str(damaged) in errors[0] and expected in errors[0], errors
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())
    assert snapshot(tmp_path / "src") == before


@pytest.fixture
def roots(tmp_path, monkeypatch):
    for k in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"PIRL_{k}", str(tmp_path / k))
    return tmp_path / "raw", tmp_path / "preprocessed"


def raw_dataset(raw: Path, num_cases: int = 2, shape=SHAPE) -> Path:
    return write_raw_dataset(raw, 941, "Bad", num_cases=num_cases, shape=shape, channels=CHANNELS)


def refused(capsys, raw: Path, pre: Path, expected: str, named: Path | str, *extra) -> None:
    """plan_and_preprocess exits 2 with one line naming ``named``; nothing preprocessed, raw data as it was."""
    before = snapshot(raw)
    code, errors = run(plan_main, ["-d", 941, "-np", 1, *extra], capsys)
    assert code == 2 and len(errors) == 1 and str(named) in errors[0] and expected in errors[0], errors
    assert not (pre / "Dataset941_Bad").exists() and snapshot(raw) == before


@pytest.mark.parametrize("kind, name", [(k, "imagesTr/case001_0001.nii.gz") for k in KINDS]
                         + [("truncated", "labelsTr/case000.nii.gz")])
def test_plan_and_preprocess_refuses_damaged_images(roots, capsys, kind, name):
    raw, pre = roots
    damaged = raw_dataset(raw) / name
    refused(capsys, raw, pre, damage(damaged, kind), damaged)


@pytest.mark.parametrize("problem", ["short_regions_class_order", "num_training", "label_without_images",
                                     "all_zero_channel", "all_zero_case", "grid"])
def test_inconsistent_datasets_are_refused(roots, capsys, problem):
    raw, pre = roots
    folder = raw_dataset(raw)
    named = folder / "dataset.json"
    d = json.loads(named.read_text())
    if problem == "short_regions_class_order":
        d.update(labels={"background": 0, "whole": [1, 2], "core": 1}, regions_class_order=[1])
        expected = "regions_class_order has 1 value(s) for 2 regions"
    elif problem == "num_training":
        d["numTraining"] = 5
        expected = "numTraining is 5 but imagesTr holds 2 case(s)"
    elif problem == "label_without_images":
        named = folder / "labelsTr" / "ghost.nii.gz"
        shutil.copy(folder / "labelsTr" / "case000.nii.gz", named)
        expected = "a label without images"
    elif problem == "grid":  # the message prints plain numbers, not np.float64(4.0)
        named = folder / "imagesTr" / "case001_0001.nii.gz"
        write_image(make_case(SHAPE, 1, 2)[0][1], named, spacing=(4.0, 1.0, 1.0))
        expected = "spacing (1, 1, 1) != (4, 1, 1)"
    else:
        named = folder / "imagesTr" / f"case001_{0 if problem == 'all_zero_case' else 1:04d}.nii.gz"
        for c in (0, 1) if problem == "all_zero_case" else (1,):
            write_image(np.zeros(SHAPE, np.float32), folder / "imagesTr" / f"case001_{c:04d}.nii.gz")
        expected = "every voxel is 0"
    (folder / "dataset.json").write_text(json.dumps(d))
    refused(capsys, raw, pre, expected, named)


def test_short_regions_class_order_is_refused_by_converter_and_painting(tmp_path, capsys):
    write_source(tmp_path / "src", CONVERTERS["folder"][1])
    code, errors = run(generic_folder.main, ["-i", tmp_path / "src", "-o", tmp_path / "raw", "-d", 12, "-n", "F",
                                             "--channel", "T1=t1.nii.gz", "--label", "seg.nii.gz", "--labels",
                                             "whole=1,2", "core=1", "--regions_class_order", "2"], capsys)
    assert code == 2 and len(errors) == 1 and "regions_class_order has 1 value(s) for 2 regions" in errors[0]
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())
    dj = DatasetJson(CHANNELS, {"background": 0, "whole": [1, 2], "core": 1}, 1, regions_class_order=[2])
    with pytest.raises(ValueError):  # zip() used to drop the last region without a word
        labels_from_probabilities(np.ones((2, *SHAPE), np.float32), dj)


@pytest.mark.parametrize("problem, warning", [
    ("constant_channel", "channel 1 (FLAIR) is constant inside the non-zero region"),
    ("no_zero_background", "no voxel is 0 in any channel"),
    ("tiny", "image of 4x12x12 voxels"),
])
def test_degenerate_cases_are_warned_about_by_name(roots, caplog, problem, warning):
    raw, pre = roots
    folder = raw_dataset(raw, shape=(4, 12, 12) if problem == "tiny" else SHAPE)
    data, _ = make_case(SHAPE, seed=1, num_channels=2)
    if problem == "constant_channel":
        write_image(np.where(data[0] != 0, 5.0, 0.0).astype(np.float32), folder / "imagesTr" / "case001_0001.nii.gz")
    elif problem == "no_zero_background":
        for c in (0, 1):
            write_image((data[c] - data[c].mean()) / data[c].std(), folder / "imagesTr" / f"case001_{c:04d}.nii.gz")
    with caplog.at_level(logging.WARNING, "pirl"):
        assert plan_main(["-d", "941", "-np", "1", "--plan_only"]) == 0
    lines = [r.getMessage() for r in caplog.records if warning in r.getMessage()]
    assert len(lines) == 1 and "case001" in lines[0] and ("case000" in lines[0]) == (problem == "tiny")
    fingerprint = json.loads((pre / "Dataset941_Bad" / "dataset_fingerprint.json").read_text())
    assert [names for text, names in fingerprint["warnings"].items() if warning in text] == [
        ["case000", "case001"] if problem == "tiny" else ["case001"]]


def test_converter_warns_about_z_scored_images_and_renamed_cases(tmp_path, caplog):
    data, _ = make_case(SHAPE, seed=0, num_channels=1)
    write_image((data[0] - data[0].mean()) / data[0].std(), tmp_path / "src" / "Müller" / "t1.nii.gz")
    with caplog.at_level(logging.WARNING):
        assert generic_folder.main(["-i", str(tmp_path / "src"), "-o", str(tmp_path / "raw"), "-d", "12", "-n", "F",
                                    "--channel", "T1=t1.nii.gz"]) == 0
    assert "case M-ller: no voxel is 0" in caplog.text and "'Müller' is written as M-ller" in caplog.text


@pytest.mark.parametrize("argv, expected", [
    (["--downsample", 100], "--downsample 100: gives"),
    (["-o", "FILE"], "exists and is not a folder"),
])
def test_demo_generator_arguments(tmp_path, capsys, argv, expected):
    if not (demo_brain.template_folder() / demo_brain.TEMPLATE.format("t1")).is_file():
        pytest.skip("MNI152 template not found")
    (tmp_path / "FILE").write_text("x")
    argv = [tmp_path / "FILE" if a == "FILE" else a for a in argv]
    code, errors = run(demo_brain.main, [*(argv if "-o" in argv else ["-o", tmp_path / "raw", *argv]), "-n", 1],
                       capsys)
    assert code == 2 and len(errors) == 1 and expected in errors[0], errors
    assert (tmp_path / "FILE").read_text() == "x" and not (tmp_path / "raw").exists()


# ---- full disk: a tiny tmpfs (needs root; skipped otherwise), and writes that fail in-process (always) ----

@pytest.fixture
def full_disk(tmp_path):
    """``fill(leave)``: a 1 MiB tmpfs filled up to ``leave`` free bytes; returns its folder."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)]
    if subprocess.run(mount, check=False, capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs (not root?)")

    def fill(leave: int = 0) -> Path:
        (disk / "filler").write_bytes(b"\0" * (shutil.disk_usage(disk).free - leave))
        return disk

    yield fill
    subprocess.run(["umount", str(disk)], check=True)


def assert_disk_full_reported(code: int, errors: list[str], disk: Path) -> None:
    assert code == 2 and len(errors) == 1 and str(disk) in errors[0], errors
    assert "no space left on device" in errors[0], errors
    no_partial_output(disk, ignore=("filler",))


def test_converter_on_a_full_disk(tmp_path, capsys, full_disk):
    rng = np.random.default_rng(0)  # noise: the images do not compress, so ITK's stub is partial, not empty
    for c, suffix in enumerate(("t1", "t1ce", "t2", "flair")):
        write_image(rng.random((16, 16, 16), dtype=np.float32) + 1, tmp_path / "src" / "c1" / f"c1_{suffix}.nii.gz")
    before = snapshot(tmp_path / "src")
    disk = full_disk(leave=8192)
    code, errors = run(brats.main, ["-i", tmp_path / "src", "-o", disk, "-d", 11], capsys)
    assert_disk_full_reported(code, errors, disk)
    assert [p.name for p in disk.iterdir()] == ["filler"] and snapshot(tmp_path / "src") == before


def test_preprocessing_on_a_full_disk(roots, capsys, monkeypatch, full_disk):
    raw, _ = roots
    raw_dataset(raw, shape=(24, 28, 26))
    before = snapshot(raw)
    disk = full_disk(leave=12288)
    monkeypatch.setenv("PIRL_preprocessed", str(disk))
    code, errors = run(plan_main, ["-d", 941, "-np", 1], capsys)
    assert_disk_full_reported(code, errors, disk)
    assert snapshot(raw) == before


def test_failed_writes_are_one_line_and_leave_nothing(roots, capsys, monkeypatch):
    """Without root: a SimpleITK write that leaves a stub on a full disk, and Python writes raising ENOSPC."""
    raw, pre = roots
    real_write, real_disk_usage = sitk.WriteImage, shutil.disk_usage

    def stub(image, path, *args, **kwargs):  # what ITK does on a full disk: a short file, no error
        real_write(image, path, *args, **kwargs)
        Path(path).write_bytes(Path(path).read_bytes()[:40])
    write_source(raw.parent / "src", CONVERTERS["brats"][1])
    monkeypatch.setattr(sitk, "WriteImage", stub)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: SimpleNamespace(free=0))
    code, errors = run(brats.main, ["-i", raw.parent / "src", "-o", raw, "-d", 11], capsys)
    assert code == 2 and len(errors) == 1 and "write failed: no space left on device (truncated gzip stream" in errors[0], errors
    assert str(raw / ".tmp-") in errors[0] and not any(raw.iterdir())
    monkeypatch.setattr(sitk, "WriteImage", real_write)
    monkeypatch.setattr(shutil, "disk_usage", real_disk_usage)
    raw_dataset(raw)

    def enospc(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Path, "write_bytes", enospc)
    code, errors = run(plan_main, ["-d", 941, "-np", 1], capsys)
    target = pre / "Dataset941_Bad" / "dataset_fingerprint.json"
    assert code == 2 and errors == [f"error: {target}: write failed: no space left on device"]
    assert not [p for p in pre.rglob("*") if p.is_file()]


# ---- prediction and evaluation ----

@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A DynUNet seg model (32^3 patches, one step) on a tiny 2-channel dataset."""
    from pirl_pipeline.cli.train import main as train_main

    root = tmp_path_factory.mktemp("bad_predict")
    with pytest.MonkeyPatch.context() as mp:
        for k in ("raw", "preprocessed", "results"):
            mp.setenv(f"PIRL_{k}", str(root / k))
        write_raw_dataset(root / "raw", 942, "Model", num_cases=2, shape=(16, 16, 16), channels=CHANNELS)
        assert plan_main(["-d", "942", "-np", "1"]) == 0
        assert train_main(["942", "3d_fullres", "seg", "-f", "0", "-tr", "DynUNetSegTrainer",
                           "--patch-size", "32", "32", "32", *TINY]) == 0
    yield root / "results" / "Dataset942_Model" / "DynUNetSegTrainer__PIRLPlans__3d_fullres"


def predict_input(folder: Path) -> Path:
    data, _ = make_case((16, 16, 16), seed=5, num_channels=2)
    for c in (0, 1):
        write_image(data[c], folder / f"a_{c:04d}.nii.gz")
    return folder


@pytest.mark.parametrize("kind", KINDS)
def test_predict_refuses_damaged_images(model, tmp_path, capsys, kind):
    inputs = predict_input(tmp_path / "in")
    expected = damage(inputs / "a_0001.nii.gz", kind)
    before = snapshot(inputs)
    code, errors = run(predict_main, ["-i", inputs, "-o", tmp_path / "out", "-m", model], capsys)
    assert code == 2 and len(errors) == 1 and str(inputs / "a_0001.nii.gz") in errors[0] and expected in errors[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert snapshot(inputs) == before


@pytest.mark.parametrize("argv, expected", [
    (["--channels", "a,b"], "--channels a,b: expected comma-separated channel numbers"),
    (["--channels", "0,9"], "channel(s) [9] do not exist"),
    (["-o", "FILE"], "FILE: exists and is not a folder"),
])
def test_predict_arguments(model, tmp_path, capsys, argv, expected):
    inputs = predict_input(tmp_path / "in")
    (tmp_path / "FILE").write_text("x")
    argv = [tmp_path / "FILE" if a == "FILE" else a for a in argv]
    code, errors = run(predict_main, ["-i", inputs, "-m", model, *argv, *([] if "-o" in argv else
                                                                          ["-o", tmp_path / "out"])], capsys)
    assert code == 2 and len(errors) == 1 and expected in errors[0], errors
    assert (tmp_path / "FILE").read_text() == "x" and not (tmp_path / "out").exists()


def test_predict_continue_redoes_a_stub_and_cleans_temp_files(model, tmp_path):
    inputs, out = predict_input(tmp_path / "in"), tmp_path / "out"
    assert predict_main(["-i", str(inputs), "-o", str(out), "-m", str(model), "--disable_tta"]) == 0
    complete = (out / "a.nii.gz").read_bytes()
    (out / "a.nii.gz").write_bytes(complete[: len(complete) // 2])  # what an older version kept on a full disk
    (out / ".tmp-deadbeef-a.nii.gz").write_bytes(complete[:10])  # what kill -9 leaves
    assert predict_main(["-i", str(inputs), "-o", str(out), "-m", str(model), "--disable_tta", "--continue"]) == 0
    assert (out / "a.nii.gz").read_bytes() == complete and [p.name for p in out.iterdir()] == ["a.nii.gz"]


def test_predict_on_a_full_disk(model, tmp_path, capsys, full_disk):
    inputs = predict_input(tmp_path / "in")
    before = snapshot(inputs)
    disk = full_disk()
    code, errors = run(predict_main, ["-i", inputs, "-o", disk / "out", "-m", model, "--disable_tta"], capsys)
    assert_disk_full_reported(code, errors, disk)
    assert str(disk / "out" / "a.nii.gz") in errors[0] and not (disk / "out").exists()  # the lock made it: removed
    assert snapshot(inputs) == before


def evaluation_folders(root: Path) -> tuple[Path, Path, Path]:
    _, label = make_case(SHAPE, seed=0, num_channels=1)
    write_image(label, root / "ref" / "c1.nii.gz")
    write_image(label, root / "pred" / "c1.nii.gz")
    DatasetJson(CHANNELS, {"background": 0, "core": 1, "edema": 2}, 1).save(root / "dj")
    return root / "ref", root / "pred", root / "dj"


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "nan"])  # a NaN label: the label-value check's
def test_evaluate_refuses_a_damaged_prediction(tmp_path, capsys, kind):
    ref, pred, dj = evaluation_folders(tmp_path)
    expected = damage(pred / "c1.nii.gz", kind)
    before = snapshot(tmp_path)
    code, errors = run(evaluate_main, ["-ref", ref, "-pred", pred, "-dj", dj, "-t", "seg", "-np", 1,
                                       "--no_distance_metrics"], capsys)
    assert code == 2 and len(errors) == 1 and str(pred / "c1.nii.gz") in errors[0] and expected in errors[0]
    assert snapshot(tmp_path) == before  # no summary either


def test_evaluate_on_a_full_disk(tmp_path, capsys, full_disk):
    ref, pred, dj = evaluation_folders(tmp_path)
    disk = full_disk()
    code, errors = run(evaluate_main, ["-ref", ref, "-pred", pred, "-dj", dj, "-t", "seg", "-np", 1,
                                       "--no_distance_metrics", "-o", disk / "summary.json"], capsys)
    assert_disk_full_reported(code, errors, disk)
    assert [p.name for p in disk.iterdir()] == ["filler"]
