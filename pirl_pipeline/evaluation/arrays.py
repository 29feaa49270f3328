"""Array helpers shared by the metric modules: numpy arrays and torch tensors alike."""
from __future__ import annotations

import math

import numpy as np
import torch

Array = np.ndarray | torch.Tensor


def to_tensor(x: Array) -> torch.Tensor:
    """``x`` as a tensor sharing its memory; a read-only array (memory-mapped file) is copied first, since a
    tensor over read-only memory is undefined behaviour in torch."""
    if isinstance(x, torch.Tensor):
        return x
    x = np.asarray(x)
    return torch.as_tensor(x if x.flags.writeable else x.copy())


def to_bool_array(x: Array) -> np.ndarray:
    return x.bool().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x).astype(bool, copy=False)


def ratio(num: float, den: float) -> float:
    """num / den, NaN when den is not positive (a rate with nothing to count)."""
    return num / den if den > 0 else math.nan
