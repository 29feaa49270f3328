"""From network outputs in the preprocessed space back to the original image: undo the resampling, put
the crop back into the full grid, and turn outputs into label maps or intensities (input channels in the
input's units; synthesised channels in their scheme's dataset-level units: MRI z-score, CT/PET HU/SUV)."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from pirl_pipeline.data.dataset_json import DatasetJson, channel_file_name, label_file_dtype
from pirl_pipeline.data.geometry import ANISOTROPY_THRESHOLD, uncrop
from pirl_pipeline.data.modalities import normalizer
from pirl_pipeline.preprocessing.normalization import denormalize_channel
from pirl_pipeline.preprocessing.resampling import resample
from plans.plans_manager import Plans


def output_paths(folder: Path, case: str, file_ending: str, channels: Iterable[int] | None = None) -> list[Path]:
    """Prediction file names, the raw layout's: ``CASE{ending}`` for a label map (``channels`` None), else
    ``CASE_XXXX{ending}`` per image channel, so a translation output folder reads as an ``imagesTs``."""
    folder = Path(folder)
    if channels is None:
        return [folder / f"{case}{file_ending}"]
    return [folder / channel_file_name(case, c, file_ending) for c in channels]


def to_original_grid(array: np.ndarray, properties: dict, order: int = 1,
                     anisotropy_threshold: float = ANISOTROPY_THRESHOLD) -> np.ndarray:
    """(C, *preprocessed) -> (C, *original): resample back to the cropped shape (``anisotropy_threshold``: the
    plans' ``resampling``, as preprocessing used it), then uncrop (fill 0)."""
    cropped_shape = properties["shape_after_cropping_and_before_resampling"]
    array = resample(array, cropped_shape, is_label=False, spacing=properties["spacing_after_resampling"],
                     order=order, target_spacing=properties["spacing_before_resampling"],
                     anisotropy_threshold=anisotropy_threshold)
    return uncrop(array, properties["bbox_used_for_cropping"], properties["shape_before_cropping"])


def probabilities(logits: torch.Tensor, dataset_json: DatasetJson) -> torch.Tensor:
    """Sigmoid per region when the dataset declares regions, else softmax over classes."""
    return torch.sigmoid(logits) if dataset_json.has_regions else torch.softmax(logits, 0)


def labels_from_probabilities(probs: np.ndarray, dataset_json: DatasetJson) -> np.ndarray:
    """(C, *S) probabilities -> (*S) label map in the dataset's label values.

    Regions (e.g. BraTS WT/TC/ET) are painted in order with ``regions_class_order`` (later regions win,
    nnU-Net's convention), each only where every region containing it is on too (TC inside WT, ET inside
    TC): a nested region that is on outside its parent would otherwise be painted and then count as the
    parent (an undecided TC channel painted over the whole brain). Plain labels take the arg-max class. The
    map's dtype holds every declared label (``label_file_dtype``: uint8, int16 above 255).
    """
    dtype = label_file_dtype(max(dataset_json.label_values, default=0))
    if not dataset_json.has_regions:
        return probs.argmax(0).astype(dtype)
    regions = [set(r) for r in dataset_json.regions()]
    on = probs > 0.5
    labels = np.zeros(probs.shape[1:], dtype)
    # strict: a short regions_class_order would leave the last regions unpainted (dataset.json checks it too)
    for k, (region, value) in enumerate(zip(regions, dataset_json.regions_class_order, strict=True)):
        # fix: nested painting (nnU-Net paints each region alone)
        parents = [j for j, parent in enumerate(regions) if region < parent]
        labels[np.logical_and.reduce([on[k], *(on[j] for j in parents)])] = value
    return labels


def dataset_level_normalization(plans: Plans, channel: int, scheme: str) -> dict:
    """Inverse-normalisation parameters of a channel the case did not have (a synthesised channel): its scheme's
    dataset-level inverse (``data/modalities.py``). CT and PET come out in HU / SUV, physical units shared across
    scanners; z-scored MRI stays in the model's z-score units (``{"mean": 0, "std": 1}``: MRI has no physical unit,
    see ``modalities.ZSCORE``); NoNormalization: identity."""
    props = plans.foreground_intensity_properties_per_channel.get(str(channel))
    return normalizer(scheme).dataset_params(props)


def intensities_in_input_units(output: np.ndarray, properties: dict, plans: Plans, configuration: str) -> np.ndarray:
    """Invert each channel's normalisation: the case's own parameters for channels it had (same subject,
    same scanner); for synthesised channels it lacked, :func:`dataset_level_normalization` (CT/PET in
    physical units, MRI left in z-score units)."""
    schemes = plans.configuration(configuration).normalization_schemes
    out = np.empty_like(output)
    for c in range(output.shape[0]):
        params = properties["normalization"][c] or dataset_level_normalization(plans, c, schemes[c])
        out[c] = denormalize_channel(output[c], params, schemes[c])
    return out
