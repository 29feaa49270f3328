"""What every converter shares: the command-line output options and a safe writer for one raw dataset.

``RawDatasetWriter`` writes ``DatasetXXX_Name/{imagesTr,labelsTr,imagesTs,labelsTs}`` into a hidden temp
folder beside the target, checks every case as it writes it (channels and label on one grid, no NaN/Inf,
no all-zero image, complete files, label values expected; odd cases are warned about), writes every file
verified (``file_io``) and ``dataset.json`` last, re-reads the result with the pipeline's own reader, and
only then renames the folder into place. A failed conversion therefore leaves nothing behind; the temp
folder a killed one left is removed by the next conversion of the same dataset.

Unlabelled cases (rule of ``split_labeled``): when some cases of a source have labels, the labelled ones go
to ``imagesTr``/``labelsTr`` and the unlabelled ones to ``imagesTs`` (a warning names them), so every
training case has its label, as nnU-Net requires; when no case has a label, all go to ``imagesTr`` and the
dataset is image-only (no ``labelsTr``), ready for pre-training and translation. ``skip_labels`` (a
converter's ``--no-labels``) makes any source image-only: every case in ``imagesTr``, no label read.

Channels on different grids (``resample_to``, a converter's ``--resample_to CHANNEL``): every channel, the label
and the mask of a case are resampled onto the grid of that channel (rules and refusals: ``resample``); each
resampling is logged per case and recorded in ``conversion.json`` beside ``dataset.json`` (source files, their
grids, method, coverage, label volumes), so a prediction on the written grid can be traced back to the sources.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Self

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from dataset_conversion.resample import METHOD, OntoGrid
from pirl_pipeline.data.dataset_json import (
    MAX_CASE_NAME_BYTES,
    DatasetJson,
    channel_file_name,
    check_case_name,
    check_printable,
    label_file_dtype,
    list_cases,
    load_dataset_json,
    parse_dataset_json,
)
from pirl_pipeline.data.image_io import Geometry, read_image, write_array
from pirl_pipeline.data.integrity import (
    check_finite,
    check_label_values,
    check_nifti_finite,
    check_not_empty,
    degenerate_warnings,
)
from pirl_pipeline.data.modalities import modality_kind
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.file_io import make_dirs, os_reason, remove_stale, save_json, temp_name
from pirl_pipeline.paths import dataset_folder_name, raw_root

log = logging.getLogger(__name__)
FILE_ENDING = ".nii.gz"
CONVERSION_RECORD = "conversion.json"  # beside dataset.json, written when channels were resampled
_NOT_IN_CASE_NAME = re.compile(r"[^A-Za-z0-9_-]+")


def sanitise_case_name(text: str) -> str:
    """Keep letters, digits, '_' and '-'; every other run of characters becomes one '-' (logged)."""
    name = _NOT_IN_CASE_NAME.sub("-", text).strip("-_") or "case"
    if name != text:
        log.warning("case %r is written as %s (case names keep ASCII letters, digits, '_' and '-')", text, name)
    return name


def reachable(path: Path) -> Path:
    """``path`` when its name is printable and it can be followed; a broken link or a link loop is a
    PirlInputError naming it (a case behind it would otherwise be skipped without a word)."""
    check_printable(path)
    try:
        path.stat()
    except OSError as err:
        raise PirlInputError(f"{path}: cannot be followed ({os_reason(err)}; a broken link or a link loop)") from None
    return path


def case_folders(folder: Path) -> list[Path]:
    """The visible sub-folders of ``folder``, sorted, links followed (each checked by :func:`reachable`)."""
    return [p for p in sorted(folder.iterdir()) if not p.name.startswith(".") and reachable(p).is_dir()]


def add_output_arguments(parser: argparse.ArgumentParser, default_name: str | None = None,
                         default_id: int | None = None, name_flags: Sequence[str] = ("-n", "--name")) -> None:
    """-d/--dataset_id, -n/--name, -o/--output_root and --overwrite, the same for every converter."""
    parser.add_argument("-d", "--dataset_id", type=int, default=default_id, required=default_id is None,
                        help="dataset id 1-999: writes Dataset{ID:03d}_{NAME}"
                        + (f" (default {default_id})" if default_id else ""))
    parser.add_argument(*name_flags, dest="name", default=default_name, required=default_name is None,
                        help="dataset name" + (f" (default {default_name})" if default_name else ""))
    parser.add_argument("-o", "--output_root", type=Path, default=None,
                        help="raw-data root (default: $PIRL_raw, else ./pirl_data/raw)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")


@dataclass(frozen=True)
class SourceCase:
    """One case as found in a source folder: channel files in output order, optional label and mask.

    ``label_map`` lists every label value allowed in the source and the value it becomes; None keeps
    the values (they are then checked against the declared labels, or collected when none are declared).
    """

    name: str
    images: tuple[Path, ...]
    label: Path | None = None
    mask: Path | None = None
    label_map: Mapping[int, int] | None = None

    def __post_init__(self) -> None:  # names are checked where they arrive, before any file is read
        files = [p for p in (*self.images, self.label, self.mask) if p is not None]
        for path in files:
            check_printable(path)
        check_case_name(self.name, files[0].parent if files else self.name)


def split_labeled(cases: Sequence[SourceCase]) -> list[tuple[SourceCase, str]]:
    """Pair each case with 'Tr' or 'Ts' following the unlabelled-cases rule of the module docstring."""
    if not any(c.label for c in cases):
        return [(c, "Tr") for c in cases]
    unlabelled = [c.name for c in cases if not c.label]
    if unlabelled:
        log.warning("%d case(s) without a label go to imagesTs, not imagesTr: %s (use --no-labels, where the "
                    "converter has it, for an image-only dataset of all cases)", len(unlabelled),
                    ", ".join(unlabelled))
    return [(c, "Tr" if c.label else "Ts") for c in cases]


def remap_labels(label: np.ndarray, path: Path, mapping: Mapping[int, int]) -> np.ndarray:
    """Map source label values to output values; a value not in ``mapping`` is an error naming ``path``."""
    values = _integer_values(label, path)
    unknown = sorted(values - set(mapping))
    if unknown:
        raise PirlInputError(f"{path}: label value(s) {unknown} not expected (expected {sorted(mapping)})")
    out = np.zeros(label.shape, label_file_dtype(max(mapping.values(), default=0)))
    for source, target in mapping.items():
        if target and source in values:
            out[label == source] = target
    return out


def _integer_values(label: np.ndarray, path: Path) -> set[int]:
    values = np.unique(label)
    if not np.all(np.isfinite(values)) or not np.all(np.mod(values, 1) == 0):
        bad = values[~np.isfinite(values) | (np.mod(values, 1) != 0)]
        raise PirlInputError(f"{path}: label map has non-integer values ({bad.size} distinct, e.g. "
                             f"{', '.join(f'{v:g}' for v in bad[:3])}); a label map holds integers "
                             "(stored as integers or as integer-valued floats)")
    if values.size and (values.min() < 0 or values.max() > 255):
        raise PirlInputError(f"{path}: label values must lie in 0..255, found {values.min()}..{values.max()}")
    return {int(v) for v in values}


class RawDatasetWriter:
    """Context manager writing one raw dataset; on success it appears at once, on error not at all.

    ``labels`` are the dataset.json labels; None means "collect the values found" (background=0 plus
    label_K for each value K). ``source`` (the folder converted) is never written into. ``resample_to``: the
    channel name whose grid every file of a case is resampled onto (None: all must share one grid).
    """

    def __init__(self, dataset_id: int, name: str, channel_names: Sequence[str],
                 labels: dict[str, int | list[int]] | None = None, *, source: Path | None = None,
                 root: Path | None = None, overwrite: bool = False,
                 regions_class_order: list[int] | None = None, extra: dict | None = None,
                 resample_to: str | None = None) -> None:
        if not 1 <= dataset_id <= 999:
            raise PirlInputError(f"dataset id {dataset_id}: must be 1..999")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name) or len(name) > MAX_CASE_NAME_BYTES:
            raise PirlInputError(f"dataset name {name!r}: use letters, digits, '_' and '-' only, at most "
                                 f"{MAX_CASE_NAME_BYTES} of them")
        self.root = Path(root) if root is not None else raw_root()
        if self.root.exists() and not self.root.is_dir():
            raise PirlInputError(f"{self.root}: exists and is not a folder (the raw-data root, -o/--output_root)")
        self.target = self.root / dataset_folder_name(dataset_id, name)
        parse_dataset_json({"channel_names": {str(i): n for i, n in enumerate(channel_names)},
                            "labels": labels or {"background": 0}, "numTraining": 0, "file_ending": FILE_ENDING,
                            **({"regions_class_order": regions_class_order} if regions_class_order else {})},
                           self.target / "dataset.json")  # labels and regions_class_order, before any work
        self.channel_names = list(channel_names)
        if resample_to is not None and resample_to not in self.channel_names:
            raise PirlInputError(f"resample_to {resample_to!r}: not a channel of this dataset "
                                 f"({', '.join(self.channel_names)})")
        self.resample_to = resample_to
        self.records: dict[str, dict] = {}
        self.labels = labels
        self.regions_class_order = regions_class_order
        self.extra = extra or {}
        self.overwrite = overwrite
        self.counts = {"Tr": 0, "Ts": 0}
        self._found_labels: set[int] = {0}
        self._declared = None if labels is None else DatasetJson({}, labels, 0).label_values
        self._names: set[str] = set()
        self._tmp: Path | None = None
        self._check_target(dataset_id, source)

    def _check_target(self, dataset_id: int, source: Path | None) -> None:
        target = self.target.resolve()
        if source is not None:
            source = Path(source).resolve()
            if target.is_relative_to(source) or source.is_relative_to(target):
                raise PirlInputError(f"{self.target}: output must lie outside the source folder {source}")
        others = [p.name for p in self.root.glob(f"Dataset{dataset_id:03d}_*") if p.name != self.target.name]
        if others:
            raise PirlInputError(f"{self.root / others[0]}: dataset id {dataset_id} is already used")
        if self.target.exists() and not self.overwrite:
            raise PirlInputError(f"{self.target}: dataset folder already exists (use --overwrite to replace it)")

    def __enter__(self) -> Self:
        remove_stale(self.root, self.target.name, prefixes=(".tmp-", ".old-"))  # what a killed conversion left
        self._tmp = make_dirs(self.root / temp_name(self.target.name))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._finish()
        finally:
            if self._tmp is not None and self._tmp.exists():
                shutil.rmtree(self._tmp)

    def add_files(self, case: SourceCase, subset: str = "Tr") -> None:
        """Read, check and convert one source case (float64 -> float32; voxels outside the mask -> 0), on the
        grid of its first channel, or resampled onto that of ``resample_to``."""
        name = sanitise_case_name(case.name)
        images = [self._read(path) for path in case.images]
        ref = self.channel_names.index(self.resample_to) if self.resample_to else 0
        grid = OntoGrid(images[ref], case.images[ref], self.resample_to is not None, self.resample_to or "")
        arrays = []
        for path, image, channel in zip(case.images, images, self.channel_names, strict=True):
            array = grid.image(image, path, modality_kind(channel), f"channel {channel}")
            if array.dtype == np.float64:
                array = array.astype(np.float32)
            check_finite(array, path)
            check_not_empty(array, path)
            arrays.append(array)
        outside = None
        if case.mask is not None:
            mask = self._read(case.mask)
            outside = grid.label((sitk.GetArrayFromImage(mask) > 0).astype(np.uint8), Geometry.of(mask),
                                 case.mask, "mask") == 0
            if outside.all():
                raise PirlInputError(f"{case.mask}: the mask is empty (every voxel is 0)")
            for array in arrays:
                array[outside] = 0
        label = None
        if case.label is not None:
            image = self._read(case.label)
            label = sitk.GetArrayFromImage(image)
            label = (remap_labels(label, case.label, case.label_map) if case.label_map is not None
                     else self._check_plain_labels(label, case.label))
            label = grid.label(label, Geometry.of(image), case.label)
            if outside is not None and (lost := int(np.count_nonzero(label[outside]))):
                log.warning("%s: %d labelled voxel(s) lie outside the mask %s (kept in the label)",
                            case.label, lost, case.mask.name)
        for line in grid.log_lines:
            log.info("case %s: %s", name, line)
        if self.resample_to is not None:
            self.records[name] = grid.record
        self._write(name, arrays, grid.geometry, label, subset, case.images[0])

    def add_arrays(self, name: str, images: Sequence[np.ndarray], geometry: Geometry,
                   label: np.ndarray | None = None, subset: str = "Tr") -> None:
        """Write one case held in memory (z, y, x arrays on ``geometry``), with the same checks."""
        check_case_name(name, name)
        for index, array in enumerate(images):
            if array.shape != geometry.shape:
                raise PirlInputError(f"{name} channel {index}: shape {array.shape} != {geometry.shape}")
            check_finite(array, Path(channel_file_name(name, index, FILE_ENDING)))
            check_not_empty(array, Path(channel_file_name(name, index, FILE_ENDING)))
        if label is not None:
            if label.shape != geometry.shape:
                raise PirlInputError(f"{name} label: shape {label.shape} != {geometry.shape}")
            label = self._check_plain_labels(label, Path(f"{name}{FILE_ENDING}"))
        self._write(name, list(images), geometry, label, subset, Path(name))

    @staticmethod
    def _read(path: Path) -> sitk.Image:
        image = read_image(path)
        check_nifti_finite(path, image)
        return image

    def _check_plain_labels(self, label: np.ndarray, path: Path) -> np.ndarray:
        if self._declared is None:
            self._found_labels |= _integer_values(label, path)
        else:
            check_label_values(label, path, self._declared)
        return label.astype(label_file_dtype(max(self._declared or self._found_labels)))

    def _write(self, name: str, images: list[np.ndarray], geometry: Geometry, label: np.ndarray | None,
               subset: str, origin: Path) -> None:
        assert self._tmp is not None, "use RawDatasetWriter as a context manager"
        if name in self._names:
            raise PirlInputError(f"{origin}: case name {name} is already used by another case")
        self._names.add(name)
        assert len(images) == len(self.channel_names), f"{name}: wrong number of channels"
        for warning in degenerate_warnings(images, self.channel_names):
            log.warning("case %s: %s", name, warning)
        for index, array in enumerate(images):
            write_array(array, geometry, self._tmp / f"images{subset}" / channel_file_name(name, index, FILE_ENDING))
        if label is not None:
            write_array(label, geometry, self._tmp / f"labels{subset}" / f"{name}{FILE_ENDING}")
        self.counts[subset] += 1

    def _finish(self) -> None:
        assert self._tmp is not None
        if not self.counts["Tr"]:
            raise PirlInputError(f"{self.target}: no training cases to write")
        labels = self.labels if self.labels is not None else {
            "background": 0, **{f"label_{v}": v for v in sorted(self._found_labels - {0})}}
        DatasetJson({str(i): n for i, n in enumerate(self.channel_names)}, labels, self.counts["Tr"],
                    FILE_ENDING, self.regions_class_order, self.extra).save(self._tmp)
        if self.resample_to is not None:
            save_json({"resample_to": self.resample_to, "method": METHOD, "cases": self.records},
                      self._tmp / CONVERSION_RECORD)
        list_cases(self._tmp, load_dataset_json(self._tmp))  # the pipeline must accept what was written
        old = self.root / temp_name(self.target.name, ".old-")
        if self.target.exists():
            os.replace(self.target, old)
        os.replace(self._tmp, self.target)
        if old.exists():
            shutil.rmtree(old)
        log.info("wrote %d training and %d test case(s) to %s", self.counts["Tr"], self.counts["Ts"], self.target)


def write_raw_dataset(writer: RawDatasetWriter, cases: Sequence[SourceCase], skip_labels: bool = False) -> Path:
    """Convert ``cases`` (labelled -> Tr, unlabelled -> Ts, see ``split_labeled``) with a progress bar;
    ``skip_labels``: ignore every label file, all cases -> Tr (an image-only dataset)."""
    if skip_labels:
        if skipped := sum(c.label is not None for c in cases):
            log.info("--no-labels: %d label file(s) not read", skipped)
        cases = [replace(c, label=None) for c in cases]
    with writer:
        for case, subset in tqdm(split_labeled(cases), desc=f"writing {writer.target.name}", unit="case"):
            writer.add_files(case, subset)
    return writer.target
