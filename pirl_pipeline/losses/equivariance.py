"""L_equ: predict which phi ∈ Φ was applied, from z (before the prior)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class EquivarianceLoss(nn.Module):
    """L_equ = CE(F(z), t): logits (B, |Φ|), target transform indices t (B,) int -> scalar."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target.to(logits.device, torch.long))
