"""PIRL losses: Algorithm 1's pre-training terms and objective, and the downstream losses."""

from pirl_pipeline.losses.contrastive import InfoNCELoss
from pirl_pipeline.losses.decomposition import DecompositionLoss
from pirl_pipeline.losses.equivariance import EquivarianceLoss
from pirl_pipeline.losses.geometric import GeometricTransforms
from pirl_pipeline.losses.invariance import InvarianceLoss
from pirl_pipeline.losses.objective import TABLE7, TERMS, PIRLLossConfig, PIRLObjective, StepResult
from pirl_pipeline.losses.segmentation import SegmentationLoss, labels_to_regions
from pirl_pipeline.losses.translation import TranslationLoss
from pirl_pipeline.losses.views import ViewAugmentation

__all__ = [
    "TABLE7",
    "TERMS",
    "DecompositionLoss",
    "EquivarianceLoss",
    "GeometricTransforms",
    "InfoNCELoss",
    "InvarianceLoss",
    "PIRLLossConfig",
    "PIRLObjective",
    "SegmentationLoss",
    "StepResult",
    "TranslationLoss",
    "ViewAugmentation",
    "labels_to_regions",
]
