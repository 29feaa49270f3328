"""Access to one preprocessed configuration folder (``$PIRL_preprocessed/DatasetXXX_Name/<data_identifier>/``).

Per case: ``CASE.npy`` float32 (C, z, y, x), ``CASE_seg.npy`` int8 or int16 (1, z, y, x) (labels; -1 outside the
body mask; ``dataset_json.seg_dtype`` of the largest label of ``DatasetXXX_Name/dataset.json``, checked on every
read: a label map stored by older code as int8 with labels above 127 had them wrapped to negative values) and
``CASE.json`` (properties, with ``class_locations`` for foreground oversampling and, for datasets with missing
channels, ``channels_present``: the channel indices the case has; an absent channel is stored as NaN, so it can
never pass for data). Arrays are opened with ``np.load(mmap_mode="r")`` on every access, so only the patches read
are paged in and worker processes share the page cache; the (small) foreground locations are cached per process.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from pirl_pipeline.data.dataset_json import SEG_DTYPES, load_dataset_json, seg_dtype
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.file_io import load_json


class PreprocessedDataset:
    """The preprocessed cases ``case_names`` (e.g. one fold's training split) of ``folder``.

    ``case_names=None`` takes every finished case (every ``CASE.json``) in the folder. ``labels``: the declared
    label values (default: those of the ``dataset.json`` beside the folder, as pirl_plan_and_preprocess writes
    it); every ``CASE_seg.npy`` must be stored in their ``seg_dtype``. Without either, int8 or int16 is accepted.
    """

    def __init__(self, folder: str | Path, case_names: list[str] | None = None, cache_size: int = 256,
                 labels: Iterable[int] | None = None) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise PirlInputError(f"{self.folder}: preprocessed folder not found (run pirl_plan_and_preprocess)")
        if labels is None and (self.folder.parent / "dataset.json").is_file():
            labels = load_dataset_json(self.folder.parent).label_values
        self.max_label = None if labels is None else max(labels, default=0)
        self.seg_dtype = None if self.max_label is None else seg_dtype(self.max_label)
        if case_names is None:
            case_names = sorted(p.stem for p in self.folder.glob("*.json")
                                if not p.name.startswith(".") and p.with_suffix(".npy").is_file())
        self.case_names = list(case_names)
        if not self.case_names:
            raise PirlInputError(f"{self.folder}: no cases to load")
        missing = [n for n in self.case_names
                   if not all((self.folder / f"{n}{s}").is_file() for s in (".npy", "_seg.npy", ".json"))]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise PirlInputError(f"{self.folder}: preprocessed case(s) missing or incomplete: {shown} "
                                 "(rerun pirl_plan_and_preprocess)")
        self._cache_size = cache_size
        self._meta: OrderedDict[str, tuple[dict[int, np.ndarray], tuple[int, ...] | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.case_names)

    def __getitem__(self, index: int) -> str:
        return self.case_names[index]

    def arrays(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(data (C, z, y, x) float32, seg (1, z, y, x) int8 or int16), both read-only memory maps."""
        data = np.load(self.folder / f"{name}.npy", mmap_mode="r")
        seg = np.load(self.folder / f"{name}_seg.npy", mmap_mode="r")
        if data.ndim != 4 or seg.shape != (1, *data.shape[1:]):
            raise PirlInputError(f"{self.folder / name}: data {data.shape} and seg {seg.shape} do not match "
                                 "(expected (C, z, y, x) and (1, z, y, x))")
        if seg.dtype not in SEG_DTYPES:
            raise PirlInputError(f"{self.folder / name}_seg.npy: stored as {seg.dtype}, expected int8 or int16 "
                                 "(rerun pirl_plan_and_preprocess)")
        # e.g. int8 written before labels above 127 were stored as int16 (200 became -56: "outside the body")
        if self.seg_dtype is not None and seg.dtype != self.seg_dtype:
            raise PirlInputError(f"{self.folder / name}_seg.npy: stored as {seg.dtype} but labels reach "
                                 f"{self.max_label} ({self.seg_dtype} holds them): rerun pirl_plan_and_preprocess")
        return data, seg

    def properties(self, name: str) -> dict:
        """The full ``CASE.json`` (geometry, crop box, normalisation, class locations, ...)."""
        return load_json(self.folder / f"{name}.json")

    def _case_meta(self, name: str) -> tuple[dict[int, np.ndarray], tuple[int, ...] | None]:
        """(foreground locations, present channel indices or None = all) of a case, from CASE.json (LRU)."""
        if name in self._meta:
            self._meta.move_to_end(name)
            return self._meta[name]
        props = self.properties(name)
        locations = {int(c): np.asarray(v, dtype=np.int32).reshape(-1, 3)
                     for c, v in props.get("class_locations", {}).items()}
        present = props.get("channels_present")
        self._meta[name] = (locations, None if present is None else tuple(int(c) for c in present))
        if len(self._meta) > self._cache_size:
            self._meta.popitem(last=False)
        return self._meta[name]

    def foreground_locations(self, name: str) -> dict[int, np.ndarray]:
        """{class: (N, 3) int32 voxel positions (z, y, x)} from ``class_locations``."""
        return self._case_meta(name)[0]

    def present_channels(self, name: str, num_channels: int) -> np.ndarray:
        """(num_channels,) bool: the channels case ``name`` has (all of them without ``channels_present``)."""
        present = self._case_meta(name)[1]
        mask = np.zeros(num_channels, bool) if present is not None else np.ones(num_channels, bool)
        if present is not None:
            mask[list(present)] = True
        return mask
