"""The choice of the post-processing a seg fold applies (``inference/postprocessing.py``): nnU-Net's greedy
"keep the largest connected component" steps, each kept only where it raises the mean validation Dice."""
from __future__ import annotations

import logging

import numpy as np

from pirl_pipeline.data.dataset_json import DatasetJson
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.evaluation.segmentation import segmentation_metrics
from pirl_pipeline.inference.postprocessing import Postprocessing

log = logging.getLogger("pirl")


def candidates(dataset_json: DatasetJson) -> list[list[int]]:
    """Label sets to try, in order: the whole foreground, then each plain label (none with regions)."""
    foreground = sorted(dataset_json.label_values - {0})
    singles = [] if dataset_json.has_regions or len(foreground) < 2 else [[v] for v in foreground]
    return [foreground, *singles]


def determine_postprocessing(pairs: dict[str, tuple[np.ndarray, np.ndarray]],
                             dataset_json: DatasetJson) -> Postprocessing:
    """Greedy nnU-Net-style choice on ``{case: (predicted labels, reference labels)}`` (z, y, x arrays, as the
    final validation holds them): a candidate is kept when it raises the mean Dice (over cases and the
    dataset's targets, empty references skipped) of the predictions post-processed by the steps kept so far."""
    if not pairs:
        raise PirlInputError("post-processing needs at least one validation case")

    def mean_dice(steps: list[list[int]]) -> float:
        values = []
        for pred, ref in pairs.values():
            metrics = segmentation_metrics(Postprocessing(steps).apply(pred), ref, dataset_json)
            values += [v for k, v in metrics.items() if k.startswith("Dice/") and np.isfinite(v)]
        return float(np.mean(values)) if values else float("nan")

    result = Postprocessing(cases=sorted(pairs))
    current = mean_dice([])
    for labels in candidates(dataset_json):
        trial = mean_dice([*result.keep_largest, labels])
        accepted = bool(np.isfinite(trial) and trial > current)
        result.decisions.append({"keep_largest": labels, "dice_before": round(current, 6),
                                 "dice_after": round(trial, 6), "accepted": accepted})
        log.info("post-processing: largest component of labels %s: mean validation Dice %.4f -> %.4f (%s)",
                 labels, current, trial, "kept" if accepted else "not kept")
        if accepted:
            result.keep_largest.append(labels)
            current = trial
    return result
