"""The one number models of a dataset are ranked by: ``pirl_find_best_configuration`` chooses with it, and the
fine-tuning's checkpoint selection (``training/volume_validation.py``) ranks by the same targets.

- seg: the mean Dice over the dataset's regions when dataset.json declares regions (BraTS: whole tumour,
  tumour core, enhancing tumour), else over its foreground labels (nnU-Net's "mean foreground Dice");
- translate: the mean PSNR over the synthesised channels (``pirl_evaluate``'s percentile-scaled PSNR).

Higher is better for both. A per-case table (``pirl_evaluate``'s columns ``"<metric>/<target>"``) scores as
nnU-Net's ``foreground_mean``: each target's mean over cases (NaN, e.g. an excluded empty reference, skipped),
then the mean over the targets.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from pirl_pipeline.data.dataset_json import DatasetJson
from pirl_pipeline.evaluation.segmentation import segmentation_targets
from pirl_pipeline.tasks import Task


@dataclass(frozen=True)
class PrimaryMetric:
    """``metric`` averaged over ``targets`` (None: every target the table has for it)."""

    metric: str
    targets: tuple[str, ...] | None

    @property
    def name(self) -> str:
        return f"mean {self.metric} over " + (", ".join(self.targets) if self.targets else "every target")

    def columns(self, table: pd.DataFrame) -> list[str]:
        if self.targets is None:
            return [c for c in table.columns if str(c).split("/", 1)[0] == self.metric]
        missing = [t for t in self.targets if f"{self.metric}/{t}" not in table.columns]
        if missing:
            raise ValueError(f"table has no {self.metric} column for {', '.join(missing)}")
        return [f"{self.metric}/{t}" for t in self.targets]

    def score(self, table: pd.DataFrame) -> float:
        """Mean over targets of each target's mean over cases (NaN skipped; NaN when nothing is left)."""
        means = table[self.columns(table)].astype(float).mean(skipna=True).dropna()
        return float(means.mean()) if len(means) else math.nan


def primary_targets(dataset_json: DatasetJson) -> list[str]:
    """The seg targets the primary metric averages: the regions if dataset.json declares any, else every
    foreground label (names as :func:`segmentation_targets` gives them)."""
    regions = [name for name, value in dataset_json.labels.items() if dataset_json.has_regions and value != 0]
    return regions or list(segmentation_targets(dataset_json))


def primary_metric(task: Task, dataset_json: DatasetJson) -> PrimaryMetric:
    """The task's primary metric on this dataset (see the module docstring)."""
    if task.predicts_labels:
        return PrimaryMetric("Dice", tuple(primary_targets(dataset_json)))
    return PrimaryMetric("PSNR", None)
