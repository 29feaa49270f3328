"""Per-channel intensity normalisation; the scheme per channel is chosen by the planner from its modality.

- ``ZScoreNormalization`` (MRI): per image, z-score on the non-zero mask when ``use_mask`` (skull-stripped
  data), background set to 0; on the whole image otherwise.
- ``CTNormalization``: clip to the dataset's foreground percentiles 0.5/99.5, then z-score with the
  dataset's foreground mean/std (nnU-Net's scheme; Hounsfield units are comparable across images).
- ``PETNormalization`` (our choice, DESIGN §5): SUV is already a physical unit, so it is kept
  un-centred: ``max(SUV, 0) / p99.5`` of the dataset foreground. Background stays 0 and lesion
  contrast (SUV ratios) is preserved; no upper clip so hot lesions are not flattened.
Each normaliser also has an inverse, used to return synthesised modalities in the input's units.
"""
from __future__ import annotations

import numpy as np

EPS = 1e-8


def normalize_channel(image: np.ndarray, scheme: str, mask: np.ndarray | None, props: dict | None,
                      use_mask: bool) -> tuple[np.ndarray, dict]:
    """Normalise one channel (float32). Returns the image and the parameters needed to invert it."""
    image = image.astype(np.float32, copy=False)
    if scheme == "ZScoreNormalization":
        region = image[mask] if use_mask and mask is not None and mask.any() else image
        mean, std = float(region.mean()), float(region.std())
        out = (image - mean) / max(std, EPS)
        if use_mask and mask is not None:
            out[~mask] = 0
        return out, {"mean": mean, "std": std}
    if scheme == "CTNormalization":
        lo, hi = props["percentile_00_5"], props["percentile_99_5"]
        mean, std = props["mean"], props["std"]
        return (np.clip(image, lo, hi) - mean) / max(std, EPS), {"mean": mean, "std": std}
    if scheme == "PETNormalization":
        scale = max(props["percentile_99_5"], EPS)
        return np.maximum(image, 0) / scale, {"mean": 0.0, "std": scale}
    if scheme == "NoNormalization":
        return image, {"mean": 0.0, "std": 1.0}
    raise ValueError(f"unknown normalization scheme {scheme!r}")


def denormalize_channel(image: np.ndarray, params: dict) -> np.ndarray:
    """Invert :func:`normalize_channel` (affine part; clipping is not invertible)."""
    return image * params["std"] + params["mean"]
