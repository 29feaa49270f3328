"""PIRLNet: SwinUNETR encoder/decoder + population prior O + heads on z (docs/design.md §2)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from monai.networks.nets import SwinUNETR
from torch import nn

from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.networks.heads import EquivarianceHead, ProjectionHead
from pirl_pipeline.networks.modalities import (
    FUSIONS,
    availability_mask,
    scatter_max,
    scatter_mean,
    single_modality,
    split_modalities,
    split_slots,
)
from pirl_pipeline.networks.prior import PriorFusion
from pirl_pipeline.networks.swinunetr_compat import SWINUNETR_MODULES, filter_swinunetr_state, set_fused_attention

#: plans network-block key (plans/planner.py) -> PIRLNet argument; the one place the two vocabularies meet
PLANS_KEYS = {"feature_size": "feature_size", "depths": "depths", "num_heads": "num_heads",
              "prior_attention_heads": "attn_heads", "use_prior": "use_prior", "window_size": "window_size"}
PLANS_INFO_KEYS = ("architecture", "explanation")
SKIP_LEVELS = 5  # decoder skips, finest first: encoder1(x), encoder2..4(hidden[0..2]), hidden[3]

@dataclass
class PIRLOutput:
    """What one forward pass computed; fields a flag switched off are None.

    z:          (B, 16fs, *grid) deepest encoder state, before O (equivariance/contrastive act here).
    x_h:        (B, 16fs, *grid) X_h' = Fuse(z, T(Attn(z, O))), or z itself with use_prior=False.
    output:     (B, C_out, *patch) decoder output (decode=True).
    equ_logits: (B, |Φ|) equivariance logits on pool(z) ("equivariance" in heads).
    proj:       (B, proj_dim) un-normalised contrastive projection of pool(z) ("contrastive" in heads).
    view_proj:  (V*B, proj_dim) projections of the extra ``views`` inputs ("contrastive" in heads, views given).
    x_h_modalities, owner: per-(subject, modality) X_h' (N, 16fs, *grid) and its subject index (N,) —
                set by the modality path (``available`` given), for L_inv across modalities.
    """

    z: torch.Tensor
    x_h: torch.Tensor
    output: torch.Tensor | None = None
    equ_logits: torch.Tensor | None = None
    proj: torch.Tensor | None = None
    view_proj: torch.Tensor | None = None
    x_h_modalities: torch.Tensor | None = None
    owner: torch.Tensor | None = None


HEADS = ("equivariance", "contrastive")


def resolve_heads(heads: bool | Collection[str]) -> frozenset[str]:
    """True -> both heads, False -> none, else the named subset of HEADS (validated)."""
    if isinstance(heads, bool):
        return frozenset(HEADS) if heads else frozenset()
    unknown = set(heads) - set(HEADS)
    if unknown:
        raise ValueError(f"unknown head(s) {sorted(unknown)}; choose from {HEADS}")
    return frozenset(heads)


class PIRLNet(nn.Module):
    """Encoder E (MONAI SwinTransformer), prior O + fusion, SwinUNETR decoder D, heads on z.

    Submodules ``swinViT, encoder1..4, encoder10, decoder5..1, out`` are MONAI's own SwinUNETR modules
    (taken from a SwinUNETR instance, same names), so the weights exchange with a plain SwinUNETR.
    D receives X_h' where SwinUNETR receives its deepest hidden state; the skips come from E.
    With ``use_prior=False`` there is no O and X_h' = z: the network is exactly SwinUNETR plus heads.
    """

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 4,
        patch_size: Sequence[int] = (64, 64, 64),
        feature_size: int = 12,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        use_prior: bool = True,
        attn_heads: int = 3,
        num_transforms: int = 4,
        proj_dim: int = 512,
        norm_name: str | tuple = "instance",
        dropout_path_rate: float = 0.0,
        use_checkpoint: bool = False,
        use_flash_attention: bool = False,
        prior_attention: str = "dot",
        fusion: str = "mean",
        decoder_skips: int = SKIP_LEVELS,
    ) -> None:
        """``use_checkpoint`` (gradient checkpointing of the Swin blocks) and ``use_flash_attention`` (fused
        ``scaled_dot_product_attention`` window attention, in training too: ``set_fused_attention``) change
        how the network runs, not its weights or results (to float rounding); both are MONAI SwinUNETR's.
        ``prior_attention``: "dot" (the reference) or "cosine" (``PriorFusion``); ``fusion``: how modalities
        enter and combine, "mean" (the reference), "max" or "joint" (``modalities.FUSIONS``);
        ``decoder_skips``: how many of the 5 encoder skips, finest first, the decoder reads (5: all, the
        reference; the deeper ones are zeros, so the decoder's deep levels work from X_h' alone)."""
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if not 0 <= decoder_skips <= SKIP_LEVELS:
            raise ValueError(f"decoder_skips must be 0..{SKIP_LEVELS}, got {decoder_skips}")
        patch_size = tuple(int(p) for p in patch_size)
        if len(patch_size) != 3 or any(p % 32 for p in patch_size):
            raise ValueError(f"patch_size must be 3 sides, each a multiple of 32; got {patch_size}")
        self.config: dict[str, Any] = {
            "in_channels": in_channels, "out_channels": out_channels, "patch_size": list(patch_size),
            "feature_size": feature_size, "depths": list(depths), "num_heads": list(num_heads),
            "window_size": window_size, "use_prior": use_prior, "attn_heads": attn_heads,
            "num_transforms": num_transforms, "proj_dim": proj_dim, "norm_name": norm_name,
            "dropout_path_rate": dropout_path_rate, "use_checkpoint": use_checkpoint,
            "use_flash_attention": use_flash_attention, "prior_attention": prior_attention, "fusion": fusion,
            "decoder_skips": decoder_skips,
        }  # fmt: skip
        self.in_channels, self.out_channels, self.patch_size = in_channels, out_channels, patch_size
        self.use_prior, self.num_transforms, self.proj_dim = use_prior, num_transforms, proj_dim
        self.fusion, self.decoder_skips = fusion, decoder_skips
        base = SwinUNETR(**self.swinunetr_kwargs())
        for name in SWINUNETR_MODULES:
            setattr(self, name, getattr(base, name))
        set_fused_attention(self, use_flash_attention)
        channels = 16 * feature_size
        grid = tuple(p // 32 for p in patch_size)
        self.prior_fusion = PriorFusion(channels, grid, attn_heads, prior_attention) if use_prior else None
        self.equivariance_head = EquivarianceHead(channels, num_transforms)
        self.projection_head = ProjectionHead(channels, proj_dim)

    @staticmethod
    def options_from_plans(network: Mapping[str, Any]) -> dict[str, Any]:
        """Constructor arguments from the plans' network block, by :data:`PLANS_KEYS` (the planner's names, e.g.
        ``prior_attention_heads`` -> ``attn_heads``); ``architecture`` and ``explanation`` are information; any
        other key is an error (a hand edit that would otherwise do nothing)."""
        unknown = sorted(set(network) - set(PLANS_KEYS) - set(PLANS_INFO_KEYS))
        if unknown:
            raise PirlInputError(f"plans network block: unknown key(s) {', '.join(unknown)} "
                                 f"(known: {', '.join((*PLANS_KEYS, *PLANS_INFO_KEYS))})")
        return {PLANS_KEYS[k]: (tuple(v) if isinstance(v, list) else v) for k, v in network.items() if k in PLANS_KEYS}

    @classmethod
    def from_plans(
        cls, network: Mapping[str, Any], in_channels: int, out_channels: int, patch_size: Sequence[int], **overrides
    ) -> PIRLNet:
        """Build from the plans' network block (e.g. {"architecture": "PIRLNet", "feature_size": 48, ...}, see
        :meth:`options_from_plans`); ``overrides`` win over the block."""
        kwargs = cls.options_from_plans(network)
        kwargs.update(in_channels=in_channels, out_channels=out_channels, patch_size=tuple(patch_size))
        return cls(**(kwargs | overrides))

    @property
    def prior(self) -> nn.Parameter | None:
        """The learnable prior O (16fs, *grid), or None with use_prior=False."""
        return None if self.prior_fusion is None else self.prior_fusion.prior

    # ---- SwinUNETR compatibility -------------------------------------------------------------
    def swinunetr_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the plain MONAI SwinUNETR whose weights match this network."""
        keys = ("in_channels", "out_channels", "feature_size", "depths", "num_heads", "window_size", "norm_name",
                "dropout_path_rate", "use_checkpoint", "use_flash_attention")  # fmt: skip
        return {k: self.config[k] for k in keys}

    def to_swinunetr_state_dict(self, include_out: bool = True) -> dict[str, torch.Tensor]:
        """Encoder + decoder (+ output head) weights, loadable into SwinUNETR(**swinunetr_kwargs())."""
        return filter_swinunetr_state(self.state_dict(), include_out)

    def load_swinunetr_state_dict(self, state: Mapping[str, torch.Tensor], include_out: bool = True) -> None:
        """Load SwinUNETR weights (strict on the SwinUNETR part); O and the heads keep their values."""
        wanted = filter_swinunetr_state(self.state_dict(), include_out)
        given = filter_swinunetr_state(state, include_out)
        missing, unexpected = sorted(set(wanted) - set(given)), sorted(set(given) - set(wanted))
        if missing or unexpected:
            raise KeyError(f"SwinUNETR weights do not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.load_state_dict(given, strict=False)

    @classmethod
    def from_swinunetr(cls, swin: SwinUNETR | Mapping[str, torch.Tensor], **kwargs: Any) -> PIRLNet:
        """A PIRLNet(**kwargs) whose encoder/decoder/out weights are those of ``swin`` (module or state dict)."""
        net = cls(**kwargs)
        net.load_swinunetr_state_dict(swin.state_dict() if isinstance(swin, nn.Module) else swin)
        return net

    # ---- forward ------------------------------------------------------------------------------
    def bottleneck(self, z: torch.Tensor) -> torch.Tensor:
        """X_h' from z: the prior fusion, or z itself without the prior."""
        return z if self.prior_fusion is None else self.prior_fusion(z)

    def single_modality(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """The input that shows modality ``index`` of x (B, M, *patch) alone: repeated into every channel
        (fusion "mean"/"max", the reference) or in its own channel with the others zero ("joint")."""
        return single_modality(x, index, self.in_channels, self.fusion)

    def _skips(self, x: torch.Tensor, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
        """The decoder's 5 skips, finest first; beyond ``decoder_skips`` zeros of the skip's shape."""
        fs, size = self.config["feature_size"], x.shape[2:]
        blocks = [lambda: self.encoder1(x), lambda: self.encoder2(hidden[0]), lambda: self.encoder3(hidden[1]),
                  lambda: self.encoder4(hidden[2]), lambda: hidden[3]]
        shapes = [(fs, 1), (fs, 2), (2 * fs, 4), (4 * fs, 8), (8 * fs, 16)]  # (channels, stride) per level
        # fix: decoder_skips < 5: hidden[3] (= LN(x3)) holds what z holds, so with it D ignored X_h' (issue 23)
        return [block() if level < self.decoder_skips
                else x.new_zeros((x.shape[0], c, *(s // stride for s in size)))
                for level, (block, (c, stride)) in enumerate(zip(blocks, shapes))]

    def decode(self, x_h: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """D(X_h', skips) -> (B, C_out, *patch); skips as ``encode`` returns them."""
        enc0, enc1, enc2, enc3, hid3 = skips
        dec3 = self.decoder5(self.encoder10(x_h), hid3)
        dec0 = self.decoder2(self.decoder3(self.decoder4(dec3, enc3), enc2), enc1)
        return self.out(self.decoder1(dec0, enc0))

    def encode(self, x: torch.Tensor, skips: bool = True) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(z, X_h', decoder skips ([] when ``skips`` is False)) of a network input x (B, C_in, *patch)."""
        hidden = self.swinViT(x, normalize=True)
        return hidden[4], self.bottleneck(hidden[4]), (self._skips(x, hidden) if skips else [])

    def _fuse(self, t: torch.Tensor, owner: torch.Tensor, batch: int) -> torch.Tensor:
        return scatter_max(t, owner, batch) if self.fusion == "max" else scatter_mean(t, owner, batch)

    def forward(
        self,
        x: torch.Tensor,
        *,
        available: torch.Tensor | Sequence[int] | None = None,
        fuse: bool = True,
        per_modality: bool = False,
        views: torch.Tensor | None = None,
        view_grad: bool = True,
        decode: bool = True,
        drop_skips: torch.Tensor | None = None,
        heads: bool | Collection[str] = True,
    ) -> PIRLOutput:
        """Run the network.

        x: (B, C_in, *patch) network input; or, with ``available``, a modality stack (B, M, *patch).
        available: (B, M) bool mask or list of modality indices. fuse=True: one output per subject (B, ...) from
            its available modalities, combined by ``self.fusion``: "mean"/"max" feed each (subject, modality)
            alone (repeated into C_in channels) and fuse X_h', z and every decoder skip over the subject's
            modalities; "joint" feeds them together, the missing channels zeroed. fuse=False: each pair is
            decoded on its own -> output (N, ...), ``owner`` mapping rows to subjects.
        per_modality: with ``available``, also set ``x_h_modalities``/``owner`` (one X_h' per available pair,
            for L_inv): free for "mean"/"max"; "joint" encodes each pair once more (encoder only).
        views: extra inputs (V*B, C_in, *patch) encoded by E only; their projections land in ``view_proj``
            (Algorithm 1's augmented views); computed without gradient when ``view_grad`` is False.
        decode: skip the decoder when False.
        drop_skips: (B,) bool, rows whose decoder skips are replaced by zeros (the decoder must then work from
            X_h' alone; pre-training's ``skip_dropout``).
        heads: which heads on z run: True (both), False (none) or a subset of HEADS = ("equivariance",
            "contrastive"). A head that does not run leaves its parameters without gradient, so a loss
            that is off must not run its head (DDP checks that every used parameter got one).
        """
        heads = resolve_heads(heads)
        if self.prior_fusion is not None and tuple(x.shape[2:]) != self.patch_size:
            raise ValueError(f"input {tuple(x.shape[2:])} != patch {self.patch_size}: the prior grid fixes the size")
        view_proj = None
        if "contrastive" in heads and views is not None:  # first: gradient-free views then never coexist with the main graph
            with torch.set_grad_enabled(view_grad and torch.is_grad_enabled()):
                view_proj = self.projection_head(self.swinViT(views, normalize=True)[4])
        owner, batch, rows = None, x.shape[0], None
        if available is not None:
            if self.fusion == "joint" and fuse:  # fix: joint input; the mean let T1 cancel FLAIR's lesion
                mask = availability_mask(available, batch, x.shape[1]).to(x.device, x.dtype)
                x = x * mask[(...,) + (None,) * (x.dim() - 2)]
                if per_modality:
                    singles, owner = split_slots(x, mask.bool())
                    rows = self.encode(singles, skips=False)[1]
            elif self.fusion == "joint":
                x, owner = split_slots(x, available)
            else:
                x, owner, _ = split_modalities(x, available, self.in_channels)
        z, x_h, skips = self.encode(x, skips=decode)
        result = PIRLOutput(z=z, x_h=x_h, view_proj=view_proj)
        if owner is not None:
            result.x_h_modalities, result.owner = (x_h if rows is None else rows), owner
            if fuse and self.fusion != "joint":
                z, x_h = self._fuse(z, owner, batch), self._fuse(x_h, owner, batch)
                skips = [self._fuse(s, owner, batch) for s in skips]
                result.z, result.x_h = z, x_h
        if decode:
            if drop_skips is not None and bool(drop_skips.any()):
                keep = (~drop_skips).to(x_h.device, x_h.dtype)
                skips = [s * keep[(...,) + (None,) * (s.dim() - 1)] for s in skips]
            result.output = self.decode(x_h, skips)
        # fix: both heads act on z, before O (the reference puts them after O; Table 7 row 3 vs 6)
        if "equivariance" in heads:
            result.equ_logits = self.equivariance_head(z)
        if "contrastive" in heads:
            result.proj = self.projection_head(z)
        return result

    def encode_modalities(self, x: torch.Tensor, available: torch.Tensor | Sequence[int], **kwargs: Any) -> PIRLOutput:
        """Missing-modality path: the available modalities of x (B, M, *patch), combined by ``self.fusion``."""
        return self(x, available=available, **kwargs)
