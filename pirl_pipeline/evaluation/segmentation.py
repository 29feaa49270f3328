"""Segmentation evaluation: Dice, TPR, TNR, FNR, FPR per label and per region, per case and over a folder.

Targets (see :func:`segmentation_targets`): every non-background label value, named by
``dataset.json["label_names"]`` (e.g. BraTS NCR/ED/ET) or else by its ``labels`` key; and, when dataset.json
declares regions (lists of label values), every non-background ``labels`` entry as a region named by its key
(BraTS: "whole tumor" = {1,2,3}, "tumor core" = {1,3}, "enhancing tumor" = {3}). Label maps are compared
in the dataset's label values (pirl_predict converts regions back to labels). Empty-mask conventions: see
:mod:`pirl_pipeline.evaluation.metrics`.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pirl_pipeline.data.dataset_json import DatasetJson
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.evaluation.evaluate import (
    check_folder,
    check_grids,
    list_label_files,
    match_cases,
    read_on_grid,
    resolve_dataset_json,
    run_cases,
)
from pirl_pipeline.evaluation.metrics import OVERLAP_METRICS, overlap_metrics

log = logging.getLogger("pirl")


def segmentation_targets(dj: DatasetJson) -> dict[str, tuple[int, ...]]:
    """``{name: label values}``: one entry per foreground label, then one per region (if any)."""
    names = {int(k): str(v) for k, v in dj.extra.get("label_names", {}).items()}
    plain = {v: k for k, v in dj.labels.items() if isinstance(v, int)}
    regions = {k: tuple(v) if isinstance(v, list) else (v,) for k, v in dj.labels.items()
               if dj.has_regions and v != 0}
    targets: dict[str, tuple[int, ...]] = {}
    for value in dj.foreground_labels:
        name = names.get(value) or (plain[value] if not dj.has_regions and value in plain else f"label {value}")
        targets[name if name not in regions and name not in targets else f"label {value}"] = (value,)
    return {**targets, **regions}


def _check_values(labels: np.ndarray, allowed: set[int], source: str) -> np.ndarray:
    """Integer label map; PirlInputError when it holds values the dataset does not declare."""
    if not np.issubdtype(labels.dtype, np.integer):
        rounded = np.rint(labels)
        if not np.array_equal(rounded, labels):
            raise PirlInputError(f"{source}: label map has non-integer values")
        labels = rounded.astype(np.int64)
    unknown = sorted(set(np.unique(labels).tolist()) - allowed)
    if unknown:
        raise PirlInputError(f"{source}: label value(s) {unknown} not declared in dataset.json "
                             f"(allowed {sorted(allowed)})")
    return labels


def segmentation_metrics(pred_labels: np.ndarray, ref_labels: np.ndarray, dataset_json: DatasetJson,
                         check_values: bool = True) -> dict[str, float]:
    """Metrics of one case given two label maps of the same shape: ``{"<metric>/<target>": value}``.

    With ``check_values``, label values that dataset.json does not declare raise PirlInputError.
    """
    pred_labels, ref_labels = np.asarray(pred_labels), np.asarray(ref_labels)
    if pred_labels.shape != ref_labels.shape:
        raise PirlInputError(f"prediction shape {pred_labels.shape} != reference shape {ref_labels.shape}")
    if check_values:
        allowed = dataset_json.label_values | {0}
        pred_labels = _check_values(pred_labels, allowed, "prediction")
        ref_labels = _check_values(ref_labels, allowed, "reference")
    out: dict[str, float] = {}
    for name, values in segmentation_targets(dataset_json).items():
        scores = overlap_metrics(np.isin(pred_labels, values), np.isin(ref_labels, values))
        out.update({f"{metric}/{name}": scores[metric] for metric in OVERLAP_METRICS})
    return out


def evaluate_segmentation_case(ref_file: Path, pred_file: Path, dataset_json: DatasetJson) -> dict[str, float]:
    """Read a reference and a predicted label map (same grid required) and compute their metrics."""
    ref, grid = read_on_grid(ref_file, None)
    pred, _ = read_on_grid(pred_file, grid, ref_file)
    allowed = dataset_json.label_values | {0}
    return segmentation_metrics(_check_values(pred, allowed, str(pred_file)),
                                _check_values(ref, allowed, str(ref_file)), dataset_json, check_values=False)


def _case_job(pair: tuple[Path, Path], dataset_json: DatasetJson) -> dict[str, float]:
    return evaluate_segmentation_case(pair[0], pair[1], dataset_json)


def evaluate_segmentation_folder(ref_dir: str | Path, pred_dir: str | Path,
                                 dataset_json: DatasetJson | str | Path | int,
                                 num_processes: int = 1) -> pd.DataFrame:
    """Per-case table (index ``case``, columns ``"<metric>/<target>"``) of ``pred_dir/CASE<ending>`` against
    ``ref_dir/CASE<ending>``; both folders must hold the same cases. ``dataset_json``: a DatasetJson, a
    dataset.json path or folder, or a dataset id in $PIRL_raw."""
    dj = resolve_dataset_json(dataset_json)
    ref_dir, pred_dir = check_folder(ref_dir, "reference"), check_folder(pred_dir, "prediction")
    ref, pred = list_label_files(ref_dir, dj.file_ending), list_label_files(pred_dir, dj.file_ending)
    cases = match_cases(ref, pred, ref_dir, pred_dir, f"CASE{dj.file_ending}")
    check_grids([[ref[c], pred[c]] for c in cases])
    rows = run_cases(functools.partial(_case_job, dataset_json=dj), [(ref[c], pred[c]) for c in cases],
                     num_processes, "evaluate seg")
    columns = [f"{m}/{t}" for m in OVERLAP_METRICS for t in segmentation_targets(dj)]
    return pd.DataFrame(rows, index=pd.Index(cases, name="case"), columns=columns)
