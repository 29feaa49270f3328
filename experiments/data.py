"""The five real datasets of the experiments, built from ``../shared/data`` with pirl's own converters.

- Dataset601_RealBraTS4 (translation, Table 10 / Table 7): all eight real 4-modality cases, converted by one
  ``pirl_convert_brats --no-labels`` run over a folder of symlinks to their case folders. It reads every
  naming they ship in: BraTS-2020 (TCGA-DU-7294, AURORA-MET-0001), BraTS-2023 (BraTS-PR138-00000-000,
  BraTS-GLI-00000-000 with its ``-t2W`` file, BraTS-GLI-00027-000, BraTS-GLI-00028-000), UPENN-GBM
  (UPENN-GBM-00006_11) and GLISTR (ex0, on its own 192x256x192 0.977 mm grid). Image-only: three cases
  have no label and translation needs none. Four folds of 2 validation / 6 training cases
  (``translation_splits``); fold 0 validates AURORA-MET-0001 and TCGA-DU-7294.
- Dataset602_BraTS2015Expert (segmentation, Table 8): the four BraTS-2015 FLAIR + T1c cases with expert
  labels, converted with ``pirl_convert_folder --mask brainmask``, its labels declared as the BraTS regions
  (whole tumour 1-4, tumour core 1+3+4, enhancing 4), the standard way BraTS is scored. Two folds:
  pat0003+pat0004 train / pat0005+pat0006 validate, and the reverse, so every case is tested once.
- Dataset603_BraTS2018FlairT1 (segmentation): six BraTS-2018 FLAIR + T1 cases with the expert whole-tumour
  mask (GT_W, {0, 1}), converted with ``pirl_convert_folder``, each case named by its ``subject_id.txt``
  (Brats18_CBICA_AOO_1, ...). Skull-stripped with background exactly 0, so no mask is needed. Three folds
  of 4 train / 2 validate (``segmentation_splits(cases, SEGMENTATION2_FOLDS)``).
- Dataset604_BraTS2018Four (segmentation with missing modalities, Table 11): the eight BraTS-2018 cases with all
  four modalities and the official expert labels {0, 1, 2, 4} (``brats2018_four_modality``), converted by
  ``pirl_convert_brats`` (BraTS regions: whole tumour, tumour core, enhancing tumour). Four folds of 6 train /
  2 validate (``segmentation_splits(cases, SEGMENTATION4_FOLDS)``); ``seg4_translation`` translates on the same folds.
- Dataset605_STSPetCT (PET/CT, Table 8 and Table 7 on real patients; ``petct`` and ``petct_translation``): the 16
  FDG PET/CT soft-tissue-sarcoma subjects of ``sts_pet_ct`` (TCIA, expert tumour contour), PET (SUV) and CT (HU)
  on their own grids, converted by ``pirl_convert_folder --resample_to PET`` (CT and the CT mask resampled onto the
  PET grid, ~5.5 x 5.5 x 3.3 mm; crops of ~30 x 29 x 52 voxels), label ``lesion=1``. Four folds of 12 train / 4
  validate by pirl's own seeded cross-validation (``splits.make_splits``, seed 12345), every subject tested once.
Nothing is copied from ``../shared``: the converters read it and write pirl raw datasets into the work folder.
"""
from __future__ import annotations

from itertools import pairwise
from pathlib import Path

from experiments.config import (
    PARTS,
    PETCT_FOLDS,
    PETCT_ID,
    PETCT_NAME,
    SEGMENTATION2_FOLDS,
    SEGMENTATION2_ID,
    SEGMENTATION2_NAME,
    SEGMENTATION4_FOLDS,
    SEGMENTATION4_ID,
    SEGMENTATION4_NAME,
    SEGMENTATION_ID,
    SEGMENTATION_NAME,
    SHARED_PART,
    TRANSLATION_ID,
    TRANSLATION_NAME,
)
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.file_io import load_json, save_json
from pirl_pipeline.splits import make_splits

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
BRATS4_SOURCES = ("brats2020_style/TCGA-DU-7294", "brats2020_style/AURORA-MET-0001",
                  "brats2023_style/BraTS-PR138-00000-000", "brats2023_more/BraTS-GLI-00000-000",
                  "brats2023_more/BraTS-GLI-00027-000", "brats2023_more/BraTS-GLI-00028-000",
                  "upenn_gbm/UPENN-GBM-00006_11", "glistr_example/ex0")
# validation pairs of the translation folds, in fold order (fold 0: the two BraTS-2020-style cases)
TRANSLATION_VAL_PAIRS = (("AURORA-MET-0001", "TCGA-DU-7294"), ("BraTS-GLI-00000-000", "BraTS-PR138-00000-000"),
                         ("BraTS-GLI-00027-000", "BraTS-GLI-00028-000"), ("UPENN-GBM-00006_11", "ex0"))
BRATS2015 = "brats2015_two_modality"
BRATS2015_REGIONS = {"background": 0, "whole tumour": [1, 2, 3, 4], "tumour core": [1, 3, 4], "enhancing tumour": 4}
BRATS2015_REGION_ORDER = [2, 1, 4]  # paint oedema, then necrosis (core), then enhancing
BRATS2018_FLAIR_T1 = "brats2018_flair_t1"
BRATS2018_FOUR = "brats2018_four_modality"
STS_PET_CT = "sts_pet_ct"


def check_shared(shared: Path = SHARED_DATA) -> Path:
    missing = [s for s in (*BRATS4_SOURCES, BRATS2015, BRATS2018_FLAIR_T1, BRATS2018_FOUR, STS_PET_CT)
               if not (shared / s).is_dir()]
    if missing:
        raise PirlInputError(f"{shared}: the experiments need the real cases {missing} (see shared/data/README.md)")
    return shared


def translation_source_folder(work: Path, shared: Path = SHARED_DATA) -> Path:
    """A folder of symlinks to the eight 4-modality case folders (the BraTS converter searches one folder)."""
    folder = work / "sources" / "brats4"
    folder.mkdir(parents=True, exist_ok=True)
    for source in BRATS4_SOURCES:
        link = folder / Path(source).name
        if not link.exists():
            link.symlink_to((shared / source).resolve(), target_is_directory=True)
    return folder


def conversion_commands(work: Path, shared: Path = SHARED_DATA) -> dict[str, list[str]]:
    """``{dataset folder name: python -m argv}`` of the five conversions."""
    raw = str(work / "raw")
    return {
        f"Dataset{TRANSLATION_ID}_{TRANSLATION_NAME}": [
            "dataset_conversion.brats", "-i", str(translation_source_folder(work, shared)),
            "-d", str(TRANSLATION_ID), "-n", TRANSLATION_NAME, "-o", raw, "--no-labels"],
        f"Dataset{SEGMENTATION_ID}_{SEGMENTATION_NAME}": [
            "dataset_conversion.generic_folder", "-i", str(shared / BRATS2015), "-d", str(SEGMENTATION_ID),
            "-n", SEGMENTATION_NAME, "-o", raw, "--channel", "FLAIR=Flair_*.nii.gz", "--channel", "T1c=T1c_*.nii.gz",
            "--label", "OTMultiClass.nii.gz", "--mask", "brainmask.nii.gz",
            "--labels", *[f"{name}={','.join(map(str, v)) if isinstance(v, list) else v}"
                          for name, v in BRATS2015_REGIONS.items()],
            "--regions_class_order", *map(str, BRATS2015_REGION_ORDER)],
        f"Dataset{SEGMENTATION2_ID}_{SEGMENTATION2_NAME}": [
            "dataset_conversion.generic_folder", "-i", str(shared / BRATS2018_FLAIR_T1), "-d", str(SEGMENTATION2_ID),
            "-n", SEGMENTATION2_NAME, "-o", raw, "--channel", "FLAIR=FLAIR.nii.gz", "--channel", "T1=T1.nii.gz",
            "--label", "GT_W.nii.gz", "--labels", "background=0", "whole tumour=1",
            "--case_name_file", "subject_id.txt", "--case_name_key", "Subject_id"],
        f"Dataset{SEGMENTATION4_ID}_{SEGMENTATION4_NAME}": [
            "dataset_conversion.brats", "-i", str(shared / BRATS2018_FOUR), "-d", str(SEGMENTATION4_ID),
            "-n", SEGMENTATION4_NAME, "-o", raw],
        # docs/dataset_format.md "PET/CT on different grids": the PET grid, labelled with the CT mask (Dice 0.974 to the PET mask)
        f"Dataset{PETCT_ID}_{PETCT_NAME}": [
            "dataset_conversion.generic_folder", "-i", str(shared / STS_PET_CT), "-d", str(PETCT_ID),
            "-n", PETCT_NAME, "-o", raw, "--channel", "PET=PET_image*", "--channel", "CT=CT_image*",
            "--label", "CT_mask*", "--labels", "lesion=1", "--resample_to", "PET"],
    }


def translation_splits(cases: list[str]) -> list[dict[str, list[str]]]:
    """Folds validating two cases each, training on the rest: the ``TRANSLATION_VAL_PAIRS`` first, then any
    other cases in sorted pairs. Eight leave-one-out folds would cost four times the CPU time of a run."""
    ordered = [c for pair in TRANSLATION_VAL_PAIRS for c in pair if c in cases]
    ordered += sorted(set(cases) - set(ordered))
    return [{"train": sorted(set(cases) - set(ordered[i:i + 2])), "val": ordered[i:i + 2]}
            for i in range(0, len(ordered), 2)]


def segmentation_splits(cases: list[str], num_folds: int = 2) -> list[dict[str, list[str]]]:
    """``num_folds`` folds over the sorted cases cut into equal runs; fold k validates the k-th run from the
    end and trains on the others (2 folds of 4 cases: first half train / second half validate, and the
    reverse; 3 folds of 6: 4 train / 2 validate)."""
    cases = sorted(cases)
    if not 2 <= num_folds <= len(cases):
        raise PirlInputError(f"segmentation_splits: {num_folds} folds of {len(cases)} cases (2..{len(cases)})")
    bounds = [round(i * len(cases) / num_folds) for i in range(num_folds + 1)]
    runs = [cases[a:b] for a, b in pairwise(bounds)][::-1]
    return [{"train": [c for c in cases if c not in val], "val": val} for val in runs]


def splits_for(part: str, preprocessed_dataset: Path) -> list[dict[str, list[str]]]:
    """The fixed splits of an experiment part ("translation", "seg", "seg2", "seg4", "petct", ...) over its
    preprocessed cases."""
    cases = sorted(p.stem for p in (preprocessed_dataset / "pirl_plans_3d_fullres").glob("*.json"))
    part = SHARED_PART.get(part, part)  # a part on another part's data has its splits
    if part == "translation":
        return translation_splits(cases)
    if part == "petct":
        return make_splits(cases, PETCT_FOLDS)
    return segmentation_splits(cases, {"seg2": SEGMENTATION2_FOLDS, "seg4": SEGMENTATION4_FOLDS}.get(part, 2))


def write_splits(preprocessed_dataset: Path, splits: list[dict[str, list[str]]]) -> None:
    """Replace the automatic splits with the experiment's fixed ones (only when they differ)."""
    path = preprocessed_dataset / "splits_final.json"
    if not path.is_file() or load_json(path) != splits:
        save_json(splits, path)


def describe_datasets(parts: list[str] | None = None) -> list[str]:
    """One line per dataset the ``parts`` use (None: all; ``ablation``: the translation data; ``representation``:
    every dataset), this module's list above matched by the dataset folder names of ``config.PARTS``."""
    items = [" ".join(item.split()) for item in __doc__.split("\nNothing is copied")[0].split("\n- ")[1:]]
    every = parts is None or "representation" in parts
    names = {PARTS[part][0] for part in (PARTS if every else parts) if part in PARTS}
    names |= {PARTS["translation"][0]} if parts and "ablation" in parts else set()
    return [item for item in items if item.split(" ", 1)[0] in names]
