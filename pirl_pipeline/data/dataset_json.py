"""dataset.json (nnU-Net v2 format) and the raw-dataset layout.

``channel_names`` maps channel index -> modality name (its kind, ``data/modalities.py``, decides normalisation),
``labels`` maps name -> value or list of values (a list declares a region, e.g. BraTS whole tumour),
``numTraining`` and ``file_ending`` as in nnU-Net. An image-only dataset (no ``labelsTr``) is valid: pre-training
and translation need no labels. ``allow_missing_channels`` (pirl's key, default false) declares an incomplete
dataset: a training case may lack channel files (it needs at least one); without it a missing channel is an error.

Every value is type-checked where it arrives (:func:`parse_dataset_json`): label values are integers
0..MAX_LABEL (``CASE_seg.npy`` stores them in :func:`seg_dtype`, with OUTSIDE_BODY, -1, out of their range;
a NIfTI label file, converted or predicted, in :func:`label_file_dtype`);
a key given twice is refused (``file_io.loads``). Case names are checked by :func:`check_case_name` where they
arrive (raw folders, converters): printable, and short enough for every file name pirl builds from them.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pirl_pipeline.data.modalities import modality_key
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.file_io import NAME_MAX, loads, save_json

REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
OUTSIDE_BODY = -1  # CASE_seg.npy's value outside the non-zero (body) mask, and in a patch's padding
MAX_LABEL = int(np.iinfo(np.int16).max)  # the largest label value CASE_seg.npy can store
# a case name leaves room for pirl's temp prefix (.tmp-XXXXXXXX-, 14 bytes) and the longest suffix it adds
# (_XXXX + a file ending, or _seg.npy: 41 bytes allowed) within one file name
MAX_CASE_NAME_BYTES = NAME_MAX - 14 - 41
SEG_DTYPES = (np.dtype(np.int8), np.dtype(np.int16))  # what seg_dtype returns
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def whole_target(targets: Iterable[str]) -> str | None:
    """The target that covers the whole lesion (BraTS' whole tumour) among evaluated target names: the first
    whose name starts with "whole" (tumor or tumour, space or underscore); None when there is none."""
    return next((t for t in targets if str(t).strip().lower().startswith("whole")), None)


def seg_dtype(max_label: int) -> np.dtype:
    """The dtype of ``CASE_seg.npy`` for labels up to ``max_label``: the smallest signed integer that holds it
    and OUTSIDE_BODY (int8 up to 127, else int16; MAX_LABEL is the limit)."""
    if not 0 <= max_label <= MAX_LABEL:
        raise ValueError(f"label value {max_label} outside 0..{MAX_LABEL}")
    return SEG_DTYPES[0] if max_label <= np.iinfo(np.int8).max else SEG_DTYPES[1]


def label_file_dtype(max_label: int) -> np.dtype:
    """The dtype of a NIfTI label file (a converter's output, a prediction) holding labels up to ``max_label``:
    uint8 (nnU-Net's) when every value fits, else int16 (MAX_LABEL is the limit)."""
    if not 0 <= max_label <= MAX_LABEL:
        raise ValueError(f"label value {max_label} outside 0..{MAX_LABEL}")
    return np.dtype(np.uint8) if max_label <= np.iinfo(np.uint8).max else np.dtype(np.int16)


def printable(text: object) -> str:
    """``text`` with control characters (a newline, a tab, ...) escaped, so an error stays one line."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(text))


def check_printable(path: Path) -> Path:
    """``path`` when its text holds no control characters (a newline would split a one-line error); otherwise a
    PirlInputError naming it, escaped."""
    if _CONTROL.search(str(path)):
        raise PirlInputError(f"{printable(path)}: the name holds control characters (a newline, a tab, ...); "
                             "rename it")
    return path


def check_case_name(name: str, where: str | os.PathLike) -> str:
    """``name`` when pirl can build every file name from it: not empty, no control characters, at most
    MAX_CASE_NAME_BYTES bytes; otherwise a PirlInputError naming ``where`` (the file or folder it came from)."""
    size = len(name.encode("utf-8", "surrogateescape"))
    if not name or _CONTROL.search(name):
        raise PirlInputError(f"{printable(where)}: case name {name!r} is empty or holds control characters "
                             "(a newline, a tab, ...); rename it")
    if size > MAX_CASE_NAME_BYTES:
        raise PirlInputError(f"{printable(where)}: case name {name[:24]}... is {size} bytes long; at most "
                             f"{MAX_CASE_NAME_BYTES} (a file name holds {NAME_MAX} bytes, and pirl adds a temp "
                             "prefix and suffixes such as _0000.nii.gz)")
    return name


@dataclass
class DatasetJson:
    channel_names: dict[str, str]
    labels: dict[str, int | list[int]]
    num_training: int
    file_ending: str = ".nii.gz"
    regions_class_order: list[int] | None = None
    extra: dict = field(default_factory=dict)
    allow_missing_channels: bool = False

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def label_values(self) -> set[int]:
        """All integer values the label maps may contain."""
        values: set[int] = set()
        for v in self.labels.values():
            values.update(v if isinstance(v, list) else [v])
        return values

    @property
    def has_regions(self) -> bool:
        return any(isinstance(v, list) for v in self.labels.values())

    @property
    def foreground_labels(self) -> list[int]:
        """Plain label values other than background (regions excluded)."""
        return sorted(v for v in self.label_values if v != 0)

    def regions(self) -> list[list[int]]:
        """Regions as lists of label values, background excluded (plain labels become one-value regions)."""
        return [v if isinstance(v, list) else [v] for k, v in self.labels.items()
                if not (not isinstance(v, list) and v == 0)]

    def to_dict(self) -> dict:
        d = {"channel_names": self.channel_names, "labels": self.labels, "numTraining": self.num_training,
             "file_ending": self.file_ending}
        if self.regions_class_order is not None:
            d["regions_class_order"] = self.regions_class_order
        if self.allow_missing_channels:
            d["allow_missing_channels"] = True
        return {**d, **self.extra}

    def save(self, folder: Path) -> None:
        save_json(self.to_dict(), Path(folder) / "dataset.json")


def load_dataset_json(folder: str | Path) -> DatasetJson:
    """Load and validate ``folder/dataset.json``; every problem is a PirlInputError naming the file."""
    path = Path(folder) / "dataset.json"
    if not path.is_file():
        raise PirlInputError(f"{path}: dataset.json is missing")
    try:
        d = loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PirlInputError(f"{path}: invalid JSON ({err})") from None
    return parse_dataset_json(d, path)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_label(value: object) -> bool:
    return _is_int(value) and 0 <= value <= MAX_LABEL


def parse_dataset_json(d: dict, path: Path | str) -> DatasetJson:
    """Validate a dataset.json dictionary (``path`` names its source in error messages)."""
    if not isinstance(d, dict):
        raise PirlInputError(f"{path}: expected a JSON object")
    if "modality" in d and "channel_names" not in d:
        d["channel_names"] = d["modality"]  # nnU-Net v1 name for the same field
    missing = [k for k in REQUIRED_KEYS if k not in d]
    if missing:
        raise PirlInputError(f"{path}: missing key(s) {', '.join(missing)}")
    channels = d["channel_names"]
    if not isinstance(channels, dict) or not channels:
        raise PirlInputError(f"{path}: channel_names must be a non-empty object like {{\"0\": \"T1\"}}")
    if set(channels) != {str(i) for i in range(len(channels))}:
        raise PirlInputError(f"{path}: channel_names keys must be 0..{len(channels) - 1}, got {list(channels)}")
    if not all(isinstance(v, str) and v.strip() for v in channels.values()):
        raise PirlInputError(f"{path}: channel_names values must be modality names (non-empty strings), got "
                             f"{list(channels.values())}")
    labels = d["labels"]
    if not isinstance(labels, dict) or not all(
            _is_label(v) or (isinstance(v, list) and v and all(_is_label(x) for x in v)) for v in labels.values()):
        raise PirlInputError(f"{path}: labels must map names to integers 0..{MAX_LABEL} or lists of them "
                             f"(not booleans or negative values: -1 marks voxels outside the body), got {labels}")
    num_training = d["numTraining"]
    if not _is_int(num_training) or num_training < 0:
        raise PirlInputError(f"{path}: numTraining must be a whole number >= 0, got {num_training!r}")
    if labels and 0 not in [v for v in labels.values() if isinstance(v, int)]:
        raise PirlInputError(f"{path}: labels must declare background as 0")
    ending = d["file_ending"]
    if not isinstance(ending, str) or not ending.startswith("."):
        raise PirlInputError(f"{path}: file_ending must look like '.nii.gz', got {ending!r}")
    allow_missing = d.get("allow_missing_channels", False)
    if not isinstance(allow_missing, bool):
        raise PirlInputError(f"{path}: allow_missing_channels must be true or false, got {allow_missing!r}")
    extra = {k: v for k, v in d.items()
             if k not in (*REQUIRED_KEYS, "regions_class_order", "modality", "allow_missing_channels")}
    dj = DatasetJson(channels, labels, num_training, ending, d.get("regions_class_order"), extra,
                     allow_missing)
    if dj.has_regions:
        check_regions_class_order(dj, path)
    return dj


def check_regions_class_order(dj: DatasetJson, path: Path | str) -> None:
    """One declared label value per region (nnU-Net): with fewer, the last regions would never be painted."""
    order, regions = dj.regions_class_order, dj.regions()
    if order is None:
        raise PirlInputError(f"{path}: labels declare regions, so regions_class_order is required")
    if not isinstance(order, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in order):
        raise PirlInputError(f"{path}: regions_class_order must be a list of label values, got {order!r}")
    if len(order) != len(regions):
        raise PirlInputError(f"{path}: regions_class_order has {len(order)} value(s) for {len(regions)} "
                             f"regions {regions} (one label value per region, in region order)")
    undeclared = sorted(set(order) - dj.label_values)
    if undeclared:
        raise PirlInputError(f"{path}: regions_class_order value(s) {undeclared} are not declared labels")


def check_num_training(dj: DatasetJson, cases: list[RawCase], path: Path | str) -> None:
    """``numTraining`` must count the cases in imagesTr (nnU-Net's integrity check)."""
    if dj.num_training != len(cases):
        raise PirlInputError(f"{path}: numTraining is {dj.num_training} but imagesTr holds {len(cases)} "
                             "case(s); correct numTraining or the images")


@dataclass(frozen=True)
class RawCase:
    """One case of a raw dataset: its channel files (index order), optional label file and ``channels``, the
    channel index of each file (default ``0..len(images)-1``; fewer than the dataset's for an incomplete case)."""

    name: str
    images: tuple[Path, ...]
    label: Path | None = None
    channels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        channels = tuple(range(len(self.images))) if self.channels is None else tuple(self.channels)
        if len(channels) != len(self.images) or list(channels) != sorted(set(channels)):
            raise ValueError(f"{self.name}: channels {channels} do not match {len(self.images)} image file(s)")
        object.__setattr__(self, "channels", channels)


def channel_file_name(case: str, channel: int, file_ending: str) -> str:
    """``CASE_XXXX<ending>``: the one naming rule of an image channel file (nnU-Net's raw layout)."""
    return f"{case}_{channel:04d}{file_ending}"


def parse_channel_file_name(name: str, file_ending: str) -> tuple[str, int] | None:
    """(case, channel) of a ``CASE_XXXX<ending>`` file name; None for any other name."""
    m = re.fullmatch(r"(.+)_(\d{4})" + re.escape(file_ending), name, re.DOTALL)
    return (m.group(1), int(m.group(2))) if m else None


def check_input_channels(folder: str | Path, dj: DatasetJson) -> None:
    """An input folder inside another raw dataset (``folder/../dataset.json``, e.g. its imagesTr) must number its
    channels as the model does (``dj``): the same contrast per index, aliases allowed (T1ce = T1Gd). Otherwise
    CASE_0001 would be read as the wrong modality without a word. A folder without one is not checked."""
    other = Path(folder).parent
    if not (other / "dataset.json").is_file():
        return
    theirs = load_dataset_json(other).channel_names
    differ = [f"{k}: {theirs[k]} vs {name}" for k, name in dj.channel_names.items()
              if k in theirs and modality_key(theirs[k]) != modality_key(name)]
    if differ:
        raise PirlInputError(f"{other / 'dataset.json'}: its channels are not the model's ({'; '.join(differ)}); "
                             "rename the files so that each channel index names the model's modality")


def group_channel_files(folder: str | Path, dj: DatasetJson, strict: bool = True) -> dict[str, dict[int, Path]]:
    """``{case: {channel: path}}`` for the ``CASE_XXXX{file_ending}`` files of one folder. ``strict``: a visible
    file with another name, or no image at all, is an error (raw datasets); otherwise such files are ignored
    (prediction and evaluation folders). A channel not declared in channel_names is always an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PirlInputError(f"{folder}: folder not found")
    files: dict[str, dict[int, Path]] = {}
    for f in sorted(folder.iterdir()):
        if f.name.startswith(".") or f.is_dir():
            continue
        parsed = parse_channel_file_name(f.name, dj.file_ending)
        if parsed is None:
            if strict:
                raise PirlInputError(f"{printable(f)}: name does not follow CASE_XXXX{dj.file_ending} "
                                     f"(file_ending in dataset.json is {dj.file_ending!r})")
            continue
        case, channel = parsed
        check_case_name(case, f)
        if channel >= dj.num_channels:
            raise PirlInputError(f"{f}: channel {channel:04d} is not declared in channel_names "
                                 f"(0..{dj.num_channels - 1})")
        files.setdefault(case, {})[channel] = f
    if not files and strict:
        raise PirlInputError(f"{folder}: no images (expected CASE_XXXX{dj.file_ending})")
    return files


def list_label_files(folder: str | Path | None, file_ending: str) -> dict[str, Path]:
    """``{case: folder/CASE<ending>}`` for every visible file with the dataset's ending ({} without a folder)."""
    if folder is None or not Path(folder).is_dir():
        return {}
    return {check_case_name(f.name[: -len(file_ending)], f): f for f in sorted(Path(folder).iterdir())
            if f.is_file() and not f.name.startswith(".") and f.name.endswith(file_ending)}


def list_cases(dataset_folder: str | Path, dj: DatasetJson, subfolder: str = "imagesTr",
               require_all_channels: bool | None = None) -> list[RawCase]:
    """Group ``subfolder/CASE_XXXX{ending}`` files into cases and attach ``labelsTr/CASE{ending}``.

    With ``require_all_channels`` (default: unless dataset.json declares ``allow_missing_channels``) a case
    lacking a channel is an error; otherwise missing channels are left out and ``RawCase.channels`` says
    which the case has.
    """
    if require_all_channels is None:
        require_all_channels = not dj.allow_missing_channels
    folder = Path(dataset_folder) / subfolder
    files = group_channel_files(folder, dj)
    labels_folder = Path(dataset_folder) / "labelsTr"
    cases = []
    for name, by_channel in files.items():
        if require_all_channels:
            missing = [c for c in range(dj.num_channels) if c not in by_channel]
            if missing:
                raise PirlInputError(f"{folder / name}: case is missing channel(s) "
                                     + ", ".join(channel_file_name(name, c, dj.file_ending) for c in missing)
                                     + ' (an incomplete dataset declares "allow_missing_channels": true)')
        label = labels_folder / f"{name}{dj.file_ending}"
        present = tuple(sorted(by_channel))
        cases.append(RawCase(name, tuple(by_channel[c] for c in present),
                             label if subfolder == "imagesTr" and label.is_file() else None, present))
    if subfolder == "imagesTr" and labels_folder.is_dir():
        unlabeled = [c.name for c in cases if c.label is None]
        if unlabeled and len(unlabeled) < len(cases):
            raise PirlInputError(f"{labels_folder}: no label for case(s) {', '.join(unlabeled[:5])}")
        orphans = sorted(f for f in labels_folder.iterdir() if f.name.endswith(dj.file_ending)
                         and not f.name.startswith(".") and f.name[: -len(dj.file_ending)] not in files)
        if orphans:
            raise PirlInputError(f"{orphans[0]}: a label without images (no {orphans[0].name[: -len(dj.file_ending)]}"
                                 f"_XXXX{dj.file_ending} in {folder})")
    return cases
