"""L_inv: X_h' of every modality of a subject is pulled to a detached running anchor."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class InvarianceLoss(nn.Module):
    """L_inv = mean((X_h' - sg(anchor))^2); x_h and anchor (B, C, *grid) -> scalar.

    The anchor is per subject: the first modality seen sets it, each later one is compared with it and
    then updates it, anchor <- (anchor + sg(X_h')) / 2 (Algorithm 1/2). Both are in the un-rotated frame:
    the caller applies phi^-1 to the bottleneck grid before (exact for Φ, see GeometricTransforms).
    """

    def forward(self, x_h: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(x_h.float(), anchor.detach().float())

    @staticmethod
    def update_anchor(anchor: torch.Tensor | None, x_h: torch.Tensor) -> torch.Tensor:
        """The new (detached) anchor after seeing x_h."""
        return x_h.detach() if anchor is None else (anchor + x_h.detach()) / 2

    def across_modalities(self, x_h: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        """Algorithm 2's L_inv over the modalities of each subject.

        x_h (N, C, *grid): one row per (subject, modality) (e.g. PIRLOutput.x_h_modalities, in channel
        order); owner (N,) subject index. Each subject's rows are visited in a random order (global torch
        RNG), as in Algorithm 1/2: the first only sets the detached anchor. Mean over all comparisons;
        0 (still attached to x_h) when no subject has two rows.
        """
        terms = []
        for subject in torch.unique(owner):
            anchor = None
            rows = x_h[owner == subject]
            # fix: a random order; in channel order the first modality was always the anchor, never pulled
            for row in rows[torch.randperm(rows.shape[0]).to(rows.device)]:
                if anchor is not None:
                    terms.append(self(row, anchor))
                anchor = self.update_anchor(anchor, row)
        return torch.stack(terms).mean() if terms else x_h.sum() * 0


class SubjectAnchors:
    """The running L_inv anchors of the B subjects of one Algorithm-1 batch, for subjects that may lack
    modalities: a subject's first modality sets its anchor, each later one is compared with it, then
    updates it (:meth:`InvarianceLoss.update_anchor`). Complete subjects: exactly the plain running anchor."""

    def __init__(self, batch: int) -> None:
        self.value: torch.Tensor | None = None  # (B, C, *grid), detached
        self.seen = torch.zeros(batch, dtype=torch.bool)

    def step(self, loss: InvarianceLoss, x_h: torch.Tensor, rows: torch.Tensor) -> torch.Tensor | None:
        """x_h (b, C, *grid) of the subjects where ``rows`` ((B,) bool, b of them True) is set; returns L_inv
        over those that already had an anchor (None if none had one)."""
        if self.value is None:
            self.value = x_h.new_zeros((self.seen.numel(), *x_h.shape[1:])).detach()
        index = rows.nonzero()[:, 0]
        seen = self.seen[index]
        on = seen.to(x_h.device)
        result = loss(x_h[on], self.value[index[seen]]) if bool(seen.any()) else None
        before = self.value[index]
        updated = torch.where(on[(...,) + (None,) * (x_h.dim() - 1)],
                              loss.update_anchor(before, x_h), x_h.detach())
        self.value[index] = updated.to(self.value.dtype)
        self.seen[index] = True
        return result
