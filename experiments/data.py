"""The two real datasets of the experiments, built from ``../shared/data`` with pirl's own converters.

- Dataset601_RealBraTS4 (translation, Table 10 / Table 7): the three real 4-modality cases (TCGA-DU-7294
  and AURORA-MET-0001 in BraTS-2020 naming, BraTS-PR138-00000-000 in BraTS-2023 naming), converted with
  ``pirl_convert_brats``. Leave-one-out splits: fold k validates on the k-th case (sorted names).
- Dataset602_BraTS2015Expert (segmentation, Table 8): the four BraTS-2015 FLAIR + T1c cases with expert
  labels, converted with ``pirl_convert_folder --mask brainmask``, its labels declared as the BraTS regions
  (whole tumour 1-4, tumour core 1+3+4, enhancing 4), the standard way BraTS is scored. Two folds:
  pat0003+pat0004 train / pat0005+pat0006 validate, and the reverse, so every case is tested once.
Nothing is copied from ``../shared``: the converters read it and write pirl raw datasets into the work folder.
"""
from __future__ import annotations

from pathlib import Path

from experiments.config import SEGMENTATION_ID, SEGMENTATION_NAME, TRANSLATION_ID, TRANSLATION_NAME
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.file_io import load_json, save_json

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
BRATS4_SOURCES = ("brats2020_style/TCGA-DU-7294", "brats2020_style/AURORA-MET-0001",
                  "brats2023_style/BraTS-PR138-00000-000")
BRATS2015 = "brats2015_two_modality"
BRATS2015_REGIONS = {"background": 0, "whole tumour": [1, 2, 3, 4], "tumour core": [1, 3, 4], "enhancing tumour": 4}
BRATS2015_REGION_ORDER = [2, 1, 4]  # paint oedema, then necrosis (core), then enhancing


def check_shared(shared: Path = SHARED_DATA) -> Path:
    missing = [s for s in (*BRATS4_SOURCES, BRATS2015) if not (shared / s).is_dir()]
    if missing:
        raise PirlInputError(f"{shared}: the experiments need the real cases {missing} (see shared/data/README.md)")
    return shared


def translation_source_folder(work: Path, shared: Path = SHARED_DATA) -> Path:
    """A folder of symlinks to the three 4-modality cases (the BraTS converter searches one folder)."""
    folder = work / "sources" / "brats4"
    folder.mkdir(parents=True, exist_ok=True)
    for source in BRATS4_SOURCES:
        link = folder / Path(source).name
        if not link.exists():
            link.symlink_to((shared / source).resolve(), target_is_directory=True)
    return folder


def conversion_commands(work: Path, shared: Path = SHARED_DATA) -> dict[str, list[str]]:
    """``{dataset folder name: python -m argv}`` of the two conversions."""
    raw = str(work / "raw")
    return {
        f"Dataset{TRANSLATION_ID}_{TRANSLATION_NAME}": [
            "dataset_conversion.brats", "-i", str(translation_source_folder(work, shared)),
            "-d", str(TRANSLATION_ID), "-n", TRANSLATION_NAME, "-o", raw],
        f"Dataset{SEGMENTATION_ID}_{SEGMENTATION_NAME}": [
            "dataset_conversion.generic_folder", "-i", str(shared / BRATS2015), "-d", str(SEGMENTATION_ID),
            "-n", SEGMENTATION_NAME, "-o", raw, "--channel", "FLAIR=Flair_*.nii.gz", "--channel", "T1c=T1c_*.nii.gz",
            "--label", "OTMultiClass.nii.gz", "--mask", "brainmask.nii.gz",
            "--labels", *[f"{name}={','.join(map(str, v)) if isinstance(v, list) else v}"
                          for name, v in BRATS2015_REGIONS.items()],
            "--regions_class_order", *map(str, BRATS2015_REGION_ORDER)],
    }


def translation_splits(cases: list[str]) -> list[dict[str, list[str]]]:
    """Leave-one-out over the (three) 4-modality cases, in sorted order."""
    cases = sorted(cases)
    return [{"train": [c for c in cases if c != held_out], "val": [held_out]} for held_out in cases]


def segmentation_splits(cases: list[str]) -> list[dict[str, list[str]]]:
    """Two folds: first half train / second half validate, and the reverse."""
    cases = sorted(cases)
    first, second = cases[: len(cases) // 2], cases[len(cases) // 2:]
    return [{"train": first, "val": second}, {"train": second, "val": first}]


def write_splits(preprocessed_dataset: Path, splits: list[dict[str, list[str]]]) -> None:
    """Replace the automatic splits with the experiment's fixed ones (only when they differ)."""
    path = preprocessed_dataset / "splits_final.json"
    if not path.is_file() or load_json(path) != splits:
        save_json(splits, path)
