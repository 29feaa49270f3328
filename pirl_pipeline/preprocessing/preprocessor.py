"""Preprocess one case for a plans configuration, and run it over a dataset (parallel, resumable).

On disk, per case in ``$PIRL_preprocessed/DatasetXXX_Name/<data_identifier>/``:
- ``CASE.npy``: float32 (C, z, y, x), cropped, normalised, resampled (memory-mappable);
- ``CASE_seg.npy``: (1, z, y, x) in ``seg_dtype`` of the largest declared label (int8 up to 127, else int16):
  label values, -1 outside the non-zero mask (also for image-only datasets, where it is the foreground mask of
  the decomposition loss); a finished case stored in another dtype is redone;
- ``CASE.json``: geometry to restore the original image, crop box, shapes, normalisation parameters,
  foreground-class voxel locations for oversampling, and the plans fingerprint it was made with.
A case that lacks channels (``allow_missing_channels``) is cropped to the non-zero box of the channels it has,
which alone are normalised and resampled; every absent channel is stored as NaN in ``CASE.npy`` (never zeros
that would look like data) and ``CASE.json`` gets ``channels_present`` (written only for such a case, so the
files of a complete case are what they always were).
Every file is written atomically and verified (``file_io``); ``CASE.json`` comes last: its presence (with a
matching plans fingerprint and readable arrays) marks a finished case, which a rerun skips. A rerun first
removes the temp files an interrupted (kill -9) run left (``file_io.remove_stale``).
"""
from __future__ import annotations

import hashlib
import json
import logging
from functools import partial
from pathlib import Path

import numpy as np

from pirl_pipeline.data.dataset_json import RawCase, seg_dtype
from pirl_pipeline.data.geometry import crop_to_nonzero, shape_for_spacing
from pirl_pipeline.data.integrity import load_case
from pirl_pipeline.file_io import load_json, make_dirs, remove_stale, save_json, save_npy
from pirl_pipeline.parallel import parallel_map
from pirl_pipeline.preprocessing.normalization import normalize_channel
from pirl_pipeline.preprocessing.resampling import resample
from plans.plans_manager import ConfigurationPlans, Plans

log = logging.getLogger("pirl")
LOCATIONS_PER_CLASS = 10_000


def plans_fingerprint(plans: Plans, config: ConfigurationPlans) -> str:
    """Hash of what determines a preprocessed case; a change invalidates finished cases."""
    relevant = {"config": {k: getattr(config, k) for k in ("spacing", "normalization_schemes",
                                                          "use_mask_for_norm", "resampling")},
                "intensity": plans.foreground_intensity_properties_per_channel}
    return hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def class_locations(seg: np.ndarray, classes: list[int], rng: np.random.Generator) -> dict[str, list]:
    """Up to LOCATIONS_PER_CLASS (z, y, x) voxel positions of each foreground class, for oversampling."""
    flat = seg.ravel()
    out = {}
    for c in classes:
        index = np.flatnonzero(flat == c)
        if index.size > LOCATIONS_PER_CLASS:
            index = np.sort(rng.choice(index, LOCATIONS_PER_CLASS, replace=False))
        out[str(c)] = np.stack(np.unravel_index(index, seg.shape), 1).tolist() if index.size else []
    return out


def preprocess_arrays(data: np.ndarray, seg: np.ndarray | None, spacing: tuple[float, ...], plans: Plans,
                      config: ConfigurationPlans, channels: list[int] | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Crop, normalise, resample in-memory arrays (also used by prediction). Returns data, seg, properties.

    ``channels``: the channels actually present (prediction with missing modalities); the others must be
    all-zero in ``data`` and stay 0, un-normalised.
    """
    shape_before = list(data.shape[1:])
    data, seg, box = crop_to_nonzero(data, seg)
    mask = seg >= 0
    norm_params: list[dict | None] = []
    for c in range(data.shape[0]):
        if channels is not None and c not in channels:
            norm_params.append(None)
            continue
        props = plans.foreground_intensity_properties_per_channel[str(c)]
        data[c], params = normalize_channel(data[c], config.normalization_schemes[c], mask, props,
                                            config.use_mask_for_norm[c])
        norm_params.append(params)
    new_shape = shape_for_spacing(data.shape[1:], spacing, config.spacing)
    shape_after_crop = list(data.shape[1:])
    target = tuple(config.spacing)
    order, threshold = config.resampling["data_order"], config.resampling["anisotropy_threshold"]
    data = resample(data, new_shape, False, spacing, order, target, threshold).astype(np.float32, copy=False)
    seg = resample(seg, new_shape, True, spacing, target_spacing=target, anisotropy_threshold=threshold)
    properties = {"shape_before_cropping": shape_before, "bbox_used_for_cropping": box,
                  "shape_after_cropping_and_before_resampling": shape_after_crop,
                  "spacing_before_resampling": list(spacing), "spacing_after_resampling": list(config.spacing),
                  "normalization": norm_params}
    return data, seg, properties


def _case_is_done(out: Path, name: str, fingerprint: str, channels_present: list[int] | None,
                  dtype: np.dtype) -> bool:
    props_file = out / f"{name}.json"
    if not props_file.is_file():
        return False
    try:
        props = load_json(props_file)
        shape = np.load(out / f"{name}.npy", mmap_mode="r").shape
        seg = np.load(out / f"{name}_seg.npy", mmap_mode="r")
    except (OSError, ValueError):
        return False
    return (props.get("plans_fingerprint") == fingerprint and shape[1:] == seg.shape[1:] and seg.dtype == dtype
            and props.get("channels_present") == channels_present)


def preprocess_case(case: RawCase, plans: Plans, config: ConfigurationPlans, out: Path, labels: set[int],
                    foreground_classes: list[int], fingerprint: str) -> str:
    """Preprocess and save one case; returns 'skipped' or 'done'."""
    num_channels = len(config.normalization_schemes)
    present = None if case.channels == tuple(range(num_channels)) else list(case.channels)
    dtype = seg_dtype(max(labels, default=0))
    if _case_is_done(out, case.name, fingerprint, present, dtype):
        return "skipped"
    loaded = load_case(case, labels, check=False)  # checked during the fingerprint pass
    data, seg, props = preprocess_arrays(loaded.full(num_channels), loaded.label, loaded.geometry.spacing, plans,
                                         config, present)
    if present is not None:  # absent channels: NaN, so they can never pass for data
        data[[c for c in range(num_channels) if c not in present]] = np.nan
        props["channels_present"] = present
    rng = np.random.default_rng(int(hashlib.sha1(case.name.encode()).hexdigest()[:8], 16))
    props.update({"case": case.name, "geometry": loaded.geometry.to_dict(), "has_label": loaded.label is not None,
                  "class_locations": class_locations(seg, foreground_classes, rng),
                  "plans_fingerprint": fingerprint})
    save_npy(data, out / f"{case.name}.npy")
    save_npy(seg[None].astype(dtype), out / f"{case.name}_seg.npy")
    save_json(props, out / f"{case.name}.json", indent=None)
    return "done"


def preprocess_dataset(cases: list[RawCase], plans: Plans, configuration: str, preprocessed_folder: Path,
                       labels: set[int], num_processes: int = 2) -> dict[str, int]:
    """Preprocess every case (skipping finished ones); returns counts of 'done' and 'skipped'."""
    config = plans.configuration(configuration)
    out = make_dirs(Path(preprocessed_folder) / config.data_identifier)
    remove_stale(out)
    foreground = sorted(v for v in labels if v > 0)
    work = partial(preprocess_case, plans=plans, config=config, out=out, labels=labels,
                   foreground_classes=foreground, fingerprint=plans_fingerprint(plans, config))
    status = parallel_map(work, cases, num_processes, desc="preprocess")
    return {s: status.count(s) for s in ("done", "skipped")}
