"""An incomplete dataset end to end through the CLIs: 4 real BraTS cases (downsampled to 6 mm) with channel files
deleted from 3 of them, declared with ``"allow_missing_channels": true``: pirl_plan_and_preprocess ->
pirl_train pretrain -> seg (from the pre-trained weights) and translate -> pirl_predict -> pirl_evaluate, at tiny
sizes (64^3 patches, feature size 12, one iteration). Without the shared real data, generated cases stand in.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pirl_pipeline.checkpoint import load_checkpoint
from pirl_pipeline.cli.evaluate import main as evaluate_main
from pirl_pipeline.cli.plan_and_preprocess import main as plan_main
from pirl_pipeline.cli.predict import main as predict_main
from pirl_pipeline.cli.train import main as train_main
from pirl_pipeline.data.image_io import read_array
from pirl_pipeline.file_io import load_json
from plans.fingerprint import SAMPLES_PER_CASE
from tests.conftest import SHARED_DATA
from tests.synthetic import MRI4, write_raw_dataset

TINY = ["--epochs", "1", "--iters", "1", "--batch-size", "1", "-npa", "0", "-device", "cpu", "--set", "augment=false"]
REAL = {  # case: (folder under the shared data, file suffix of each channel in MRI4 order, then of the label)
    "TCGA-DU-7294": ("brats2020_style", ["_t1", "_t1ce", "_t2", "_flair", "_seg"]),
    "AURORA-MET-0001": ("brats2020_style", ["_t1", "_t1ce", "_t2", "_flair", "_seg"]),
    "BraTS-PR138-00000-000": ("brats2023_style", ["-t1n", "-t1c", "-t2w", "-t2f", "-seg"]),
    "BraTS-GLI-00000-000": ("brats2023_more", ["-t1n", "-t1c", "-t2W", "-t2f", "-seg"]),
}
DELETED = {0: [1], 1: [2, 3], 2: [0]}  # case number: channels whose files are removed (case 3 stays complete)
FACTOR = 6  # 1 mm -> 6 mm: 40x40x25 voxels
DATASET = "Dataset960_Incomplete"


def downsample(path: Path, label: bool) -> sitk.Image:
    """The image on a FACTOR-times coarser grid (same origin and direction); float32 images, uint8 labels."""
    image = sitk.ReadImage(str(path))
    grid = sitk.Image([s // FACTOR for s in image.GetSize()], sitk.sitkUInt8)
    grid.SetSpacing([s * FACTOR for s in image.GetSpacing()])
    grid.SetOrigin(image.GetOrigin())
    grid.SetDirection(image.GetDirection())
    if label:
        return sitk.Resample(image, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), grid, sitk.Transform(), sitk.sitkLinear, 0.0,
                         sitk.sitkFloat32)


def write_dataset(raw: Path) -> list[str]:
    """The raw dataset, complete at first (real cases when the shared data exist); returns the case names."""
    folder = raw / DATASET
    if not SHARED_DATA.is_dir():  # generated stand-ins, same layout
        write_raw_dataset(raw, 960, "Incomplete", num_cases=4, shape=(40, 44, 42), channels=MRI4)
        return [f"case{i:03d}" for i in range(4)]
    for case, (source, suffixes) in REAL.items():
        for c, suffix in enumerate(suffixes):
            label = c == len(MRI4)
            out = folder / ("labelsTr" if label else "imagesTr") / f"{case}{'' if label else f'_{c:04d}'}.nii.gz"
            out.parent.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(downsample(SHARED_DATA / source / case / f"{case}{suffix}.nii.gz", label), str(out))
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": MRI4, "labels": {"background": 0, "NCR": 1, "ED": 2, "ET": 3}, "numTraining": 4,
        "file_ending": ".nii.gz"}))
    return list(REAL)


@pytest.fixture(scope="module")
def incomplete(tmp_path_factory):
    """(root of $PIRL_raw/_preprocessed/_results, case names): the dataset with channels deleted, preprocessed."""
    root = tmp_path_factory.mktemp("incomplete")
    with pytest.MonkeyPatch.context() as mp:
        for key in ("raw", "preprocessed", "results"):
            mp.setenv(f"PIRL_{key}", str(root / key))
        cases = write_dataset(root / "raw")
        folder = root / "raw" / DATASET
        for i, channels in DELETED.items():
            for c in channels:
                (folder / "imagesTr" / f"{cases[i]}_{c:04d}.nii.gz").unlink()
        assert plan_main(["-d", "960", "-np", "1"]) == 2  # not declared: the missing channels are an error
        dj = json.loads((folder / "dataset.json").read_text())
        (folder / "dataset.json").write_text(json.dumps({**dj, "allow_missing_channels": True}))
        assert plan_main(["-d", "960", "-np", "1"]) == 0
        yield root, cases


def present(i: int) -> list[int]:
    return [c for c in range(len(MRI4)) if c not in DELETED.get(i, [])]


def test_fingerprint_and_preprocessed_cases(incomplete):
    root, cases = incomplete
    raw, pre = root / "raw" / DATASET, root / "preprocessed" / DATASET
    fingerprint = load_json(pre / "dataset_fingerprint.json")
    assert dict(zip(fingerprint["case_names"], fingerprint["channels_per_case"])) == {
        case: present(i) for i, case in enumerate(cases)}
    for c in range(len(MRI4)):  # each channel's statistics over the cases that have it (every foreground voxel)
        values = []
        for i, case in enumerate(cases):
            label = read_array(raw / "labelsTr" / f"{case}.nii.gz")[0]
            assert 0 < (label > 0).sum() <= SAMPLES_PER_CASE
            if c in present(i):
                values.append(read_array(raw / "imagesTr" / f"{case}_{c:04d}.nii.gz")[0][label > 0])
        stats = fingerprint["foreground_intensity_properties_per_channel"][str(c)]
        assert stats["mean"] == pytest.approx(float(np.concatenate(values).mean()), rel=1e-5)
        assert stats["min"] == pytest.approx(float(np.concatenate(values).min()), rel=1e-6)
    folder = pre / "pirl_plans_3d_fullres"
    for i, case in enumerate(cases):
        props, data = load_json(folder / f"{case}.json"), np.load(folder / f"{case}.npy")
        assert data.shape[0] == len(MRI4) and np.isfinite(data[present(i)]).all()
        if i in DELETED:
            assert props["channels_present"] == present(i) and np.isnan(data[DELETED[i]]).all()
            assert [p is None for p in props["normalization"]] == [c in DELETED[i] for c in range(len(MRI4))]
        else:
            assert "channels_present" not in props


def _finite_training_terms(fold: Path) -> None:
    history = load_checkpoint(fold / "checkpoint_final.pth")["history"]
    terms = {k: v for row in history for k, v in row.items() if k.startswith("train/")}
    assert "train/loss" in terms and all(math.isfinite(v) for v in terms.values()), terms


def _subset(folder: Path, out: Path, names: list[str]) -> Path:
    """``out`` holding links to the files of ``names`` in ``folder``."""
    out.mkdir()
    for f in folder.iterdir():
        if any(f.name.startswith(f"{n}_") or f.name == f"{n}.nii.gz" for n in names):
            (out / f.name).symlink_to(f)
    return out


def test_pretrain_finetune_predict_evaluate(incomplete, tmp_path):
    root, cases = incomplete
    res, raw = root / "results" / DATASET, root / "raw" / DATASET
    assert train_main(["960", "3d_fullres", "pretrain", "--patch-size", "64", "64", "64", "--feature-size", "12",
                       "--val-iters", "0", *TINY]) == 0
    pretrained = res / "PIRLPretrainer__PIRLPlans__3d_fullres" / "fold_all"
    _finite_training_terms(pretrained)
    # seg from the pre-trained weights (final whole-volume validation on the fold's case, from what it has)
    assert train_main(["960", "3d_fullres", "seg", "-f", "0", "--pretrained", str(pretrained / "checkpoint_final.pth"),
                       "--val-iters", "0", *TINY]) == 0
    _finite_training_terms(res / "PIRLSegTrainer__PIRLPlans__3d_fullres" / "fold_0")
    # translate (a cheap DynUNet; validation every epoch: targets only where they exist)
    assert train_main(["960", "3d_fullres", "translate", "-f", "0", "-tr", "DynUNetTranslateTrainer", "--patch-size",
                       "32", "32", "32", "--feature-size", "12", "--val-iters", "1", *TINY]) == 0
    _finite_training_terms(res / "DynUNetTranslateTrainer__PIRLPlans__3d_fullres" / "fold_0")
    seg_images = _subset(raw / "imagesTr", tmp_path / "seg_images", [cases[1]])  # 2 of 4 channels
    images = _subset(raw / "imagesTr", tmp_path / "images", [cases[1], cases[3]])  # 2 of 4, and all 4
    labels = _subset(raw / "labelsTr", tmp_path / "labels", [cases[1]])
    for task, trainer, inputs, ref, count in (("seg", "PIRLSegTrainer", seg_images, labels, 1),
                                              ("translate", "DynUNetTranslateTrainer", images, images, 2)):
        out = tmp_path / task
        assert predict_main(["-i", str(inputs), "-o", str(out), "-d", "960", "-t", task, "-tr", trainer, "-f", "0",
                             "-device", "cpu", "--disable_tta"]) == 0
        assert evaluate_main(["-ref", str(ref), "-pred", str(out), "-d", "960", "-t", task, "-np", "1"]) == 0
        assert load_json(out / "summary.json")["num_cases"] == count
    assert [p.name for p in (tmp_path / "seg").glob("*.nii.gz")] == [f"{cases[1]}.nii.gz"]
    assert len(list((tmp_path / "translate").glob("*_000?.nii.gz"))) == 8  # every channel of both cases
    summary = load_json(tmp_path / "translate" / "summary.json")  # the deleted references: not scored, and said
    assert summary["not_scored"] == [f"{cases[1]}_{c:04d}.nii.gz" for c in DELETED[1]]
    assert summary["count"]["T2"]["PSNR"] == 1 and summary["count"]["T1"]["PSNR"] == 2
