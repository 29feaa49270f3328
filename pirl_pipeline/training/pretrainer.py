"""PIRL pre-training (Algorithm 1): all modalities of each subject, the four constraints, prior O."""
from __future__ import annotations

import dataclasses
import logging

import torch

from pirl_pipeline.dataloading import AugmentationConfig
from pirl_pipeline.losses.objective import TERMS, PIRLLossConfig, PIRLObjective
from pirl_pipeline.networks import PIRLNet
from pirl_pipeline.trainer_config import NETWORK_FIXES
from pirl_pipeline.training.base_trainer import BaseTrainer

log = logging.getLogger("pirl")


def loss_config_from(config) -> PIRLLossConfig:
    """The objective's switches and weights from the trainer config (Table-7 ablations by name)."""
    on = {t: t not in config.disabled for t in TERMS}
    weights = {t: getattr(config, f"w_{t}") for t in TERMS}  # TrainerConfig.w_<term>, one per objective term
    return PIRLLossConfig(**on, prior=config.use_prior, weights=weights, temperature=config.temperature,
                          skip_dropout=config.resolved("skip_dropout"),
                          # L_subj extends L_inv (pull + push): switching invariance off (Table 7) switches it off
                          subject_contrastive=0.0 if not on["invariance"] else config.resolved("subject_contrastive"),
                          queue_subject_ids=config.resolved("queue_subject_ids"))


class PIRLPretrainer(BaseTrainer):
    name = "PIRLPretrainer"
    clean_targets = True  # L_decom reconstructs the patch without the intensity augmentation

    def augmentation(self) -> AugmentationConfig:
        """nnU-Net's augmentation, mirroring only along axes that Φ does not already transform."""
        config = super().augmentation()
        if not config.enabled:
            return config
        free = self.objective.transforms.independent_mirror_axes(config.mirror_axes)
        if free != tuple(config.mirror_axes):
            # fix: mirroring both axes of Φ's rotation plane = a 180° rotation, so k and k+2 were indistinguishable
            log.info("pre-training mirrors axes %s only (Φ rotates in plane %s)", free, self.objective.transforms.plane)
        return dataclasses.replace(config, mirror_axes=free)

    def build_network(self) -> torch.nn.Module:
        block = self.ctx.plans.configuration(self.ctx.configuration).network
        net = PIRLNet.from_plans(block, in_channels=self.num_modalities, out_channels=self.num_modalities,
                                 patch_size=self.patch_size, feature_size=self.feature_size,
                                 use_prior=self.config.use_prior, **self.window_override(),
                                 **{k: self.config.resolved(k) for k in NETWORK_FIXES})
        return net

    def build_losses(self, network: torch.nn.Module) -> None:
        self.objective = PIRLObjective.for_model(network, loss_config_from(self.config)).to(self.device)

    def network_kwargs(self) -> dict:
        return {"kind": "pirl", **self.network.config}

    def uses_all_parameters(self) -> bool:
        """Every parameter gets a gradient when both heads and the decoder have a loss (Table-7 rows with
        equivariance or contrastive off leave a head idle: DDP must then look for unused parameters)."""
        cfg = self.objective.config
        return cfg.contrastive and cfg.equivariance and cfg.decomposition

    def _inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(network inputs, decomposition targets, foreground mask, (B, M) channels each subject has);
        validation batches have no augmentation."""
        images = batch["data"].to(self.device, non_blocking=True)
        targets = batch["target_image"].to(self.device, non_blocking=True) if "target_image" in batch else images
        mask = (batch["target"] >= 0).to(self.device, non_blocking=True)
        return images, targets, mask, batch.get("channels")

    def train_step(self, batch: dict) -> dict[str, float]:
        images, targets, mask, present = self._inputs(batch)
        self.objective.train()
        result = self.objective(self.model, images, mask, backward=self.backward, targets=targets,
                                autocast=self.autocast, present=present, subjects=batch.get("keys"))
        return {"loss": float(result.loss), **{t: float(v) for t, v in result.terms.items()}}

    def validation_step(self, batch: dict, step: int) -> dict[str, float]:
        images, targets, mask, present = self._inputs(batch)
        self.objective.eval()  # no queue update from validation data
        with self.autocast():
            result = self.objective(self.network, images, mask, targets=targets, present=present,
                                    subjects=batch.get("keys"))
        loss = float(result.loss)
        return {"loss": loss, "metric": -loss, **{t: float(v) for t, v in result.terms.items()}}

    def extra_state(self) -> dict:
        return {"objective": self.objective.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        if "objective" in state:
            self.objective.load_state_dict(state["objective"])
