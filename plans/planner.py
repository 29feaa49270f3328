"""The planner: from a fingerprint to ``PIRLPlans.json`` (configuration ``3d_fullres``).

Rules (each explained again inside the JSON, so a reader of the plans sees why):
- target spacing: the median spacing; for anisotropic data (coarsest axis > 3x the finest and its
  median size < 1/3 of the others') the coarse axis takes the 10th percentile instead (nnU-Net's rule);
- patch size: 96^3 by default (the paper); a side shrinks toward the median resampled shape when images
  are smaller (rounded to a multiple of 32, SwinUNETR's constraint), never below 64 (32^3 leaves a 1^3
  bottleneck that instance norm cannot normalise); images smaller than that (PET crops ~30 voxels across) are
  padded when patches are drawn (image 0, label -1: not learnt), and the share of padding is explained and,
  above half a patch, warned about;
- normalisation per channel from the modality name's kind (``data/modalities.py``: MRI z-score on the non-zero
  mask, CT, PET), explained with the dataset's numbers;
- network: the paper's SwinUNETR backbone, feature_size 48 (override with ``--feature-size`` for CPUs).
"""
from __future__ import annotations

import logging

import numpy as np

from pirl_pipeline.data.dataset_json import DatasetJson
from pirl_pipeline.data.geometry import ANISOTROPY_THRESHOLD, shape_for_spacing
from pirl_pipeline.data.modalities import modality, normalizer
from plans.plans_manager import ConfigurationPlans, Plans

log = logging.getLogger("pirl")
DEFAULT_PATCH = 96
MIN_PATCH = 64


def target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> list[float]:
    spacings, shapes = np.asarray(spacings, float), np.asarray(shapes, float)
    target = np.median(spacings, axis=0)
    median_shape = np.median(shapes, axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(len(target)) if a != worst]
    anisotropic_spacing = target[worst] > ANISOTROPY_THRESHOLD * min(target[others])
    anisotropic_shape = median_shape[worst] * ANISOTROPY_THRESHOLD < min(median_shape[others])
    if anisotropic_spacing and anisotropic_shape:
        target[worst] = max(np.percentile(spacings[:, worst], 10), max(target[others]))
    return [float(s) for s in target]


def patch_size_for(median_shape: list[float], default: int = DEFAULT_PATCH) -> list[int]:
    """Each side: the default, or the median side rounded to a multiple of 32 when smaller, >= 64."""
    sides = []
    for side in median_shape:
        rounded = int(np.floor(side / 32.0 + 0.5)) * 32  # nearest multiple, halves up
        sides.append(int(min(default, max(MIN_PATCH, rounded))))
    return sides


def padding_fraction(median_shape: list[float], patch_size: list[int]) -> float:
    """The share of a patch that lies outside an image of the median shape, 0..1 (0: the image fills it)."""
    return float(1 - np.prod([min(m, p) for m, p in zip(median_shape, patch_size)]) / np.prod(patch_size))


def normalization_explanation(channel_names: dict[str, str], schemes: list[str], props: dict) -> str:
    """One clause per channel: what its scheme does, with this dataset's foreground statistics ``props``."""
    return "from the channel names; " + "; ".join(f"{c} ({channel_names[str(c)]}): "
                                                  f"{normalizer(scheme).explain(props[str(c)])}"
                                                  for c, scheme in enumerate(schemes))


def network_block(patch_size: list[int], feature_size: int = 48) -> dict:
    bottleneck = [p // 32 for p in patch_size]
    return {
        "architecture": "PIRLNet",
        "feature_size": feature_size,
        "depths": [2, 2, 2, 2],
        "num_heads": [3, 6, 12, 24],
        "prior_attention_heads": 3,
        "use_prior": True,
        "explanation": (
            f"SwinUNETR backbone as in the paper (patch 2, window 7, depths 2-2-2-2, heads 3-6-12-24). "
            f"feature_size {feature_size} is the paper's; the bottleneck z and the prior O are "
            f"(16*{feature_size}={16 * feature_size}, {bottleneck[0]}, {bottleneck[1]}, {bottleneck[2]}). "
            f"On a CPU use `pirl_train ... --feature-size 12` (any multiple of 12)."),
    }


def plan(fingerprint: dict, dj: DatasetJson, dataset_name: str, configuration: str = "3d_fullres",
         spacing_override: list[float] | None = None) -> Plans:
    """Plans from a fingerprint; ``spacing_override`` replaces the rule-based target spacing (e.g. a coarser
    grid for CPU experiments, like nnU-Net's ``-overwrite_target_spacing``)."""
    spacings = np.array(fingerprint["spacings"], float)
    shapes = np.array(fingerprint["shapes_after_cropping"], float)
    rule_spacing = target_spacing(spacings, shapes)
    spacing = [float(s) for s in spacing_override] if spacing_override else rule_spacing
    resampled = np.array([shape_for_spacing(sh, sp, spacing) for sh, sp in zip(shapes, spacings)], float)
    median_shape = [float(v) for v in np.median(resampled, axis=0)]
    patch = patch_size_for(median_shape)
    padding = padding_fraction(median_shape, patch)
    if padding > 0.5:
        log.warning("plans: patch %s is larger than the median image %s: %.0f%% of a patch is padding (image 0, "
                    "label -1, not learnt); a finer --spacing, or converting onto a finer channel's grid, gives the "
                    "network more voxels", patch, [round(s) for s in median_shape], 100 * padding)
    kinds = fingerprint["modality_kinds"]
    normalizers = [modality(dj.channel_names[str(c)]).normalizer for c in range(dj.num_channels)]
    schemes = [n.scheme for n in normalizers]
    cropped_fraction = float(np.mean(np.prod(shapes, 1) / np.prod(fingerprint["shapes_before_cropping"], 1)))
    use_mask = [n.uses_body_mask and cropped_fraction < 0.75 for n in normalizers]
    batch_size = 2
    config = ConfigurationPlans(
        name=configuration,
        data_identifier=f"pirl_plans_{configuration}",
        spacing=spacing,
        patch_size=patch,
        batch_size=batch_size,
        median_image_size_in_voxels=median_shape,
        normalization_schemes=schemes,
        use_mask_for_norm=use_mask,
        resampling={"data_order": 3, "label": "linear per class", "anisotropy_threshold": ANISOTROPY_THRESHOLD},
        network=network_block(patch),
        extra={"explanation": {
            "spacing": ("median spacing of the training cases (10th percentile on a coarse anisotropic axis)"
                        if not spacing_override else
                        f"set by the user (--spacing); the rule would give {[round(v, 3) for v in rule_spacing]}"),
            "patch_size": f"default {DEFAULT_PATCH}^3 (paper); a side shrinks toward the median resampled "
                          f"shape {[round(s) for s in median_shape]} when smaller, multiple of 32, >= {MIN_PATCH}"
                          + (f"; smaller images are padded when patches are drawn ({padding:.0%} of a patch at "
                             "the median shape)" if padding else ""),
            "normalization_schemes": normalization_explanation(
                dj.channel_names, schemes, fingerprint["foreground_intensity_properties_per_channel"]),
            "batch_size": "2 subjects per step (nnU-Net's 3d_fullres default); each subject yields one "
                          "forward pass per modality during pre-training",
            "use_mask_for_norm": f"z-score on the non-zero mask when cropping removed > 25% of the image "
                                 f"(here the crop kept {cropped_fraction:.0%} on average)",
        }},
    )
    return Plans(
        dataset_name=dataset_name,
        plans_name="PIRLPlans",
        channel_names=dict(dj.channel_names),
        modality_kinds=list(kinds),
        labels=dict(dj.labels),
        regions_class_order=dj.regions_class_order,
        foreground_intensity_properties_per_channel=fingerprint["foreground_intensity_properties_per_channel"],
        configurations={configuration: config},
        extra={"nonzero_intensity_properties_per_channel": fingerprint["nonzero_intensity_properties_per_channel"],
               "original_median_spacing": [float(v) for v in np.median(spacings, 0)],
               "original_median_shape_after_cropping": [float(v) for v in np.median(shapes, 0)]},
    )
