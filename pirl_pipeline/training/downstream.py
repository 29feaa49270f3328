"""Fine-tuning and baselines (Algorithm 2): segmentation or translation with any network kind.

- seg: Dice + weighted CE (regions with sigmoid when dataset.json declares them, else softmax labels);
- translate: any modality subset -> all modalities, foreground L1 (or MSE);
- PIRLNet additionally gets L_inv across the available modalities of each subject, and sees each
  available modality on its own (X_h' fused by the mean); plain networks (SwinUNETR, DynUNet) get the
  stacked channels with the missing ones zeroed, the usual way a plain network handles them.
Random modality dropout (a uniformly drawn non-empty subset per sample) makes one model serve all
2^M - 1 subsets at inference.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.evaluation.metrics import dice, psnr
from pirl_pipeline.losses.invariance import InvarianceLoss
from pirl_pipeline.losses.segmentation import SegmentationLoss, labels_to_regions
from pirl_pipeline.losses.translation import TranslationLoss
from pirl_pipeline.networks.factory import create
from pirl_pipeline.networks.swinunetr_compat import filter_swinunetr_state
from pirl_pipeline.training.base_trainer import BaseTrainer, RunContext
from pirl_pipeline.training.checkpoint import load_checkpoint, transfer_weights
from pirl_pipeline.training.config import TrainerConfig
from pirl_pipeline.training.final_validation import validate_fold

log = logging.getLogger("pirl")


def random_subsets(batch: int, modalities: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, M) bool: a uniformly drawn non-empty modality subset per sample."""
    codes = torch.randint(1, 2**modalities, (batch,), generator=generator)
    return (codes[:, None] >> torch.arange(modalities)) & 1 == 1


class DownstreamTrainer(BaseTrainer):
    """Segmentation or translation for network kind ``pirl``, ``swinunetr`` or ``dynunet``."""

    def __init__(self, ctx: RunContext, config: TrainerConfig, *, name: str, network_kind: str,
                 pretrained: Path | None = None) -> None:
        self.name, self.network_kind, self.pretrained = name, network_kind, pretrained
        self.pretrained_state = load_checkpoint(pretrained) if pretrained else None
        dj = ctx.dataset_json
        self.regions = dj.regions() if dj.has_regions else None
        if config.task == "seg" and not dj.has_regions:
            classes = sorted(dj.label_values)
            if classes != list(range(len(classes))):
                raise PirlInputError(f"dataset.json labels must be consecutive 0..K for segmentation, got {classes}")
        super().__init__(ctx, config)
        self.inv_loss = InvarianceLoss()
        if config.task == "seg":
            self.loss = SegmentationLoss(self.regions).to(self.device)
        else:
            self.loss = TranslationLoss(config.translate_loss).to(self.device)

    @property
    def out_channels(self) -> int:
        if self.config.task == "translate":
            return self.num_modalities
        return len(self.regions) if self.regions else len(self.ctx.dataset_json.label_values)

    def build_network(self) -> torch.nn.Module:
        options = {"use_prior": self.config.use_prior} if self.network_kind == "pirl" else {}
        if self.pretrained_state is not None and self.network_kind == "pirl":
            source = self.pretrained_state["network_kwargs"]
            options = {k: source[k] for k in ("use_prior", "depths", "num_heads", "attn_heads") if k in source}
        net, self.description = create(self.network_kind, self.num_modalities, self.out_channels,
                                       self.patch_size, self.feature_size, **options)
        if self.pretrained_state is not None:
            weights = self.pretrained_state["network_weights"]
            if self.network_kind == "swinunetr":
                weights = filter_swinunetr_state(weights, include_out=True)
            elif self.network_kind == "dynunet":
                raise PirlInputError("DynUNet baselines train from scratch; drop --pretrained")
            transfer_weights(net, weights, str(self.pretrained))
        return net

    def network_kwargs(self) -> dict:
        return self.description

    def write_validation_summary(self) -> None:
        """Whole validation volumes through the sliding-window predictor (patch-level if raw data are absent)."""
        if validate_fold(self.network, self.network_kind, self.config.task, self.ctx, self.patch_size,
                         self.config.save_probabilities) is None:
            super().write_validation_summary()

    # ---- one step ------------------------------------------------------------------------------
    def _forward(self, model: torch.nn.Module, images: torch.Tensor,
                 available: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Output of ``model`` (the DDP wrapper or the bare network) and the L_inv term (0 for plain networks)."""
        if self.network_kind == "pirl":
            out = model(images, available=available, fuse=True, heads=False)
            inv = self.inv_loss.across_modalities(out.x_h_modalities, out.owner)
            return out.output, inv
        masked = images * available[:, :, None, None, None].to(images.device, images.dtype)
        return model(masked), images.new_zeros(())

    def _loss(self, output: torch.Tensor, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.config.task == "seg":
            return self.loss(output, target.clamp_min(0))
        return self.loss(output, images, target >= 0)

    def train_step(self, batch: dict) -> dict[str, float]:
        images = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"].to(self.device, non_blocking=True)
        batch_size = images.shape[0]
        if self.config.modality_dropout:
            available = random_subsets(batch_size, self.num_modalities)
        else:
            available = torch.ones(batch_size, self.num_modalities, dtype=torch.bool)
        with self.autocast():
            output, inv = self._forward(self.model, images, available)
            task_loss = self._loss(output, images, target)
            loss = task_loss + self.config.w_inv_finetune * inv
        self.backward(loss)
        return {"loss": loss.item(), self.config.task: task_loss.item(), "invariance": inv.item()}

    def validation_step(self, batch: dict, step: int) -> dict[str, float]:
        """seg: Dice per region/class with all modalities; translate: foreground PSNR of every output
        from one input modality (modality ``step % M``)."""
        images = batch["data"].to(self.device)
        target = batch["target"].to(self.device)
        available = torch.ones(images.shape[0], self.num_modalities, dtype=torch.bool)
        if self.config.task == "translate":
            available[:] = False
            available[:, step % self.num_modalities] = True
        with self.autocast():
            output, _ = self._forward(self.network, images, available)
        output = output.float()
        if self.config.task == "seg":
            return self._seg_metrics(output, target)
        mask = (target >= 0)[:, 0]
        values = [psnr(output[:, c][mask], images[:, c][mask]) for c in range(self.num_modalities)]
        return {"psnr": sum(values) / len(values), "metric": sum(values) / len(values)}

    def _seg_metrics(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        labels = target.clamp_min(0)
        if self.regions:
            pred, ref = logits.sigmoid() > 0.5, labels_to_regions(labels, self.regions).bool()
            names = [f"dice_{k.replace(' ', '_')}" for k, v in self.ctx.dataset_json.labels.items()
                     if isinstance(v, list) or v != 0]  # the regions, in dataset.json order
        else:
            classes = range(1, self.out_channels)
            pred = torch.stack([logits.argmax(1) == c for c in classes], 1)
            ref = torch.stack([labels[:, 0] == c for c in classes], 1)
            label_names = {v: k for k, v in self.ctx.dataset_json.labels.items() if isinstance(v, int)}
            names = [f"dice_{label_names.get(c, f'label{c}').replace(' ', '_')}" for c in classes]
        scores = {n: dice(pred[:, i], ref[:, i]) for i, n in enumerate(names)}
        return {**scores, "metric": sum(scores.values()) / len(scores)}
