"""Integrity checks shared by the converters, the fingerprint and prediction.

Each check raises PirlInputError naming the offending file: channels and label on one grid, label values
declared in dataset.json, no NaN/Inf in images, no all-zero image. :func:`degenerate_warnings` lists what is
valid but almost certainly not meant (a constant channel, a tiny image, MRI without a zero background, CT not in
Hounsfield units, PET not in SUV). A case
of an incomplete dataset is checked on the channels it has (an absent channel has no file; an all-zero file is
still refused, so nothing that looks like data can stand for a missing channel).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel
import numpy as np
import SimpleITK as sitk

from pirl_pipeline.data.dataset_json import MAX_LABEL, RawCase
from pirl_pipeline.data.image_io import Geometry, read_image
from pirl_pipeline.data.modalities import modality
from pirl_pipeline.errors import PirlInputError

MIN_SIDE = 8  # an image with fewer voxels along an axis is warned about (and refused by the demo generator)


def check_same_grid(reference: Geometry, reference_path: Path, other: Geometry, other_path: Path) -> None:
    problem = reference.matches(other)
    if problem:
        raise PirlInputError(f"{other_path}: not on the grid of {Path(reference_path).name} ({problem})")


def check_finite(array: np.ndarray, path: Path) -> None:
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise PirlInputError(f"{path}: contains {bad} NaN/Inf voxel(s)")


def check_nifti_finite(path: Path, image: sitk.Image) -> None:
    """NaN/Inf check on the values stored in a float NIfTI file.

    SimpleITK's NIfTI reader (ITK 5.4) silently turns NaN and Inf into 0, so the array it returns cannot
    show them; nibabel reads the stored values (integer files cannot hold NaN and are not re-read).
    """
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64) and path.name.endswith((".nii", ".nii.gz")):
        check_finite(np.asanyarray(nibabel.load(path).dataobj), path)


def check_not_empty(array: np.ndarray, path: Path) -> None:
    if not array.any():
        raise PirlInputError(f"{path}: every voxel is 0 (an empty image)")


def degenerate_warnings(data: Sequence[np.ndarray], channel_names: list[str],
                        channels: Sequence[int] | None = None) -> list[str]:
    """What is odd about a valid case (its channels, each (z, y, x)), one short text each, case name not
    included: a channel constant inside the non-zero region (stored with std 0, it normalises to 0), a side
    under MIN_SIDE voxels, or MRI without a single 0 voxel (z-scored or not skull-stripped: the crop to the
    non-zero region and the body mask then do nothing). Modality-aware (each name's kind, ``data/modalities.py``):
    the zero-background rule is MRI's alone (CT air is -1000 HU and PET background is near 0, not 0: no zero is
    expected there); CT without a value between -1000 and 0 (no fat, no lung; -1000 itself may be padding) is not
    in Hounsfield units (the rescale intercept not applied?), PET above SUV_PLAUSIBLE_MAX is not SUV (Bq/ml?), and
    their normalisation relies on these units being the same in every case (``Modality.units_warning``).
    ``channels``: the dataset channel index of each array (default 0, 1, ...), which indexes ``channel_names``;
    only these channels are looked at."""
    found = []
    channels = list(range(len(data))) if channels is None else list(channels)
    kinds = {c: modality(channel_names[c]) for c in channels}
    body = np.logical_or.reduce([channel != 0 for channel in data])
    for c, channel in zip(channels, data, strict=True):
        values = channel[body]
        if values.size and values.min() == values.max():
            found.append(f"channel {c} ({channel_names[c]}) is constant inside the non-zero region "
                         "(std 0: it normalises to 0)")
        elif kinds[c].units_warning and (problem := kinds[c].units_warning(channel)):
            found.append(f"channel {c} ({channel_names[c]}) {problem}")
    if min(body.shape) < MIN_SIDE:
        found.append(f"image of {'x'.join(map(str, body.shape))} voxels (< {MIN_SIDE} along an axis)")
    if body.all() and all(kinds[c].zero_background for c in channels):
        found.append("no voxel is 0 in any channel (z-scored or not skull-stripped?): the crop to the non-zero "
                     "region and the body mask do nothing; zero the background first (pirl_convert_folder --mask)")
    return found


def check_label_values(label: np.ndarray, path: Path, allowed: set[int]) -> None:
    values = np.unique(label)
    if not np.all(np.equal(np.mod(values, 1), 0)):
        raise PirlInputError(f"{path}: label map has non-integer values")
    unknown = sorted({int(v) for v in values} - allowed)
    if unknown:
        raise PirlInputError(f"{path}: label value(s) {unknown} not declared in dataset.json "
                             f"(declared: {sorted(allowed)})")


@dataclass
class LoadedCase:
    """A raw case in memory: the images it has stacked (K, z, y, x) float32, ``channels`` (K,) their dataset
    channel indices (all of them, 0..C-1, for a complete case), label (z, y, x) or None.

    The one place that says how a case with missing channels looks in memory: ``data`` holds only the
    present channels; :meth:`full` places them in the dataset's (C, z, y, x) layout.
    """

    name: str
    data: np.ndarray
    label: np.ndarray | None
    geometry: Geometry
    channels: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels) or tuple(range(len(self.data)))

    def full(self, num_channels: int, fill: float = 0.0) -> np.ndarray:
        """(num_channels, z, y, x) float32: the present channels at their indices, ``fill`` in the absent ones
        (``data`` itself when nothing is missing)."""
        if self.channels == tuple(range(num_channels)):
            return self.data
        out = np.full((num_channels, *self.data.shape[1:]), fill, np.float32)
        out[list(self.channels)] = self.data
        return out


def load_case(case: RawCase, allowed_labels: set[int] | None, check: bool = True) -> LoadedCase:
    """Read the channels a case has and its label; with ``check`` verify grids (among the present channels and
    the label), finiteness, non-empty images and label values."""
    arrays, reference = [], None
    for path in case.images:
        image = read_image(path)
        geometry = Geometry.of(image)
        if reference is None:
            reference = geometry
        elif check:
            check_same_grid(reference, case.images[0], geometry, path)
        elif geometry.shape != reference.shape:
            raise PirlInputError(f"{path}: shape {geometry.shape} differs from {case.images[0].name}")
        array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
        if check:
            check_finite(array, path)
            check_nifti_finite(Path(path), image)
            check_not_empty(array, path)
        arrays.append(array)
    label = None
    if case.label is not None:
        image = read_image(case.label)
        if check:
            check_same_grid(reference, case.images[0], Geometry.of(image), case.label)
        label = sitk.GetArrayFromImage(image)
        if check and allowed_labels is not None:
            check_label_values(label, case.label, allowed_labels)
        elif label.size and not 0 <= label.min() <= label.max() <= MAX_LABEL:  # int16 below must not wrap
            raise PirlInputError(f"{case.label}: label values {label.min():g}..{label.max():g} outside 0..{MAX_LABEL}")
        label = label.astype(np.int16, copy=False)
    return LoadedCase(case.name, np.stack(arrays), label, reference, case.channels)
