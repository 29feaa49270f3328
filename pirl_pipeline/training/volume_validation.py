"""Whole-volume validation during fine-tuning, on the preprocessed grid.

Patch-level validation overrates a segmentation model: a patch centred on the tumour hides what the model
paints elsewhere in the brain. Each epoch (``TrainerConfig.val_volumes``) every validation case is therefore
predicted whole with the sliding window of ``pirl_predict`` (no TTA), turned into labels as the exporter
does (regions painted in ``regions_class_order``), and scored as ``pirl_evaluate`` scores it, only on the
preprocessed grid (no resampling back: cheap enough to run every epoch). Translation predicts every
modality from each single source modality and scores the other ones (percentile-scaled PSNR inside the
body mask, as ``pirl_evaluate``).
"""
from __future__ import annotations

import numpy as np
import torch

from pirl_pipeline.data.dataset_json import DatasetJson
from pirl_pipeline.dataloading.dataset import PreprocessedDataset
from pirl_pipeline.evaluation.metrics import overlap_metrics
from pirl_pipeline.evaluation.primary_metric import primary_targets
from pirl_pipeline.evaluation.segmentation import segmentation_targets
from pirl_pipeline.evaluation.translation import translation_metrics
from pirl_pipeline.inference.export import labels_from_probabilities, probabilities
from pirl_pipeline.inference.sliding_window import predict_volume
from pirl_pipeline.tasks import Task


def metric_key(name: str) -> str:
    """``"whole tumour"`` -> ``"whole_tumour"`` (log and history keys have no spaces)."""
    return name.replace(" ", "_")


def segmentation_scores(logits: torch.Tensor, seg: np.ndarray, dj: DatasetJson,
                        prefix: str = "volume_dice_") -> dict[str, float]:
    """Dice per target of one case (or patch): logits (C, *S), seg (1, *S) int (-1 outside the body), scored
    as ``pirl_evaluate`` scores pirl_predict's output: probabilities 0 outside the body, labels painted by
    ``labels_from_probabilities``, targets re-derived from the labels. Keys ``<prefix><target>`` and 'metric'
    = the mean Dice over the regions (datasets with regions) or over the foreground labels."""
    probs = probabilities(logits.detach().float().cpu(), dj).numpy()
    probs[:, np.asarray(seg[0]) < 0] = 0  # outside the body, as pirl_predict
    labels = labels_from_probabilities(probs, dj)
    reference = np.clip(np.asarray(seg[0]), 0, None)
    scores = {f"{prefix}{metric_key(name)}": overlap_metrics(np.isin(labels, values), np.isin(reference, values))["Dice"]
              for name, values in segmentation_targets(dj).items()}
    ranked = [f"{prefix}{metric_key(name)}" for name in primary_targets(dj)]  # the chooser's primary metric
    return {**scores, "metric": float(np.mean([scores[k] for k in ranked]))}


def translation_volume_metrics(predict, data: np.ndarray, seg: np.ndarray,
                               present: list[int] | None = None) -> dict[str, float]:
    """Mean PSNR/SSIM over every (source -> other target) pair of the ``present`` channels (None: all) of one
    case; ``predict(available)`` returns the network output (M, *S) from the listed source channels.
    'metric' = the mean PSNR."""
    mask = np.asarray(seg[0]) >= 0
    present = list(range(data.shape[0])) if present is None else present
    psnrs, ssims = [], []
    for source in present:
        output = predict([source]).float().numpy()
        for target in present:
            if target == source:
                continue
            scores = translation_metrics(output[target], data[target], mask, ["t"])
            psnrs.append(scores["PSNR/t"])
            ssims.append(scores["SSIM/t"])
    return {"volume_psnr": float(np.nanmean(psnrs)), "volume_ssim": float(np.nanmean(ssims)),
            "metric": float(np.nanmean(psnrs))}


@torch.no_grad()
def validate_volumes(network: torch.nn.Module, kind: str, task: Task, dataset: PreprocessedDataset,
                     cases: list[str], patch_size: list[int], dj: DatasetJson,
                     device: torch.device) -> list[dict[str, float]]:
    """One row of metrics per case (see the module docstring)."""
    was_training = network.training
    network.eval()
    rows = []
    try:
        for case in cases:
            data, seg = dataset.arrays(case)
            present = np.flatnonzero(dataset.present_channels(case, data.shape[0])).tolist()
            volume = torch.from_numpy(np.nan_to_num(data, nan=0.0))  # absent channels (NaN) are never read

            def predict(available: list[int], volume: torch.Tensor = volume) -> torch.Tensor:
                return predict_volume([network], kind, volume, available, patch_size, step_size=0.5, mirror=False,
                                      device=device)

            if task.predicts_labels:
                rows.append(segmentation_scores(predict(present), seg, dj))
            elif len(present) > 1:
                rows.append(translation_volume_metrics(predict, np.asarray(data), seg, present))
    finally:
        network.train(was_training)
    return rows
