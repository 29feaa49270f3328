"""nnU-Net's post-processing, decided on a fold's validation cases: keep only the largest connected component
of the foreground where that raises the validation Dice. This module applies, saves and loads it; the choice
is ``evaluation/postprocessing.py`` (it scores with the evaluation's metrics).

The final validation of a seg fold (``training/final_validation.py``) predicts its validation cases with all
modalities, then ``determine_postprocessing`` compares the mean Dice over the dataset's targets with and
without each candidate step and keeps a step only when it helps; the decision, with both Dice values, is
``postprocessing.json`` in the fold folder. ``pirl_predict`` applies it (:func:`load_postprocessing`;
``--disable_postprocessing`` to switch it off); ``pirl_evaluate_missing``, which scores the very cases the choice
was made on, does not.

Candidates, in order: the whole foreground (every label > 0: the whole tumour of BraTS), then, for datasets
with plain labels, each label alone. Regions (BraTS's nested TC/ET) get the foreground step only: removing a
component of an inner region would leave a hole in the region around it. Removed voxels become background.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from pirl_pipeline.file_io import load_json, save_json
from pirl_pipeline.fold_folder import FoldFolder


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a boolean mask (the empty mask stays empty)."""
    components, count = ndimage.label(mask)
    if count <= 1:
        return components > 0
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def keep_largest(segmentation: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """``segmentation`` (z, y, x label map) with the voxels of ``labels`` outside their largest connected
    component set to background (a new array)."""
    mask = np.isin(segmentation, list(labels))
    out = segmentation.copy()
    out[mask & ~largest_component(mask)] = 0
    return out


@dataclass
class Postprocessing:
    """The accepted steps (label sets whose largest component is kept, applied in order) and the record of
    how they were chosen: one entry per candidate with the mean validation Dice before and after."""

    keep_largest: list[list[int]] = field(default_factory=list)
    decisions: list[dict] = field(default_factory=list)
    cases: list[str] = field(default_factory=list)

    def apply(self, segmentation: np.ndarray) -> np.ndarray:
        for labels in self.keep_largest:
            segmentation = keep_largest(segmentation, labels)
        return segmentation

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Postprocessing:
        return cls([[int(v) for v in labels] for labels in d.get("keep_largest", [])], d.get("decisions", []),
                   d.get("cases", []))


def save_postprocessing(postprocessing: Postprocessing, fold: FoldFolder) -> Path:
    save_json(postprocessing.to_dict(), fold.postprocessing)
    return fold.postprocessing


def load_postprocessing(model_folder: Path, folds: Sequence[str]) -> Postprocessing | None:
    """The steps every fold in ``folds`` kept (an ensemble applies what all its folds agree on); None when a
    fold has no ``postprocessing.json`` (trained before it existed, or a translation model)."""
    steps: list[list[int]] | None = None
    for fold in folds:
        path = FoldFolder(model_folder, fold).postprocessing
        if not path.is_file():
            return None
        kept = Postprocessing.from_dict(load_json(path)).keep_largest
        steps = kept if steps is None else [s for s in steps if s in kept]
    return Postprocessing(steps or [])
