"""What both kinds of reference share: the raw cases they read and the percentile normalisation."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from pirl_pipeline.data.dataset_json import DatasetJson, RawCase, group_channel_files
from pirl_pipeline.data.image_io import Geometry
from pirl_pipeline.data.integrity import load_case
from pirl_pipeline.errors import PirlInputError

PERCENTILES = (0.5, 99.5)
MaskFn = Callable[[np.ndarray], np.ndarray]  # (C, z, y, x) channels of a case -> (z, y, x) bool brain mask
Cases = dict[str, dict[int, Path]]  # {case: {channel: image file}}


def check_kind(kind: str, kinds: tuple[str, ...]) -> None:
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


def read_case(case: str, files: dict[int, Path]) -> tuple[dict[int, np.ndarray], Geometry]:
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
