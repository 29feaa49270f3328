"""Trivial references, written and scored exactly like a model's predictions.

A metric means something only beside what a model that learned (almost) nothing scores. Each reference is
written in ``pirl_predict``'s layout (``pirl_evaluate`` scores the folder) and also scored directly in the
row format of :mod:`pirl_pipeline.evaluation.missing_modalities` (Table 10 / Table 11 layouts).

Translation (one source modality in, every other one out):
- ``identity``: the source volume, unchanged, is the prediction of every target.
- ``histogram``: a fitted intensity mapping (:class:`IntensityMapping`). On each TRAINING case, inside the
  brain mask, the source becomes its quantile (rank / count: robust to each scanner's intensity scale) and
  the target is percentile-normalised (0.5th -> 0, 99.5th -> 1, the evaluator's scale); 64 source-quantile
  bins each store the mean normalised target of their voxels, pooled over the training cases (a binned
  conditional mean, not forced monotone: it captures the T1 -> T2 inversion and non-monotone pairs such as
  T1 -> FLAIR alike). A test case uses its source only: its quantiles are mapped by linear interpolation
  between the bin centres, then the result is histogram-matched (rank for rank) to the training targets'
  mean quantile function and brought back to target units with their mean percentiles; 0 outside the
  source's non-zero mask (as ``pirl_predict`` writes translations). The test case's target is never read.
  Why the histogram matching: the evaluator scales every volume by its own percentiles, which stretches a
  conditional mean's compressed range. On the 8 real 4-modality BraTS cases (leave-one-out, all 12 pairs)
  percentile-scaled PSNR: identity 10.5 dB, conditional mean alone 9.7 dB, with histogram matching 13.7 dB
  (better than identity on every case and pair).
  Layout: ``out/source_SSSS/CASE_TTTT<ending>`` for every target TTTT != SSSS.
Segmentation (``out/CASE<ending>``, dataset label values):
- ``whole_brain``: every brain voxel (non-zero in any input channel) gets :func:`whole_brain_label`, the
  value inside the most label targets (BraTS regions: enhancing tumour, inside WT, TC and ET; plain labels:
  the lowest foreground label). TPR is 1 for every target holding that value (less only where the label
  map marks voxels outside the brain mask).
- ``threshold`` (:class:`ThresholdModel`): the lesion channel alone (:func:`lesion_channel`: FLAIR, else
  T2, else PET, else channel 0), percentile-normalised inside its non-zero mask and thresholded. The
  threshold (grid 0..1.2 of the normalised intensity, step 0.01) and the cleanup (none, or keep the largest
  connected component) maximise the mean lesion Dice over the TRAINING cases. Lesion = every foreground
  label value (BraTS: whole tumour). Voxels above the threshold get :func:`lesion_label`, the value inside
  the fewest targets (BraTS: oedema, in WT only, so TC and ET stay empty; plain labels: the lowest
  foreground label). BraTS-2015 FLAIR, fitted on 2 expert-labelled cases, tested on the other 2 (both ways
  round): whole-tumour Dice 0.44 / 0.88 / 0.92 / 0.87, mean 0.78 (whole brain: 0.10-0.33).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.stats import rankdata

from pirl_pipeline.data.dataset_json import DatasetJson, RawCase, group_channel_files
from pirl_pipeline.data.image_io import Geometry, read_array, write_array
from pirl_pipeline.data.integrity import load_case
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.evaluation.missing_modalities import subset_name
from pirl_pipeline.evaluation.segmentation import segmentation_metrics
from pirl_pipeline.evaluation.translation import channel_targets, reference_mask, translation_metrics

TRANSLATION_KINDS = ("identity", "histogram")
SEGMENTATION_KINDS = ("whole_brain", "threshold")
CLEANUPS = ("none", "largest")
PERCENTILES = (0.5, 99.5)
NUM_BINS = 64
QUANTILE_LEVELS = 201
THRESHOLDS = tuple(np.round(np.arange(0.0, 1.2001, 0.01), 4).tolist())
MaskFn = Callable[[np.ndarray], np.ndarray]  # (C, z, y, x) channels of a case -> (z, y, x) bool brain mask
Cases = dict[str, dict[int, Path]]  # {case: {channel: image file}}


def _check_kind(kind: str, kinds: tuple[str, ...]) -> None:
    if kind not in kinds:
        raise ValueError(f"unknown reference {kind!r}; choose from {kinds}")


def percentile_normalise(volume: np.ndarray, mask: np.ndarray,
                         percentiles: tuple[float, float] = PERCENTILES) -> tuple[np.ndarray, float, float]:
    """``(volume - p_low) / (p_high - p_low)`` in float64, percentiles inside ``mask``; returns the
    normalised volume and both percentiles (scale 1 when they coincide; (0, 1) for an empty mask)."""
    values = np.asarray(volume, np.float64)
    inside = values[np.asarray(mask, bool)]
    low, high = (np.percentile(inside, percentiles) if inside.size else (0.0, 1.0))
    scale = high - low if high > low else 1.0
    return (values - low) / scale, float(low), float(high)


def _read_case(case: str, files: dict[int, Path]) -> tuple[dict[int, np.ndarray], Geometry]:
    channels = sorted(files)
    loaded = load_case(RawCase(case, tuple(files[c] for c in channels)), None, check=True)
    return dict(zip(channels, loaded.data)), loaded.geometry


def raw_cases(dataset_folder: str | Path, dj: DatasetJson,
              names: list[str] | None = None) -> tuple[Cases, dict[str, Path]]:
    """``({case: {channel: imagesTr file}}, {case: labelsTr file})`` of a raw dataset, restricted to
    ``names`` (e.g. a split's train or val list) when given; cases without a label file have no entry."""
    folder = Path(dataset_folder)
    cases = group_channel_files(folder / "imagesTr", dj)
    if names is not None:
        unknown = sorted(set(names) - set(cases))
        if unknown:
            raise PirlInputError(f"{folder / 'imagesTr'}: no images for case(s) {', '.join(unknown[:5])}")
        cases = {n: cases[n] for n in names}
    labels = {n: folder / "labelsTr" / f"{n}{dj.file_ending}" for n in cases}
    return cases, {n: p for n, p in labels.items() if p.is_file()}


# ---- translation ----------------------------------------------------------------------------------------
def _quantiles(values: np.ndarray) -> np.ndarray:
    """Each value's quantile among ``values``: (mid-rank - 0.5) / count in (0, 1), ties sharing one."""
    return (rankdata(values) - 0.5) / max(values.size, 1)


@dataclass
class IntensityMapping:
    """Source -> target intensity mapping fitted on training cases (see the module docstring).

    values[k]: mean normalised target of the training voxels whose source quantile lies in bin k of
    ``len(values)`` equal bins over [0, 1] (NaN where ``counts[k] == 0``); target_quantiles: the training
    targets' mean quantile function (normalised units) at equally spaced levels 0..1; target_low/high: their
    mean 0.5th/99.5th percentiles (the output units).
    """

    source: int
    target: int
    values: list[float]
    counts: list[int]
    target_quantiles: list[float]
    target_low: float
    target_high: float
    cases: list[str]

    def apply(self, source: np.ndarray) -> np.ndarray:
        """The predicted target (float32) of a source volume; 0 outside its non-zero mask."""
        source = np.asarray(source)
        mask = (source != 0) & np.isfinite(source)
        counts, values = np.asarray(self.counts), np.asarray(self.values, np.float64)
        centres = (np.arange(len(values)) + 0.5) / len(values)
        mapped = np.interp(_quantiles(source[mask]), centres[counts > 0], values[counts > 0])
        levels = np.linspace(0, 1, len(self.target_quantiles))
        matched = np.interp(_quantiles(mapped), levels, self.target_quantiles)
        out = np.zeros(source.shape, np.float32)
        out[mask] = self.target_low + matched * (self.target_high - self.target_low)
        return out

    def to_dict(self) -> dict:
        return {**asdict(self), "values": [None if np.isnan(v) else v for v in self.values]}

    @classmethod
    def from_dict(cls, d: dict) -> IntensityMapping:
        return cls(**{**d, "values": [np.nan if v is None else float(v) for v in d["values"]]})


def fit_intensity_mappings(train_cases: Cases, pairs: list[tuple[int, int]], mask_fn: MaskFn = reference_mask,
                           num_bins: int = NUM_BINS) -> dict[tuple[int, int], IntensityMapping]:
    """One :class:`IntensityMapping` per (source, target) pair, each training case read once.

    ``mask_fn`` gets all channels of a training case (C, z, y, x) and returns its brain mask (default: the
    evaluator's reference mask, non-zero in any channel)."""
    if not train_cases:
        raise PirlInputError("fitting an intensity mapping needs at least one training case")
    levels = np.linspace(0, 1, QUANTILE_LEVELS)
    sums = {p: np.zeros(num_bins) for p in pairs}
    counts = {p: np.zeros(num_bins, np.int64) for p in pairs}
    targets: dict[tuple[int, int], list[tuple[np.ndarray, float, float]]] = {p: [] for p in pairs}
    for case, files in sorted(train_cases.items()):
        missing = sorted({c for p in pairs for c in p} - set(files))
        if missing:
            raise PirlInputError(f"training case {case}: no image for channel(s) {missing}")
        images, _ = _read_case(case, files)
        mask = np.asarray(mask_fn(np.stack(list(images.values()))), bool)
        if not mask.any():
            raise PirlInputError(f"training case {case}: empty brain mask")
        quantiles, normalised = {}, {}  # per channel, inside the mask
        for c in sorted({c for p in pairs for c in p}):
            inside = images[c][mask].astype(np.float64)
            quantiles[c] = _quantiles(inside)
            y, low, high = percentile_normalise(inside, np.ones(inside.shape, bool))
            normalised[c] = (y, np.quantile(y, levels), low, high)
        for source, target in pairs:
            bins = np.clip(np.floor(quantiles[source] * num_bins).astype(np.int64), 0, num_bins - 1)
            sums[source, target] += np.bincount(bins, weights=normalised[target][0], minlength=num_bins)
            counts[source, target] += np.bincount(bins, minlength=num_bins)
            targets[source, target].append(normalised[target][1:])
    mappings = {}
    for p in pairs:
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.where(counts[p] > 0, sums[p] / counts[p], np.nan)
        quantile_fn, lows, highs = zip(*targets[p])
        mappings[p] = IntensityMapping(p[0], p[1], values.tolist(), counts[p].tolist(),
                                       np.mean(quantile_fn, axis=0).tolist(), float(np.mean(lows)),
                                       float(np.mean(highs)), sorted(train_cases))
    return mappings


def fit_intensity_mapping(train_cases: Cases, source: int, target: int, mask_fn: MaskFn = reference_mask,
                          num_bins: int = NUM_BINS) -> IntensityMapping:
    """The :class:`IntensityMapping` of one (source, target) pair (see :func:`fit_intensity_mappings`)."""
    return fit_intensity_mappings(train_cases, [(source, target)], mask_fn, num_bins)[source, target]


def all_pairs(num_channels: int) -> list[tuple[int, int]]:
    """Every ordered (source, target) pair of distinct channels, source-major (the Table-10 order)."""
    return [(s, t) for s in range(num_channels) for t in range(num_channels) if s != t]


def translation_reference(kind: str, source_image: np.ndarray, source: int, target: int,
                          mappings: dict[tuple[int, int], IntensityMapping] | None = None) -> np.ndarray:
    """The reference prediction (float32) of ``target`` from the ``source`` channel's image alone."""
    _check_kind(kind, TRANSLATION_KINDS)
    if kind == "identity":
        return np.array(source_image, np.float32)
    if not mappings or (source, target) not in mappings:
        raise ValueError(f"histogram reference: no fitted mapping for channel {source} -> {target}")
    return mappings[source, target].apply(source_image)


def write_translation_references(kind: str, cases: Cases, out_folder: str | Path, dj: DatasetJson,
                                 mappings: dict[tuple[int, int], IntensityMapping] | None = None,
                                 sources: list[int] | None = None) -> dict[int, Path]:
    """Write ``out/source_SSSS/CASE_TTTT<ending>`` (every target TTTT != SSSS, on the source's grid) for
    each source channel (default: all); returns ``{source: folder}``, each a pirl_predict-style folder."""
    _check_kind(kind, TRANSLATION_KINDS)
    sources = list(range(dj.num_channels)) if sources is None else sources
    folders = {}
    for source in sources:
        folder = Path(out_folder) / f"source_{source:04d}"
        for case, files in sorted(cases.items()):
            if source not in files:
                raise PirlInputError(f"case {case}: no image for source channel {source:04d}")
            image, geometry = read_array(files[source])
            for target in range(dj.num_channels):
                if target != source:
                    prediction = translation_reference(kind, image, source, target, mappings)
                    write_array(prediction, geometry, folder / f"{case}_{target:04d}{dj.file_ending}")
        folders[source] = folder
    return folders


def translation_reference_table(kind: str, cases: Cases, dj: DatasetJson,
                                mappings: dict[tuple[int, int], IntensityMapping] | None = None) -> pd.DataFrame:
    """One row per (source, target, case), the columns of ``missing_modalities.translation_table``."""
    _check_kind(kind, TRANSLATION_KINDS)
    names = channel_targets(dj)
    rows = []
    for case, files in sorted(cases.items()):
        if len(files) != dj.num_channels:
            raise PirlInputError(f"case {case}: the translation table needs all {dj.num_channels} channels")
        images, _ = _read_case(case, files)
        reference = np.stack([images[c] for c in range(dj.num_channels)])
        mask = reference_mask(reference)
        for source, target in all_pairs(dj.num_channels):
            prediction = translation_reference(kind, reference[source], source, target, mappings)
            metrics = translation_metrics(prediction, reference[target], mask, ["x"])
            rows.append({"source": names[source], "target": names[target], "case": case,
                         **{k.split("/")[0]: v for k, v in metrics.items()}})
    return pd.DataFrame(rows)


# ---- segmentation ---------------------------------------------------------------------------------------
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


def lesion_channel(dj: DatasetJson) -> int:
    """The channel where lesions are brightest: FLAIR (t2f), else T2, else PET, else channel 0."""
    names = {c: dj.channel_names[str(c)].strip().lower() for c in range(dj.num_channels)}
    for wanted in (("flair", "t2f"), ("t2",), ("pet", "suv")):
        for c, name in names.items():
            if any(w in name for w in wanted):
                return c
    return 0


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a boolean mask (the empty mask stays empty)."""
    components, count = ndimage.label(mask)
    if count <= 1:
        return components > 0
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


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
        image = _read_case(case, {channel: files[channel]})[0][channel]
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
                           model: ThresholdModel | None = None, mask_fn: MaskFn = reference_mask) -> np.ndarray:
    """The reference label map (uint8, or int16 for values above 255) of a case's ``{channel: image}``."""
    _check_kind(kind, SEGMENTATION_KINDS)
    if kind == "whole_brain":
        region, label = np.asarray(mask_fn(np.stack(list(images.values()))), bool), whole_brain_label(dj)
    else:
        if model is None:
            raise ValueError("threshold reference: pass the ThresholdModel from fit_threshold")
        region, label = model.lesion(images, mask_fn), model.label
    out = np.zeros(region.shape, np.uint8 if max(dj.label_values) < 256 else np.int16)
    out[region] = label
    return out


def _files_read(kind: str, case: str, files: dict[int, Path], model: ThresholdModel | None) -> dict[int, Path]:
    """The files a reference reads: every channel for whole_brain, the thresholded one for threshold."""
    if kind == "whole_brain":
        return files
    if model is None:
        raise ValueError("threshold reference: pass the ThresholdModel from fit_threshold")
    if model.channel not in files:
        raise PirlInputError(f"case {case}: no image for the thresholded channel {model.channel:04d}")
    return {model.channel: files[model.channel]}


def write_segmentation_references(kind: str, cases: Cases, out_folder: str | Path, dj: DatasetJson,
                                  model: ThresholdModel | None = None,
                                  mask_fn: MaskFn = reference_mask) -> list[Path]:
    """Write ``out/CASE<ending>`` for every case (pirl_predict's seg layout); returns the paths."""
    _check_kind(kind, SEGMENTATION_KINDS)
    written = []
    for case, files in sorted(cases.items()):
        images, geometry = _read_case(case, _files_read(kind, case, files, model))
        path = Path(out_folder) / f"{case}{dj.file_ending}"
        write_array(segmentation_reference(kind, images, dj, model, mask_fn), geometry, path)
        written.append(path)
    return written


def segmentation_reference_table(kind: str, cases: Cases, labels: dict[str, Path], dj: DatasetJson,
                                 model: ThresholdModel | None = None,
                                 mask_fn: MaskFn = reference_mask) -> pd.DataFrame:
    """One row per case, the columns of ``missing_modalities.segmentation_table``; ``subset`` names the
    channels the reference reads (all for whole_brain, the thresholded one for threshold)."""
    _check_kind(kind, SEGMENTATION_KINDS)
    rows = []
    for case, files in sorted(cases.items()):
        if case not in labels:
            raise PirlInputError(f"case {case}: no reference label file")
        images, _ = _read_case(case, _files_read(kind, case, files, model))
        reference, _ = read_array(labels[case], np.int16)
        prediction = segmentation_reference(kind, images, dj, model, mask_fn)
        rows.append({"subset": subset_name(tuple(sorted(images)), dj), "case": case,
                     **segmentation_metrics(prediction, reference, dj)})
    return pd.DataFrame(rows)
