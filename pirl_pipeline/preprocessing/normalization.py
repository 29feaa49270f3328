"""Per-channel intensity normalisation by the plans' scheme name; the planner chooses a channel's scheme from its
modality kind. The schemes themselves (ZScore for MRI, CT, PET, None) and their inverses live with the kinds, in
``data/modalities.py``: a new kind brings its scheme there."""
from __future__ import annotations

import numpy as np

from pirl_pipeline.data.modalities import normalizer


def normalize_channel(image: np.ndarray, scheme: str, mask: np.ndarray | None, props: dict | None,
                      use_mask: bool) -> tuple[np.ndarray, dict]:
    """Normalise one channel (float32). Returns the image and the parameters needed to invert it."""
    return normalizer(scheme).normalize(image, mask, props, use_mask)


def denormalize_channel(image: np.ndarray, params: dict, scheme: str) -> np.ndarray:
    """Invert :func:`normalize_channel` with its parameters (affine part; clipping is not invertible)."""
    return normalizer(scheme).inverse(image, params)
