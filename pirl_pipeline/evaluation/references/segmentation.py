"""Segmentation (``out/CASE<ending>``, dataset label values):
- ``whole_brain``: every brain voxel (non-zero in any input channel) gets :func:`whole_brain_label`, the
  value inside the most label targets (BraTS regions: enhancing tumour, inside WT, TC and ET; plain labels:
  the lowest foreground label). TPR is 1 for every target holding that value (less only where the label
  map marks voxels outside the brain mask). With a CT channel (air -1000 HU, never exactly 0) that is every
  voxel of the image: on the 16 ``sts_pet_ct`` crops (PET + CT) FPR 1.000, Dice 0.035.
- ``threshold`` (:class:`ThresholdModel`): the lesion channel alone (:func:`lesion_channel`, by the channels'
  kinds: FLAIR, else T2, else PET, else the first), percentile-normalised inside its non-zero mask and
  thresholded. The threshold (grid 0..1.2 of the normalised intensity, step 0.01) and the cleanup (none, or
  keep the largest connected component) maximise the mean lesion Dice over the TRAINING cases. Lesion = every foreground
  label value (BraTS: whole tumour). Voxels above the threshold get :func:`lesion_label`, the value inside
  the fewest targets (BraTS: oedema, in WT only, so TC and ET stay empty; plain labels: the lowest
  foreground label). BraTS-2015 FLAIR, fitted on 2 expert-labelled cases, tested on the other 2 (both ways
  round): whole-tumour Dice 0.44 / 0.88 / 0.92 / 0.87, mean 0.78 (whole brain: 0.10-0.33).
- ``suv_threshold`` and ``suvmax_fraction`` (:class:`UptakeThreshold`, nothing fitted): the clinical PET
  rules on one channel (:func:`uptake_channel`: the PET one, by its kind) in the raw image's own units: lesion =
  channel >= an absolute value (FDG: SUV >= 2.5), or >= a fraction of the case's maximum of that channel over
  the whole image (41 % of SUVmax; on a crop around the tumour, the crop's maximum), and > 0 (an image without
  uptake has no lesion). No connected-component cleanup. Painted with :func:`lesion_label`. On the 16
  ``sts_pet_ct`` crops (PET grid, CT mask): mean Dice 0.603 (SUV >= 2.5) and 0.494 (41 % SUVmax); every
  tumour touched by both (CaseTPR 1).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from pirl_pipeline.data.dataset_json import DatasetJson, label_file_dtype
from pirl_pipeline.data.image_io import read_array, write_array
from pirl_pipeline.data.modalities import lesion_index, uptake_index
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.evaluation.missing_modalities import subset_name
from pirl_pipeline.evaluation.references.common import (
    Cases,
    MaskFn,
    check_kind,
    percentile_normalise,
    read_case,
)
from pirl_pipeline.evaluation.segmentation import segmentation_metrics
from pirl_pipeline.evaluation.translation import reference_mask
from pirl_pipeline.inference.postprocessing import largest_component

UPTAKE_KINDS = ("suv_threshold", "suvmax_fraction")
SEGMENTATION_KINDS = ("whole_brain", "threshold", *UPTAKE_KINDS)
CLEANUPS = ("none", "largest")
THRESHOLDS = tuple(np.round(np.arange(0.0, 1.2001, 0.01), 4).tolist())


def _region_counts(dj: DatasetJson) -> dict[int, int]:
    """{foreground value: number of label targets (regions, or plain labels) that contain it}."""
    if not dj.foreground_labels:
        raise PirlInputError("dataset.json declares no foreground label; a segmentation reference needs one")
    return {v: sum(v in r for r in dj.regions()) for v in dj.foreground_labels}


def whole_brain_label(dj: DatasetJson) -> int:
    """The value inside the most targets (ties: the lowest): BraTS enhancing tumour; plain labels: the first."""
    counts = _region_counts(dj)
    return min(counts, key=lambda v: (-counts[v], v))


def lesion_label(dj: DatasetJson) -> int:
    """The value inside the fewest targets (ties: the lowest): BraTS oedema (WT only); plain: the first."""
    counts = _region_counts(dj)
    return min(counts, key=lambda v: (counts[v], v))


def lesion_values(dj: DatasetJson) -> list[int]:
    """Every foreground label value: the "lesion" the threshold reference is fitted to (BraTS: WT)."""
    return dj.foreground_labels


def lesion_channel(dj: DatasetJson, channels: list[int] | None = None) -> int:
    """Among ``channels`` (default all), the one where lesions are brightest by its kind
    (``modalities.lesion_index``): FLAIR (T2f, T2-FLAIR), else T2, else PET, else the first."""
    channels = list(range(dj.num_channels)) if channels is None else list(channels)
    return channels[lesion_index([dj.channel_names[str(c)] for c in channels])]


@dataclass
class ThresholdModel:
    """Lesion = normalised ``channel`` > ``threshold`` inside the brain (then the largest component with
    cleanup "largest"), painted with ``label``; ``train_dice``: its mean lesion Dice on ``cases``."""

    channel: int
    threshold: float
    label: int
    cleanup: str
    train_dice: float
    cases: list[str]

    def lesion(self, images: dict[int, np.ndarray], mask_fn: MaskFn = reference_mask) -> np.ndarray:
        """The predicted lesion (bool) of a case's images ``{channel: (z, y, x)}``."""
        if self.channel not in images:
            raise PirlInputError(f"threshold reference: needs channel {self.channel:04d}, got {sorted(images)}")
        brain = np.asarray(mask_fn(images[self.channel][None]), bool)
        normalised, _, _ = percentile_normalise(images[self.channel], brain)
        lesion = (normalised > self.threshold) & brain
        return largest_component(lesion) if self.cleanup == "largest" else lesion

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ThresholdModel:
        return cls(**d)


@dataclass
class UptakeThreshold:
    """A clinical uptake rule (nothing fitted): lesion = ``channel`` >= ``value`` in the image's own units
    (``suv_threshold``), or >= ``value`` x the case's maximum of the channel (``suvmax_fraction``, 0 < value
    <= 1); only voxels > 0 count; painted with ``label``."""

    kind: str
    channel: int
    value: float
    label: int

    def __post_init__(self) -> None:
        check_kind(self.kind, UPTAKE_KINDS)
        if not (np.isfinite(self.value) and self.value > 0):
            raise PirlInputError(f"{self.kind}: the {self.what} must be a finite number > 0, got {self.value}")
        if self.kind == "suvmax_fraction" and self.value > 1:
            raise PirlInputError(f"suvmax_fraction: the fraction of the maximum must be in (0, 1], got {self.value}")

    @property
    def what(self) -> str:
        return "threshold" if self.kind == "suv_threshold" else "fraction"

    def cutoff(self, image: np.ndarray) -> float:
        """The value a voxel must reach in ``image``: ``value``, or ``value`` x its finite maximum."""
        if self.kind == "suv_threshold":
            return float(self.value)
        finite = np.asarray(image)[np.isfinite(image)]
        return float(self.value * finite.max()) if finite.size else float("inf")

    def lesion(self, images: dict[int, np.ndarray], mask_fn: MaskFn | None = None) -> np.ndarray:
        """The predicted lesion (bool) of a case's images ``{channel: (z, y, x)}`` (``mask_fn`` is not used:
        the rule covers the whole image)."""
        if self.channel not in images:
            raise PirlInputError(f"{self.kind} reference: needs channel {self.channel:04d}, got {sorted(images)}")
        image = np.asarray(images[self.channel])
        with np.errstate(invalid="ignore"):
            return (image >= self.cutoff(image)) & (image > 0) & np.isfinite(image)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> UptakeThreshold:
        return cls(**d)


def uptake_channel(dj: DatasetJson, channels: list[int] | None = None) -> int:
    """The channel an uptake rule reads: among ``channels`` (default all), the first of an uptake kind (named PET,
    SUV, PET_...: ``modalities.uptake_index``); a single given channel whatever its name. PirlInputError otherwise
    (an SUV cut-off on CT or MRI means nothing)."""
    channels = list(range(dj.num_channels)) if channels is None else list(channels)
    names = [dj.channel_names[str(c)] for c in channels]
    named = uptake_index(names)
    if named is not None:
        return channels[named]
    if len(channels) == 1:
        return channels[0]
    raise PirlInputError(f"an uptake reference reads one PET channel: none of {[n.strip().lower() for n in names]} is "
                         "a PET name (PET, PET_..., SUV, SUVbw, FDG-PET: data/modalities.py); pass the one channel "
                         "to threshold (pirl_reference --channels C)")


ReferenceModel = ThresholdModel | UptakeThreshold


def _check_model(kind: str, model: ReferenceModel | None) -> ReferenceModel:
    """``model`` when it is the one ``kind`` needs (threshold: ThresholdModel; uptake kinds: UptakeThreshold of
    that kind); ValueError otherwise."""
    if kind == "threshold" and isinstance(model, ThresholdModel):
        return model
    if kind in UPTAKE_KINDS and isinstance(model, UptakeThreshold) and model.kind == kind:
        return model
    need = "the ThresholdModel from fit_threshold" if kind == "threshold" else f"an UptakeThreshold of kind {kind!r}"
    raise ValueError(f"{kind} reference: pass {need}, got {type(model).__name__}")


def _dice_curve(normalised: np.ndarray, brain: np.ndarray, lesion: np.ndarray,
                thresholds: np.ndarray) -> np.ndarray:
    """Lesion Dice of ``(normalised > t) & brain`` for every threshold t (exact counts, one sort)."""
    inside = np.sort(normalised[brain & lesion])
    outside = np.sort(normalised[brain & ~lesion])
    tp = inside.size - np.searchsorted(inside, thresholds, side="right")
    fp = outside.size - np.searchsorted(outside, thresholds, side="right")
    fn = int(lesion.sum()) - tp
    den = 2 * tp + fp + fn
    return np.where(den == 0, 1.0, 2 * tp / np.maximum(den, 1))


class _LargestComponentDice:
    """Lesion Dice of ``largest_component((normalised > t) & brain)`` of one case, on the brain's bounding box."""

    def __init__(self, normalised: np.ndarray, brain: np.ndarray, lesion: np.ndarray) -> None:
        box = ndimage.find_objects(brain.astype(np.uint8))
        box = box[0] if box else tuple(slice(0, 0) for _ in brain.shape)
        self.normalised, self.brain = normalised[box].astype(np.float32), brain[box]
        self.lesion, self.lesion_total = lesion[box], int(lesion.sum())

    def __call__(self, threshold: float) -> float:
        predicted = largest_component((self.normalised > threshold) & self.brain)
        den = int(predicted.sum()) + self.lesion_total
        return 1.0 if den == 0 else 2 * int((predicted & self.lesion).sum()) / den


def _coarse_to_fine(score: Callable[[int], float], size: int, step: int = 5) -> np.ndarray:
    """Scores of grid indices: every ``step``-th, then every index within ``step`` of the best (NaN elsewhere)."""
    scores = np.full(size, np.nan)
    for k in range(0, size, step):
        scores[k] = score(k)
    best = int(np.nanargmax(scores))
    for k in range(max(0, best - step + 1), min(size, best + step)):
        if np.isnan(scores[k]):
            scores[k] = score(k)
    return scores


def fit_threshold(train_cases: Cases, labels: dict[str, Path], dj: DatasetJson, channel: int | None = None,
                  cleanup: str = "auto", mask_fn: MaskFn = reference_mask,
                  thresholds: tuple[float, ...] = THRESHOLDS) -> ThresholdModel:
    """The threshold (and cleanup: "none", "largest", or "auto" = the better of both on the training cases)
    maximising the mean lesion Dice over ``train_cases``; ``channel`` default :func:`lesion_channel`.

    "none" scores every threshold of the grid exactly; "largest" (a connected-component labelling per
    threshold) scores every 5th, then every threshold within 5 steps of the best of those.
    """
    if cleanup not in (*CLEANUPS, "auto"):
        raise ValueError(f"unknown cleanup {cleanup!r}; choose from {(*CLEANUPS, 'auto')}")
    channel = lesion_channel(dj) if channel is None else channel
    unlabeled = sorted(set(train_cases) - set(labels))
    if not train_cases or unlabeled:
        raise PirlInputError(f"fitting a threshold needs labelled training cases (no label: {unlabeled[:5]})")
    grid = np.asarray(thresholds, np.float64)
    cleanups = CLEANUPS if cleanup == "auto" else (cleanup,)
    exact, largest = [], []
    for case, files in sorted(train_cases.items()):
        if channel not in files:
            raise PirlInputError(f"training case {case}: no image for channel {channel:04d}")
        image = read_case(case, {channel: files[channel]})[0][channel]
        reference, _ = read_array(labels[case], np.int16)
        lesion = np.isin(reference, lesion_values(dj))
        brain = np.asarray(mask_fn(image[None]), bool)
        normalised, _, _ = percentile_normalise(image, brain)
        if "none" in cleanups:
            exact.append(_dice_curve(normalised, brain, lesion, grid))
        if "largest" in cleanups:
            largest.append(_LargestComponentDice(normalised, brain, lesion))
    scores = {}
    if "none" in cleanups:
        scores["none"] = np.mean(exact, axis=0)
    if "largest" in cleanups:
        scores["largest"] = _coarse_to_fine(lambda k: float(np.mean([f(grid[k]) for f in largest])), len(grid))
    # ties: "none" before "largest", then the lowest threshold
    choice = max(cleanups, key=lambda c: (np.nanmax(scores[c]), -cleanups.index(c)))
    k = int(np.nanargmax(scores[choice]))
    return ThresholdModel(channel, float(grid[k]), lesion_label(dj), choice, float(scores[choice][k]),
                          sorted(train_cases))


def segmentation_reference(kind: str, images: dict[int, np.ndarray], dj: DatasetJson,
                           model: ReferenceModel | None = None, mask_fn: MaskFn = reference_mask) -> np.ndarray:
    """The reference label map (uint8, or int16 for values above 255) of a case's ``{channel: image}``;
    ``model``: the ThresholdModel (threshold) or UptakeThreshold (suv_threshold, suvmax_fraction)."""
    check_kind(kind, SEGMENTATION_KINDS)
    if kind == "whole_brain":
        region, label = np.asarray(mask_fn(np.stack(list(images.values()))), bool), whole_brain_label(dj)
    else:
        model = _check_model(kind, model)
        region, label = model.lesion(images, mask_fn), model.label
    out = np.zeros(region.shape, label_file_dtype(max(dj.label_values, default=0)))
    out[region] = label
    return out


def _files_read(kind: str, case: str, files: dict[int, Path], model: ReferenceModel | None) -> dict[int, Path]:
    """The files a reference reads: every channel for whole_brain, the thresholded one otherwise."""
    if kind == "whole_brain":
        return files
    model = _check_model(kind, model)
    if model.channel not in files:
        raise PirlInputError(f"case {case}: no image for the thresholded channel {model.channel:04d}")
    return {model.channel: files[model.channel]}


def write_segmentation_references(kind: str, cases: Cases, out_folder: str | Path, dj: DatasetJson,
                                  model: ReferenceModel | None = None,
                                  mask_fn: MaskFn = reference_mask) -> list[Path]:
    """Write ``out/CASE<ending>`` for every case (pirl_predict's seg layout); returns the paths."""
    check_kind(kind, SEGMENTATION_KINDS)
    written = []
    for case, files in sorted(cases.items()):
        images, geometry = read_case(case, _files_read(kind, case, files, model))
        path = Path(out_folder) / f"{case}{dj.file_ending}"
        write_array(segmentation_reference(kind, images, dj, model, mask_fn), geometry, path)
        written.append(path)
    return written


def segmentation_reference_table(kind: str, cases: Cases, labels: dict[str, Path], dj: DatasetJson,
                                 model: ReferenceModel | None = None, mask_fn: MaskFn = reference_mask,
                                 distance_metrics: bool = False) -> pd.DataFrame:
    """One row per case, the columns of ``missing_modalities.segmentation_table``; ``subset`` names the
    channels the reference reads (all for whole_brain, the thresholded one otherwise). ``distance_metrics``:
    also HD95, NSD and the lesion-wise metrics, in mm of the label's spacing (as ``pirl_evaluate_missing``
    without ``--no_distance_metrics``)."""
    check_kind(kind, SEGMENTATION_KINDS)
    rows = []
    for case, files in sorted(cases.items()):
        if case not in labels:
            raise PirlInputError(f"case {case}: no reference label file")
        images, _ = read_case(case, _files_read(kind, case, files, model))
        reference, grid = read_array(labels[case], np.int16)
        prediction = segmentation_reference(kind, images, dj, model, mask_fn)
        spacing = grid.spacing if distance_metrics else None
        rows.append({"subset": subset_name(tuple(sorted(images)), dj), "case": case,
                     **segmentation_metrics(prediction, reference, dj, spacing=spacing)})
    return pd.DataFrame(rows)
