"""From network outputs in the preprocessed space back to the original image: undo the resampling, put
the crop back into the full grid, and turn outputs into label maps or intensities in the input's units."""
from __future__ import annotations

import numpy as np
import torch

from pirl_pipeline.data.dataset_json import DatasetJson
from pirl_pipeline.preprocessing.cropping import uncrop
from pirl_pipeline.preprocessing.normalization import denormalize_channel
from pirl_pipeline.preprocessing.resampling import resample
from plans.plans_manager import Plans


def to_original_grid(array: np.ndarray, properties: dict, order: int = 1) -> np.ndarray:
    """(C, *preprocessed) -> (C, *original): resample back to the cropped shape, then uncrop (fill 0)."""
    cropped_shape = properties["shape_after_cropping_and_before_resampling"]
    array = resample(array, cropped_shape, is_label=False, spacing=properties["spacing_after_resampling"],
                     order=order, target_spacing=properties["spacing_before_resampling"])
    return uncrop(array, properties["bbox_used_for_cropping"], properties["shape_before_cropping"])


def probabilities(logits: torch.Tensor, dataset_json: DatasetJson) -> torch.Tensor:
    """Sigmoid per region when the dataset declares regions, else softmax over classes."""
    return torch.sigmoid(logits) if dataset_json.has_regions else torch.softmax(logits, 0)


def labels_from_probabilities(probs: np.ndarray, dataset_json: DatasetJson) -> np.ndarray:
    """(C, *S) probabilities -> (*S) label map in the dataset's label values.

    Regions (e.g. BraTS WT/TC/ET) are painted in order with ``regions_class_order`` (later regions win,
    nnU-Net's convention); plain labels take the arg-max class.
    """
    if not dataset_json.has_regions:
        return probs.argmax(0).astype(np.uint8)
    labels = np.zeros(probs.shape[1:], np.uint8)
    for region_probs, value in zip(probs, dataset_json.regions_class_order):
        labels[region_probs > 0.5] = value
    return labels


def dataset_level_normalization(plans: Plans, channel: int, scheme: str) -> dict:
    """Normalisation parameters of a channel the case did not have (translation targets).

    z-score: mean/std of the channel over the training cases' non-zero (body) voxels; CT/PET: the
    dataset-level parameters they always use.
    """
    body = plans.extra.get("nonzero_intensity_properties_per_channel", {}).get(str(channel))
    fg = plans.foreground_intensity_properties_per_channel[str(channel)]
    if scheme == "ZScoreNormalization":
        props = body or fg
        return {"mean": props["mean"], "std": props["std"]}
    if scheme == "CTNormalization":
        return {"mean": fg["mean"], "std": fg["std"]}
    if scheme == "PETNormalization":
        return {"mean": 0.0, "std": fg["percentile_99_5"]}
    return {"mean": 0.0, "std": 1.0}


def intensities_in_input_units(output: np.ndarray, properties: dict, plans: Plans, configuration: str) -> np.ndarray:
    """Invert each channel's normalisation: the case's own parameters for channels it had (same subject,
    same scanner), dataset-level ones for synthesised channels it lacked."""
    schemes = plans.configuration(configuration).normalization_schemes
    out = np.empty_like(output)
    for c in range(output.shape[0]):
        params = properties["normalization"][c] or dataset_level_normalization(plans, c, schemes[c])
        out[c] = denormalize_channel(output[c], params)
    return out
