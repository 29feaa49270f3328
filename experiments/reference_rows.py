"""``python -m experiments.reference_rows``: the trivial references of one experiment part and fold, scored
by the same evaluator on the same held-out cases as the models, as per-case CSVs beside the models' ones.

- translation: ``identity`` (the source copied as the target) and ``histogram`` (a source -> target intensity
  mapping fitted on the fold's training cases), for every source -> target pair;
- segmentation, for every modality subset: ``whole_brain`` (every brain voxel of the subset's channels is
  tumour) and ``threshold`` (an intensity threshold fitted on the training cases on FLAIR when the subset has
  it, else on the subset's first channel);
- PET/CT (``petct``; :data:`PETCT_REFERENCES`), with HD95 like the models' rows: the clinical uptake rules on
  the raw PET (SUV), nothing fitted: ``suv_threshold`` (SUV >= 2.5) and ``suvmax_fraction`` (>= 41 % of the
  case's SUVmax in the crop); ``whole_brain`` on PET + CT, which is every voxel of the crop (CT air is -1000 HU,
  never 0: its FPR of 1.000 in the table shows it); and ``threshold`` fitted on the training cases' PET. Each
  reads only PET (or nothing that matters), so it is one row beside both of the paper's inputs (PET + CT and PET; not
  beside CT alone).
Rows go to ``WORK/eval/reference_<kind>/<part>_fold<k>/per_case.csv`` (the layout of ``pirl_evaluate_missing``);
the fitted thresholds and mappings to ``fitted.json`` beside them.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from experiments.config import EXTERNAL_TESTS, PARTS, eval_folder
from pirl_pipeline.cli.common import cli_entry
from pirl_pipeline.data.dataset_json import check_input_channels, load_dataset_json
from pirl_pipeline.data.modalities import modality
from pirl_pipeline.evaluation.missing_modalities import modality_subsets, subset_name
from pirl_pipeline.evaluation.references.common import raw_cases
from pirl_pipeline.evaluation.references.segmentation import (
    UptakeThreshold,
    fit_threshold,
    lesion_label,
    segmentation_reference_table,
    uptake_channel,
)
from pirl_pipeline.evaluation.references.translation import (
    all_pairs,
    fit_intensity_mappings,
    translation_reference_table,
)
from pirl_pipeline.file_io import atomic_path, load_json, save_json
from pirl_pipeline.fold_folder import PER_CASE

REFERENCE_KEYS = {"identity": "reference_identity", "histogram": "reference_histogram",
                  "whole_brain": "reference_whole_brain", "threshold": "reference_threshold",
                  "suv_threshold": "reference_suv_threshold", "suvmax_fraction": "reference_suvmax_fraction"}
REFERENCE_LABELS = {"reference_identity": "(reference) copy the source modality",
                    "reference_histogram": "(reference) intensity mapping fitted on the training cases",
                    "reference_whole_brain": "(reference) every brain voxel called tumour",
                    "reference_threshold": "(reference) intensity threshold fitted on the training cases",
                    "reference_suv_threshold": "(reference) SUV >= 2.5",
                    "reference_suvmax_fraction": "(reference) >= 41 % of the crop's SUVmax"}
#: the reference rows of every translation / BraTS segmentation table
TRANSLATION_REFERENCES = ["reference_identity", "reference_histogram"]
SEGMENTATION_REFERENCES = ["reference_whole_brain", "reference_threshold"]
#: the PET/CT references: kind -> the rule's value (None: whole_brain, or fitted on the training cases)
PETCT_REFERENCES = {"suv_threshold": 2.5, "suvmax_fraction": 0.41, "whole_brain": None, "threshold": None}


def _write(rows: pd.DataFrame, work: Path, kind: str, part: str, fold: int, fitted: dict) -> None:
    out = eval_folder(work, REFERENCE_KEYS[kind], part, fold)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / PER_CASE) as tmp:
        rows.to_csv(tmp, index=False)
    save_json(fitted, out / "fitted.json")


#: an external test's name -> (the part whose training cases fit the references, the external test)
EXTERNAL_OWNERS = {e.name: (part, e) for part, e in EXTERNAL_TESTS.items()}


def run(work: Path, part: str, fold: int) -> None:
    """The references of ``part`` (a PARTS key or an external test's name: fitted on the owning part's training
    cases, scored on every case of its dataset) on ``fold``'s held-out cases."""
    owner, external = EXTERNAL_OWNERS.get(part, (part, None))
    dataset, task = PARTS[owner]
    raw = work / "raw" / dataset
    dj = load_dataset_json(raw)
    split = load_json(work / "preprocessed" / dataset / "splits_final.json")[fold]
    train, train_labels = raw_cases(raw, dj, split["train"])
    if external is None:
        test, test_labels = raw_cases(raw, dj, split["val"])
    else:
        other = work / "raw" / PARTS[external.dataset_part][0]
        check_input_channels(other / "imagesTr", dj)  # the same contrast per channel index as the owner's data
        test, test_labels = raw_cases(other, dj)
    if part == "petct":
        petct_references(work, dj, train, train_labels, test, test_labels, fold)
        return
    if task == "translate":
        mappings = fit_intensity_mappings(train, all_pairs(dj.num_channels))
        fitted = {f"{s}->{t}": m.to_dict() for (s, t), m in mappings.items()}
        _write(translation_reference_table("identity", test, dj), work, "identity", part, fold, {})
        _write(translation_reference_table("histogram", test, dj, mappings), work, "histogram", part, fold, fitted)
        return
    names = [dj.channel_names[str(c)] for c in range(dj.num_channels)]
    brain, threshold, fitted = [], [], {}
    for subset in modality_subsets(dj.num_channels):
        label = subset_name(subset, dj)
        only = {case: {c: files[c] for c in subset} for case, files in test.items()}
        brain.append(segmentation_reference_table("whole_brain", only, test_labels, dj).assign(subset=label))
        flair = [c for c in subset if modality(names[c]).name == "FLAIR"]
        model = fit_threshold(train, train_labels, dj, channel=(flair or list(subset))[0])
        fitted[label] = model.to_dict()
        threshold.append(segmentation_reference_table("threshold", only, test_labels, dj, model).assign(subset=label))
    _write(pd.concat(brain, ignore_index=True), work, "whole_brain", part, fold, {})
    _write(pd.concat(threshold, ignore_index=True), work, "threshold", part, fold, fitted)


def petct_references(work: Path, dj, train: dict, train_labels: dict, test: dict, test_labels: dict,
                     fold: int, part: str = "petct") -> None:
    """The :data:`PETCT_REFERENCES` of one fold, with the distance metrics (HD95) the petct models get."""
    pet = uptake_channel(dj)
    only_pet = {case: {pet: files[pet]} for case, files in test.items()}
    for kind, value in PETCT_REFERENCES.items():
        if kind in ("suv_threshold", "suvmax_fraction"):
            model = UptakeThreshold(kind, pet, value, lesion_label(dj))
            fitted = model.to_dict()
        elif kind == "threshold":
            model = fit_threshold(train, train_labels, dj, channel=pet)
            fitted = model.to_dict()
        else:  # every voxel non-zero in PET or CT: the whole crop
            model, fitted = None, {}
        cases = test if kind == "whole_brain" else only_pet
        rows = segmentation_reference_table(kind, cases, test_labels, dj, model, distance_metrics=True)
        _write(rows, work, kind, part, fold, fitted)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.reference_rows", description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--part", choices=[*PARTS, *EXTERNAL_OWNERS], required=True)
    p.add_argument("--fold", type=int, required=True)
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run(args.work, args.part, args.fold)
    done = eval_folder(args.work, "references", args.part, args.fold) / "done"
    done.parent.mkdir(parents=True, exist_ok=True)
    done.touch()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
