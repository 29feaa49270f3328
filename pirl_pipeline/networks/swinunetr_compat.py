"""Weight exchange between PIRLNet and a plain MONAI SwinUNETR (Table 8: "SwinUNETR with PIRL pre-training").

PIRLNet holds MONAI's SwinUNETR submodules under the SAME attribute names, so the exchange is a key
filter: every key whose first component is one of SWINUNETR_MODULES belongs to SwinUNETR; the prior
path and the heads (``prior_fusion.*``, ``equivariance_head.*``, ``projection_head.*``) do not.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

SWINUNETR_MODULES = (
    "swinViT",
    "encoder1",
    "encoder2",
    "encoder3",
    "encoder4",
    "encoder10",
    "decoder5",
    "decoder4",
    "decoder3",
    "decoder2",
    "decoder1",
    "out",
)
ENCODER_DECODER_MODULES = SWINUNETR_MODULES[:-1]  # everything but the output head


def is_swinunetr_key(key: str, include_out: bool = True) -> bool:
    """True when ``key`` names a SwinUNETR parameter/buffer (optionally excluding the ``out`` head)."""
    return key.split(".", 1)[0] in (SWINUNETR_MODULES if include_out else ENCODER_DECODER_MODULES)


def filter_swinunetr_state(state: Mapping[str, torch.Tensor], include_out: bool = True) -> dict[str, torch.Tensor]:
    """The SwinUNETR part of a PIRLNet (or SwinUNETR) state dict."""
    return {k: v for k, v in state.items() if is_swinunetr_key(k, include_out)}
