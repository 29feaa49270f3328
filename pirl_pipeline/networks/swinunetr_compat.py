"""Weight exchange between PIRLNet and a plain MONAI SwinUNETR (Table 8: "SwinUNETR with PIRL pre-training"),
and the execution options of MONAI's Swin encoder that leave the weights alone (fused attention, gradient
checkpointing).

PIRLNet holds MONAI's SwinUNETR submodules under the SAME attribute names, so the exchange is a key
filter: every key whose first component is one of SWINUNETR_MODULES belongs to SwinUNETR; the prior
path and the heads (``prior_fusion.*``, ``equivariance_head.*``, ``projection_head.*``) do not.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from monai.networks.nets.swin_unetr import SwinTransformerBlock, WindowAttention
from torch import nn

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


# ---- execution options of MONAI's Swin encoder (no effect on the weights) -----------------------------
class FusedWindowAttention(WindowAttention):
    """MONAI's ``WindowAttention`` whose ``use_flash_attention`` path (``scaled_dot_product_attention`` with the
    relative-position bias and the shifted-window mask as an additive bias) also runs with autograd on;
    MONAI uses it only without gradients. Same parameters and buffers, same results to float rounding."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if not self.use_flash_attention or torch.jit.is_scripting():
            return super().forward(x, mask)
        b, n, c = x.shape
        heads = self.num_heads
        q, k, v = self.qkv(x).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        index = self.relative_position_index[:n, :n].reshape(-1)
        bias = self.relative_position_bias_table[index].reshape(n, n, heads).permute(2, 0, 1)
        if mask is not None:
            nw = mask.shape[0]
            bias = bias.view(1, 1, heads, n, n) + mask.to(bias.dtype).reshape(1, nw, 1, n, n)
            bias = bias.expand(b // nw, nw, heads, n, n).reshape(b, heads, n, n)
        else:
            bias = bias.unsqueeze(0)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=self.scale,
                                           dropout_p=self.attn_drop.p if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


def set_fused_attention(module: nn.Module, enabled: bool = True) -> int:
    """Switch every Swin window attention inside ``module`` (PIRLNet, SwinUNETR, ...) to the fused
    ``scaled_dot_product_attention`` path (training and inference) or back to MONAI's explicit one.
    Returns how many attention modules were switched (0 for networks without Swin blocks)."""
    count = 0
    for m in module.modules():
        if isinstance(m, WindowAttention):
            m.__class__ = FusedWindowAttention if enabled else WindowAttention
            m.use_flash_attention = enabled
            count += 1
    return count


def set_gradient_checkpointing(module: nn.Module, enabled: bool = True) -> int:
    """Recompute each Swin block's activations in the backward pass (MONAI's ``use_checkpoint``): less
    memory, ~30% more compute. Returns how many blocks were switched."""
    count = 0
    for m in module.modules():
        if isinstance(m, SwinTransformerBlock):
            m.use_checkpoint = enabled
            count += 1
    return count
