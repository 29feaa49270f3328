"""L_ori for segmentation: Dice + weighted cross-entropy, on labels (softmax) or regions (sigmoid)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn


def labels_to_regions(label: torch.Tensor, regions: Sequence[Sequence[int]]) -> torch.Tensor:
    """Integer label map (B, 1, *S) -> (B, R, *S) float, channel r = label ∈ regions[r].

    BraTS 2023: regions ((1, 2, 3), (1, 3), (3,)) = WT, TC, ET; 2018/2021: ((1, 2, 4), (1, 4), (4,)).
    """
    label = label.long()
    return torch.cat([torch.isin(label, torch.as_tensor(r, device=label.device)) for r in regions], 1).float()


def class_weights_from_counts(counts: Sequence[float], total: float, max_weight: float = 2.0) -> list[float]:
    """Weights of the weighted cross-entropy (Algorithm 2) from training-label voxel counts.

    counts[k]: voxels of class (or region) k inside the body mask, total: body voxels. Weight
    sqrt(negatives / positives) = sqrt((total - n_k) / n_k), clipped to [1, max_weight]: rare classes count
    more, softened (square root) and capped so the CE does not push the sigmoid/softmax threshold far enough
    to over-paint (a BCE positive weight w moves the 0.5 decision to a true probability of 1 / (1 + w)).
    An absent class gets ``max_weight``; background (the most frequent class of exclusive labels) gets 1.
    """
    weights = []
    for n in counts:
        ratio = (total - n) / n if n > 0 else math.inf
        weights.append(float(min(max(math.sqrt(ratio), 1.0), max_weight)))
    return weights


class SegmentationLoss(nn.Module):
    """L_ori = dice_weight · Dice + ce_weight · weighted CE.

    regions None: logits (B, C, *S) over mutually exclusive classes, target (B, 1, *S) int labels 0..C-1;
        softmax Dice over the foreground classes + CE with ``class_weights`` (C,).
    regions given: logits (B, R, *S) of overlapping regions, target a label map (B, 1, *S) (always
        converted with ``labels_to_regions``) or region masks (B, R, *S); sigmoid Dice + BCE with
        ``class_weights`` (R,) as positive weights.
    """

    def __init__(
        self,
        regions: Sequence[Sequence[int]] | None = None,
        class_weights: Sequence[float] | None = None,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.regions = None if regions is None else [list(r) for r in regions]
        self.dice_weight, self.ce_weight = dice_weight, ce_weight
        if self.regions is None:
            self.dice = DiceLoss(softmax=True, to_onehot_y=True, include_background=False)
        else:
            self.dice = DiceLoss(sigmoid=True)
        weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float)
        self.register_buffer("class_weights", weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.regions is None:
            ce = F.cross_entropy(logits, target[:, 0].long(), weight=self.class_weights)
        else:
            if target.shape[1] == 1:  # a label map (B, 1, *S) is always converted
                target = labels_to_regions(target, self.regions)
            target = target.float()
            pos_weight = None
            if self.class_weights is not None:
                pos_weight = self.class_weights.view(-1, *([1] * (logits.dim() - 2)))
            ce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)
        return self.dice_weight * self.dice(logits, target) + self.ce_weight * ce
