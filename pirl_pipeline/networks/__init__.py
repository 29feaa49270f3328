"""PIRL network: MONAI SwinUNETR encoder/decoder with the population prior O and heads on z."""

from pirl_pipeline.networks.heads import EquivarianceHead, ProjectionHead
from pirl_pipeline.networks.modalities import repeat_modality, scatter_mean, split_modalities
from pirl_pipeline.networks.pirl_net import PIRLNet, PIRLOutput
from pirl_pipeline.networks.prior import PriorFusion, attention_heads
from pirl_pipeline.networks.swinunetr_compat import SWINUNETR_MODULES, filter_swinunetr_state

__all__ = [
    "SWINUNETR_MODULES",
    "EquivarianceHead",
    "PIRLNet",
    "PIRLOutput",
    "PriorFusion",
    "ProjectionHead",
    "attention_heads",
    "filter_swinunetr_state",
    "repeat_modality",
    "scatter_mean",
    "split_modalities",
]
