"""Segmentation evaluation per label and per region, per case and over a folder: voxel overlap (Dice, TPR,
TNR, FNR, FPR), case-level detection (CaseTPR, CaseTNR), surface distances in mm (HD95, NSD) and the BraTS
2023 lesion-wise Dice and HD95 (LesionDice, LesionHD95; :mod:`pirl_pipeline.evaluation.lesionwise`).

Targets (see :func:`segmentation_targets`): every non-background label value, named by
``dataset.json["label_names"]`` (e.g. BraTS NCR/ED/ET) or else by its ``labels`` key; and, when dataset.json
declares regions (lists of label values), every non-background ``labels`` entry as a region named by its key
(BraTS: "whole tumor" = {1,2,3}, "tumor core" = {1,3}, "enhancing tumor" = {3}). Label maps are compared
in the dataset's label values (pirl_predict converts regions back to labels). Empty-mask conventions: see
:mod:`pirl_pipeline.evaluation.metrics`.

Empty reference (a target absent from a case's reference), chosen per dataset by
:func:`default_empty_reference` unless given: ``"one_if_both_empty"`` for brain-tumour-style datasets
(BraTS: an absent enhancing tumour predicted absent scores Dice 1, HD95 0 — the challenges' convention,
so our means compare with theirs); ``"exclude"`` for datasets with a PET channel (AutoPET-like whole-body
lesion data, where about half of the cases are lesion-free: those cases are left out of Dice/HD95/NSD/
lesion-wise means, which then describe the cases with lesions, and are judged by CaseTNR, the fraction
predicted lesion-free).

Small enhancing tumour (RFNet, DeMoSeg; off unless asked): with ``SegmentationOptions(small_et_voxels=500)``
(``pirl_evaluate --small_et_voxels``) or ``small_et_mm3``, a prediction whose enhancing tumour has fewer voxels
(or less volume) than the threshold has it relabelled as necrosis (NCR) — DeMoSeg's ``postprocess_MSD_each``;
RFNet's ``enhancing_postpro`` empties the ET mask, the same ET numbers — and every target that is exactly the
ET label is scored again on that map as ``"<target> (post-processed)"`` (BraTS: "ET (post-processed)",
"enhancing tumor (post-processed)"), beside the raw one, which stays as predicted. Whole tumour and tumour
core contain NCR, so they do not change; only datasets whose ``label_names`` name ET and NCR (pirl's BraTS
conversion) accept the option. The count is over the whole prediction, on the reference's grid.

Cost on a real 240x240x155 case (6 targets, one busy 2-core machine): overlap + detection 0.2-0.5 s; with
HD95, NSD and lesion-wise 0.9-3.3 s (more when false positives spread the bounding box over the brain).
``SegmentationOptions(distance_metrics=False)`` (``pirl_evaluate --no_distance_metrics``) or no ``spacing``
skips them.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pirl_pipeline.data.dataset_json import DatasetJson, list_label_files
from pirl_pipeline.data.modalities import empty_reference_policy
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.evaluation.evaluate import (
    check_folder,
    check_grids,
    match_cases,
    read_on_grid,
    resolve_dataset_json,
    run_cases,
)
from pirl_pipeline.evaluation.lesionwise import (
    LESION_DILATION,
    LESION_MIN_VOLUME_MM3,
    LESIONWISE_METRICS,
    lesionwise_metrics,
)
from pirl_pipeline.evaluation.metrics import (
    DETECTION_METRICS,
    NSD_TOLERANCE_MM,
    OVERLAP_METRICS,
    SURFACE_METRICS,
    apply_empty_reference,
    bounding_box,
    check_empty_reference,
    confusion,
    detection,
    rates,
    surface_metrics,
)

log = logging.getLogger("pirl")


@dataclass(frozen=True)
class SegmentationOptions:
    """What :func:`segmentation_metrics` computes beyond overlap and detection (written into summary.json)."""

    distance_metrics: bool = True  # HD95, NSD, LesionDice, LesionHD95 (need the voxel spacing)
    empty_reference: str | None = None  # "one_if_both_empty" | "exclude"; None: default_empty_reference
    nsd_tolerance_mm: float = NSD_TOLERANCE_MM
    lesion_dilation: int = LESION_DILATION
    lesion_min_volume_mm3: float = LESION_MIN_VOLUME_MM3
    small_et_voxels: int | None = None  # predicted ET below this many voxels -> NCR, scored as "... (post-processed)"
    small_et_mm3: float | None = None  # the same threshold as a volume (needs the spacing); one of the two at most

    def __post_init__(self) -> None:
        if self.empty_reference is not None:
            check_empty_reference(self.empty_reference)
        if not (math.isfinite(self.nsd_tolerance_mm) and self.nsd_tolerance_mm >= 0):
            raise ValueError(f"nsd_tolerance_mm {self.nsd_tolerance_mm}: need a finite value >= 0 (mm)")
        if int(self.lesion_dilation) != self.lesion_dilation or self.lesion_dilation < 0:
            raise ValueError(f"lesion_dilation {self.lesion_dilation}: need a whole number >= 0")
        if not self.lesion_min_volume_mm3 >= 0:
            raise ValueError(f"lesion_min_volume_mm3 {self.lesion_min_volume_mm3}: need a value >= 0 (mm^3)")
        if self.small_et_voxels is not None and self.small_et_mm3 is not None:
            raise ValueError(f"small_et_voxels {self.small_et_voxels}: give the threshold in voxels or in mm^3 "
                             f"(small_et_mm3 {self.small_et_mm3}), not both")
        if self.small_et_voxels is not None and (int(self.small_et_voxels) != self.small_et_voxels
                                                 or self.small_et_voxels < 1):
            raise ValueError(f"small_et_voxels {self.small_et_voxels}: need a whole number >= 1 (RFNet/DeMoSeg: 500)")
        if self.small_et_mm3 is not None and not (math.isfinite(self.small_et_mm3) and self.small_et_mm3 > 0):
            raise ValueError(f"small_et_mm3 {self.small_et_mm3}: need a finite volume > 0 (mm^3)")

    @property
    def small_et(self) -> bool:
        """Whether the small-ET post-processing is scored (beside the raw targets)."""
        return self.small_et_voxels is not None or self.small_et_mm3 is not None

    def resolved(self, dj: DatasetJson) -> SegmentationOptions:
        """These options with the empty-reference policy filled in for the dataset (ValueError when the small-ET
        post-processing is asked of a dataset without ET and NCR labels)."""
        if self.small_et:
            small_et_labels(dj, "small_et_voxels" if self.small_et_voxels is not None else "small_et_mm3")
        return dataclasses.replace(self, empty_reference=self.empty_reference or default_empty_reference(dj))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def default_empty_reference(dj: DatasetJson) -> str:
    """``"exclude"`` when a channel is PET (AutoPET-like data, many lesion-free cases), else
    ``"one_if_both_empty"`` (BraTS convention): the channels' kinds decide (``data/modalities.py``); see the
    module docstring."""
    return empty_reference_policy(dj.channel_names.values())


POSTPROCESSED = " (post-processed)"  # suffix of the targets scored after the small-ET post-processing
SMALL_ET_VOXELS = 500  # RFNet's and DeMoSeg's threshold (voxels of the 1 mm BraTS grid)
SMALL_ET_CONVENTIONS = {
    "post-processed": "targets named '<target> (post-processed)': scored on the prediction with its enhancing tumour "
                      "(ET) relabelled as necrosis (NCR) when it has fewer voxels (small_et_voxels) or less volume "
                      "(small_et_mm3) than the threshold in segmentation_options (RFNet/DeMoSeg); the raw targets "
                      "are scored on the prediction as written",
}


def small_et_labels(dj: DatasetJson, field: str = "small_et_voxels") -> tuple[int, int]:
    """``(ET value, NCR value)`` from dataset.json's ``label_names``; ValueError naming ``field`` when the
    dataset does not name both (the post-processing is a BraTS convention)."""
    by_name = {str(v).upper(): int(k) for k, v in dj.extra.get("label_names", {}).items()}
    if "ET" not in by_name or "NCR" not in by_name:
        raise ValueError(f"{field}: the small-ET post-processing needs labels named ET and NCR in dataset.json's "
                         f"label_names (BraTS); this dataset has {dj.extra.get('label_names', 'none')}")
    return by_name["ET"], by_name["NCR"]


def postprocess_small_et(pred_labels: np.ndarray, dj: DatasetJson, options: SegmentationOptions,
                         spacing: Sequence[float] | None = None) -> np.ndarray:
    """``pred_labels`` with its enhancing tumour relabelled as NCR when it is smaller than the options'
    threshold (voxels, or mm^3 from ``spacing``); the same array when it is not, or the option is off."""
    if not options.small_et:
        return pred_labels
    et, ncr = small_et_labels(dj)
    count = int(np.count_nonzero(pred_labels == et))
    if options.small_et_mm3 is not None:
        if spacing is None:
            raise ValueError(f"small_et_mm3 {options.small_et_mm3}: needs the voxel spacing")
        small = count * math.prod(spacing) < options.small_et_mm3
    else:
        small = count < options.small_et_voxels
    return np.where(pred_labels == et, ncr, pred_labels) if small and count else pred_labels


def scored_targets(dj: DatasetJson, options: SegmentationOptions | None = None) -> dict[str, tuple[int, ...]]:
    """:func:`segmentation_targets`, then, with the small-ET post-processing on, every target that is exactly
    the ET label again as ``"<target> (post-processed)"`` (scored on the post-processed prediction)."""
    targets = segmentation_targets(dj)
    if options is None or not options.small_et:
        return targets
    et, _ = small_et_labels(dj)
    return {**targets, **{f"{name}{POSTPROCESSED}": v for name, v in targets.items() if v == (et,)}}


def segmentation_metric_names(distance_metrics: bool) -> tuple[str, ...]:
    """Metric names of :func:`segmentation_metrics`, in column order."""
    extra = SURFACE_METRICS + LESIONWISE_METRICS if distance_metrics else ()
    return OVERLAP_METRICS + DETECTION_METRICS + extra


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
                         check_values: bool = True, spacing: Sequence[float] | None = None,
                         options: SegmentationOptions | None = None) -> dict[str, float]:
    """Metrics of one case given two label maps of the same shape: ``{"<metric>/<target>": value}``.

    Always Dice, TPR, TNR, FNR, FPR, CaseTPR, CaseTNR; HD95, NSD, LesionDice, LesionHD95 as well when
    ``spacing`` (mm per array axis, i.e. (z, y, x)) is given and ``options.distance_metrics`` (without a
    spacing they are skipped: cheap). Targets: :func:`scored_targets` (the post-processed ET ones when
    ``options`` asks for the small-ET post-processing).
    With ``check_values``, label values that dataset.json does not declare raise PirlInputError.
    """
    pred_labels, ref_labels = np.asarray(pred_labels), np.asarray(ref_labels)
    if pred_labels.shape != ref_labels.shape:
        raise PirlInputError(f"prediction shape {pred_labels.shape} != reference shape {ref_labels.shape}")
    if check_values:
        allowed = dataset_json.label_values | {0}
        pred_labels = _check_values(pred_labels, allowed, "prediction")
        ref_labels = _check_values(ref_labels, allowed, "reference")
    options = (options or SegmentationOptions()).resolved(dataset_json)
    distances = spacing is not None and options.distance_metrics
    if distances and len(spacing) != ref_labels.ndim:
        raise ValueError(f"spacing {tuple(spacing)}: need one value per array axis ({ref_labels.ndim})")
    # relabelling ET as NCR keeps the foreground, hence the bounding box below
    postprocessed = postprocess_small_et(pred_labels, dataset_json, options, spacing)
    # Every count but TN lives on the bounding box of the foreground (grown by more than the lesion-wise
    # dilation, so no dilation reaches its border): the same numbers on far fewer voxels.
    box = bounding_box((pred_labels != 0) | (ref_labels != 0), margin=options.lesion_dilation + 1)
    outside = 0
    if box is not None:
        outside = ref_labels.size - math.prod(s.stop - s.start for s in box)
        pred_labels, ref_labels, postprocessed = pred_labels[box], ref_labels[box], postprocessed[box]
    out: dict[str, float] = {}
    for name, values in scored_targets(dataset_json, options).items():
        source = postprocessed if name.endswith(POSTPROCESSED) else pred_labels
        pred, ref = np.isin(source, values), np.isin(ref_labels, values)
        tp, fp, fn, tn = confusion(pred, ref)
        tn += outside
        scores = {**rates(tp, fp, fn, tn), **detection(tp, fp, fn)}
        if distances:
            scores.update(surface_metrics(pred, ref, spacing, options.nsd_tolerance_mm))
            scores.update(lesionwise_metrics(pred, ref, spacing, options.lesion_dilation,
                                             options.lesion_min_volume_mm3).as_metrics())
        scores = apply_empty_reference(scores, tp + fn == 0, options.empty_reference)
        out.update({f"{metric}/{name}": value for metric, value in scores.items()})
    return out


def evaluate_segmentation_case(ref_file: Path, pred_file: Path, dataset_json: DatasetJson,
                               options: SegmentationOptions | None = None) -> dict[str, float]:
    """Read a reference and a predicted label map (same grid required) and compute their metrics (distances
    in mm from the reference's spacing)."""
    ref, grid = read_on_grid(ref_file, None)
    pred, _ = read_on_grid(pred_file, grid, ref_file)
    allowed = dataset_json.label_values | {0}
    return segmentation_metrics(_check_values(pred, allowed, str(pred_file)),
                                _check_values(ref, allowed, str(ref_file)), dataset_json, check_values=False,
                                spacing=grid.spacing, options=options)


def _case_job(pair: tuple[Path, Path], dataset_json: DatasetJson, options: SegmentationOptions) -> dict[str, float]:
    return evaluate_segmentation_case(pair[0], pair[1], dataset_json, options)


def evaluate_segmentation_folder(ref_dir: str | Path, pred_dir: str | Path,
                                 dataset_json: DatasetJson | str | Path | int, num_processes: int = 1,
                                 options: SegmentationOptions | None = None) -> pd.DataFrame:
    """Per-case table (index ``case``, columns ``"<metric>/<target>"``) of ``pred_dir/CASE<ending>`` against
    ``ref_dir/CASE<ending>``; both folders must hold the same cases. ``dataset_json``: a DatasetJson, a
    dataset.json path or folder, or a dataset id in $PIRL_raw. ``options``: default
    ``SegmentationOptions()`` (every metric, the dataset's empty-reference policy)."""
    dj = resolve_dataset_json(dataset_json)
    ref_dir, pred_dir = check_folder(ref_dir, "reference"), check_folder(pred_dir, "prediction")
    ref, pred = list_label_files(ref_dir, dj.file_ending), list_label_files(pred_dir, dj.file_ending)
    cases = match_cases(ref, pred, ref_dir, pred_dir, f"CASE{dj.file_ending}")
    check_grids([[ref[c], pred[c]] for c in cases])
    options = (options or SegmentationOptions()).resolved(dj)
    rows = run_cases(functools.partial(_case_job, dataset_json=dj, options=options),
                     [(ref[c], pred[c]) for c in cases], num_processes, "evaluate seg")
    columns = [f"{m}/{t}" for m in segmentation_metric_names(options.distance_metrics)
               for t in scored_targets(dj, options)]
    return pd.DataFrame(rows, index=pd.Index(cases, name="case"), columns=columns)
