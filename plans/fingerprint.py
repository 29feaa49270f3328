"""Dataset fingerprint: what the planner needs to know about a raw dataset.

Per case: spacing and shape before and after cropping to non-zero. Per channel: foreground intensity
statistics from a bounded random sample of voxels (at most ``SAMPLES_PER_CASE`` per case). Foreground is
the labelled foreground when the case has a non-empty label (nnU-Net's choice, which CT normalisation
relies on), else the non-zero mask (image-only datasets). The same statistics over the whole non-zero
(body) mask are kept too: translation returns synthesised modalities in those units. The integrity checks run in the same pass, so
the raw data are read once for both; so do the warnings about degenerate cases (logged, grouped, and kept
under ``warnings`` in the fingerprint). Incomplete datasets (``allow_missing_channels``): ``channels_per_case``
lists the channels each case has; a channel's statistics come from the cases that have it, the crop and the
masks from the channels a case has; a channel no case has is an error.
"""
from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import numpy as np

from pirl_pipeline.data.dataset_json import DatasetJson, RawCase
from pirl_pipeline.data.geometry import bounding_box, crop, nonzero_mask
from pirl_pipeline.data.integrity import degenerate_warnings, load_case
from pirl_pipeline.data.modalities import modality_kind
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.parallel import parallel_map

log = logging.getLogger("pirl")
SAMPLES_PER_CASE = 10_000
FINGERPRINT_FILE = "dataset_fingerprint.json"


def case_fingerprint(case: RawCase, dj: DatasetJson, check: bool, seed: int = 1234) -> dict:
    """Read one case (checking it unless ``check`` is False) and summarise it; ``samples`` and ``body_samples``
    hold one array per channel of ``channels`` (those the case has)."""
    loaded = load_case(case, dj.label_values, check=check)
    mask = nonzero_mask(loaded.data)
    box = bounding_box(mask)
    foreground = loaded.label > 0 if loaded.label is not None and (loaded.label > 0).any() else mask
    foreground = crop(foreground, box)
    data = crop(loaded.data, box)
    rng = np.random.default_rng(seed)
    samples, body_samples = sample_voxels(data, foreground, rng), sample_voxels(data, crop(mask, box), rng)
    names = [dj.channel_names[str(c)] for c in range(dj.num_channels)]
    return {
        "warnings": degenerate_warnings(loaded.data, names, loaded.channels) if check else [],
        "name": case.name,
        "channels": list(loaded.channels),
        "spacing": list(loaded.geometry.spacing),
        "shape_before_cropping": list(loaded.geometry.shape),
        "shape_after_cropping": list(data.shape[1:]),
        "samples": samples,
        "body_samples": body_samples,
    }


def sample_voxels(data: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Per channel, the values of at most SAMPLES_PER_CASE random voxels of ``mask``."""
    flat_index = np.flatnonzero(mask)
    if flat_index.size > SAMPLES_PER_CASE:
        flat_index = rng.choice(flat_index, SAMPLES_PER_CASE, replace=False)
    return [channel.ravel()[flat_index] for channel in data]


def intensity_statistics(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {k: 0.0 for k in ("mean", "std", "median", "min", "max", "percentile_00_5", "percentile_99_5")}
    p005, median, p995 = np.percentile(values, [0.5, 50.0, 99.5])
    return {"mean": float(values.mean()), "std": float(values.std()), "median": float(median),
            "min": float(values.min()), "max": float(values.max()),
            "percentile_00_5": float(p005), "percentile_99_5": float(p995)}


def extract_fingerprint(cases: list[RawCase], dj: DatasetJson, num_processes: int = 2,
                        check: bool = True) -> dict:
    """Fingerprint of all cases (parallel over ``num_processes``); raises on the first bad case."""
    check_every_channel_present(cases, dj)
    work = partial(case_fingerprint, dj=dj, check=check)
    per_case = parallel_map(work, cases, num_processes, desc="fingerprint")
    warnings = log_warnings(per_case)

    def statistics(key: str) -> dict[str, dict[str, float]]:  # each channel over the cases that have it
        return {c: intensity_statistics(np.concatenate([pc[key][pc["channels"].index(int(c))] for pc in per_case
                                                        if int(c) in pc["channels"]]))
                for c in dj.channel_names}

    return {
        "channel_names": dj.channel_names,
        "modality_kinds": [modality_kind(dj.channel_names[str(i)]) for i in range(dj.num_channels)],
        "case_names": [pc["name"] for pc in per_case],
        "channels_per_case": [pc["channels"] for pc in per_case],
        "spacings": [pc["spacing"] for pc in per_case],
        "shapes_before_cropping": [pc["shape_before_cropping"] for pc in per_case],
        "shapes_after_cropping": [pc["shape_after_cropping"] for pc in per_case],
        "foreground_intensity_properties_per_channel": statistics("samples"),
        "nonzero_intensity_properties_per_channel": statistics("body_samples"),
        "samples_per_case": SAMPLES_PER_CASE,
        "warnings": warnings,
    }


def check_every_channel_present(cases: list[RawCase], dj: DatasetJson) -> None:
    """A declared channel that no case has cannot be normalised or learnt: an error naming it."""
    absent = sorted(set(range(dj.num_channels)) - {c for case in cases for c in case.channels})
    if absent and cases:
        shown = ", ".join(f"{c:04d} ({dj.channel_names[str(c)]})" for c in absent)
        raise PirlInputError(f"{cases[0].images[0].parent}: no case has channel(s) {shown}; remove them from "
                             "channel_names in dataset.json or add their images")


def log_warnings(per_case: list[dict]) -> dict[str, list[str]]:
    """Log each kind of degenerate-case warning once, naming its cases; returns ``{warning: [case, ...]}``."""
    grouped: dict[str, list[str]] = {}
    for pc in per_case:
        for warning in pc["warnings"]:
            grouped.setdefault(warning, []).append(pc["name"])
    for warning, names in grouped.items():
        shown = ", ".join(names[:8]) + (f" (+{len(names) - 8} more)" if len(names) > 8 else "")
        log.warning("%d case(s): %s: %s", len(names), warning, shown)
    return grouped


def fingerprint_path(preprocessed_folder: Path) -> Path:
    return Path(preprocessed_folder) / FINGERPRINT_FILE
