"""Fine-tuning and baselines (Algorithm 2): segmentation or translation with any network kind.

- seg: Dice + weighted CE (regions with sigmoid when dataset.json declares them, else softmax labels);
- translate: any modality subset -> all modalities, foreground L1 (or MSE);
- PIRLNet additionally gets L_inv across the available modalities of each subject, and sees each
  available modality on its own (X_h' fused by the mean); plain networks (SwinUNETR, DynUNet) get the
  stacked channels with the missing ones zeroed, the usual way a plain network handles them.
Random modality dropout (a uniformly drawn non-empty subset per sample; ``full_modality_share`` of the samples
keep all their modalities) makes one model serve all 2^M - 1 subsets at inference.

Translation targets are the patch without intensity augmentation (``target_image``): the input modalities
are augmented, what the network must synthesise is not. Each epoch ends with whole-volume validation
(``volume_validation``), which decides the 'best' checkpoint.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from pirl_pipeline.checkpoint import PretrainedWeights, transfer_weights
from pirl_pipeline.dataloading import PreprocessedDataset
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.evaluation.image_similarity import psnr
from pirl_pipeline.losses.invariance import InvarianceLoss
from pirl_pipeline.losses.segmentation import SegmentationLoss, class_weights_from_counts
from pirl_pipeline.losses.translation import TranslationLoss
from pirl_pipeline.networks import PIRLNet, factory
from pirl_pipeline.networks.swinunetr_compat import filter_swinunetr_state
from pirl_pipeline.networks.transfer import head_rows_by_name
from pirl_pipeline.tasks import get_task
from pirl_pipeline.trainer_config import NETWORK_FIXES, VARIANTS, TrainerConfig
from pirl_pipeline.training.base_trainer import BaseTrainer, RunContext
from pirl_pipeline.training.final_validation import validate_fold
from pirl_pipeline.training.volume_validation import segmentation_scores, validate_volumes

log = logging.getLogger("pirl")


def random_subsets(batch: int, modalities: int, generator: torch.Generator | None = None,
                   present: torch.Tensor | None = None, keep_all: float = 0.0) -> torch.Tensor:
    """(B, M) bool: a uniformly drawn non-empty subset per sample of the modalities it has (``present``
    (B, M) bool, each row non-empty; None: all); with probability ``keep_all`` a sample keeps all of them."""
    if present is None or bool(present.all()):
        codes = torch.randint(1, 2**modalities, (batch,), generator=generator)
        subsets = (codes[:, None] >> torch.arange(modalities)) & 1 == 1
    else:
        subsets = torch.zeros(batch, modalities, dtype=torch.bool)
        for b in range(batch):
            channels = present[b].nonzero()[:, 0]
            code = torch.randint(1, 2 ** len(channels), (1,), generator=generator)
            subsets[b, channels] = (code >> torch.arange(len(channels))) & 1 == 1
    if keep_all > 0:  # drawn after the subsets, so keep_all 0 leaves the random stream as it was
        keep = torch.rand(batch, generator=generator) < keep_all
        subsets[keep] = True if present is None else present[keep]
    return subsets


class DownstreamTrainer(BaseTrainer):
    """Segmentation or translation for network kind ``pirl``, ``swinunetr`` or ``dynunet``."""

    def __init__(self, ctx: RunContext, config: TrainerConfig, *, name: str, network_kind: str,
                 pretrained: PretrainedWeights | None = None, network: dict | None = None) -> None:
        """pretrained: initial weights (``checkpoint.load_pretrained``); network: a description to build instead
        (``--c``: the checkpoint's network, whose weights ``resume`` then loads)."""
        super().__init__(ctx, config)
        self.name, self.network_kind, self.pretrained, self.resumed_network = name, network_kind, pretrained, network
        dj = ctx.dataset_json
        self.task = get_task(config.task)
        self.regions = dj.regions() if dj.has_regions else None
        if self.task.predicts_labels and not dj.has_regions:
            classes = sorted(dj.label_values)
            if classes != list(range(len(classes))):
                raise PirlInputError(f"dataset.json labels must be consecutive 0..K for segmentation, got {classes}")

    def build_losses(self, network: torch.nn.Module) -> None:
        self.inv_loss = InvarianceLoss()
        if self.task.predicts_labels:
            weights = self.class_weights() if self.config.class_weights == "auto" else None
            self.loss = SegmentationLoss(self.regions, class_weights=weights).to(self.device)
        else:
            self.loss = TranslationLoss(self.config.translate_loss).to(self.device)

    @property
    def clean_targets(self) -> bool:  # translation: the targets are the un-augmented modalities
        return not self.task.predicts_labels

    def label_frequencies(self, max_cases: int = 50) -> list[float]:
        """Share of the body voxels of each output channel (region, or exclusive class) in the training
        labels (at most ``max_cases`` cases, evenly spread); cached."""
        if getattr(self, "_frequencies", None) is None:
            dataset = PreprocessedDataset(self.ctx.preprocessed_folder, self.ctx.train_cases)
            names = dataset.case_names[:: max(1, len(dataset) // max_cases)][:max_cases]
            values = [list(r) for r in self.regions] if self.regions else [[c] for c in range(self.out_channels)]
            counts, total = np.zeros(len(values)), 0
            for name in names:
                body = np.asarray(dataset.arrays(name)[1])
                body = body[body >= 0]
                total += body.size
                counts += [np.isin(body, v).sum() for v in values]
            self._frequencies = (counts / max(total, 1)).tolist()
            log.info("training labels: body share per output channel %s (%d cases)",
                     [round(f, 4) for f in self._frequencies], len(names))
        return self._frequencies

    def class_weights(self) -> list[float]:
        """Weights of the weighted CE (Algorithm 2), see ``class_weights_from_counts``."""
        weights = class_weights_from_counts(self.label_frequencies(), 1.0, self.config.class_weight_max)
        log.info("weighted CE: class weights %s", [round(w, 2) for w in weights])
        return weights

    def init_output_prior(self, net: torch.nn.Module) -> None:
        """Output bias = log-odds (sigmoid regions) or log-share (softmax classes) of the training labels'
        frequencies, so an untrained channel starts near its prior instead of at 0.5."""
        block = getattr(net, "out", None) or getattr(net, "output_block", None)
        frequencies = torch.tensor(self.label_frequencies(), dtype=torch.float).clamp(1e-4, 1 - 1e-4)
        prior = frequencies.logit() if self.regions else frequencies.log()
        with torch.no_grad():
            # fix: an undecided region channel (bias 0, p = 0.5 everywhere) was painted over the whole brain
            block.conv.conv.bias.copy_(prior)

    def validate_volumes(self, cases: list[str]) -> list[dict[str, float]]:
        if not self.config.val_volumes or not cases:
            return []
        dataset = PreprocessedDataset(self.ctx.preprocessed_folder, cases)
        return validate_volumes(self.network, self.network_kind, self.task, dataset, cases, self.patch_size,
                                self.ctx.dataset_json, self.device)

    @property
    def out_channels(self) -> int:
        return self.task.out_channels(self.ctx.dataset_json, self.num_modalities)

    def build_network(self) -> torch.nn.Module:
        if self.resumed_network is not None:  # weights, optimiser and output bias come from the checkpoint
            self.description = dict(self.resumed_network)
            return factory.build_network(self.description)
        source = self.pretrained
        options = {}
        if self.network_kind == "pirl":  # the plans' depths, heads and prior heads (hand edits included)
            block = self.ctx.plans.configuration(self.ctx.configuration).network
            options = {k: v for k, v in PIRLNet.options_from_plans(block).items() if k != "feature_size"}
            options["use_prior"] = self.config.use_prior
            options |= {k: self.config.resolved(k) for k in NETWORK_FIXES} | self.window_override()
        elif self.network_kind == "swinunetr":
            options = self.window_override()
        elif self.config.window_size is not None and source is None:  # with weights: the error below
            raise PirlInputError(f"--window-size: a {self.network_kind} network has no attention window")
        if source is not None and self.network_kind == "pirl" and (source.network_kwargs or {}).get("kind") == "pirl":
            inherited = {k: source.network_kwargs[k] for k in ("use_prior", "depths", "num_heads", "attn_heads",
                                                               "window_size", *NETWORK_FIXES)
                         if k in source.network_kwargs}
            # saved before a fix existed: the network ran the reference behaviour
            inherited = {k: VARIANTS["paper"][k] for k in NETWORK_FIXES} | inherited
            wanted = self.config.window_size
            if wanted is not None and "window_size" in inherited and wanted != inherited["window_size"]:
                raise PirlInputError(f"--window-size {wanted}: {source.path} was trained with window "
                                     f"{inherited['window_size']} (its attention tables have that size); drop the flag")
            for key in NETWORK_FIXES:  # set explicitly (not by the variant) and different: refuse
                wanted = getattr(self.config, key)
                if wanted is not None and wanted != inherited[key]:
                    raise PirlInputError(f"--set {key}={wanted}: {source.path} was pre-trained with {key} "
                                         f"{inherited[key]!r}, which its encoder learned; drop the setting")
                if self.config.resolved(key) != inherited[key]:  # the config records what the network uses
                    log.warning("%s %r from %s (variant %r would use %r)", key, inherited[key], source.path,
                                self.config.variant, self.config.resolved(key))
            options = inherited
        net, self.description = factory.create(self.network_kind, self.num_modalities, self.out_channels,
                                               self.patch_size, self.feature_size, **options)
        if source is not None:
            if self.network_kind == "dynunet":
                raise PirlInputError("DynUNet baselines train from scratch: no pretrained weights")
            weights = source.weights
            if self.network_kind == "swinunetr":
                weights = filter_swinunetr_state(weights, include_out=True)
            transfer_weights(net, weights, str(source.path), head_rows=self.head_rows(source),
                             stem_rows=self.stem_rows(source))
        if self.task.predicts_labels:  # after the transfer: a pre-trained output layer predicted intensities
            self.init_output_prior(net)
        return net

    def stem_rows(self, source: PretrainedWeights) -> list[int | None] | None:
        """Source input channel of each input channel, by modality name, for a source whose stem reads each
        modality in its own channel (PIRLNet fusion "joint"); None (the stem is summed) otherwise."""
        if (source.network_kwargs or {}).get("fusion") != "joint":
            return None
        names = [self.ctx.dataset_json.channel_names[str(c)] for c in range(self.num_modalities)]
        if not source.input_modalities:
            raise PirlInputError(f"{source.path}: a joint-fusion network without its channel names; cannot map "
                                 "its input channels onto this dataset's")
        return head_rows_by_name(names, source.input_modalities)

    def head_rows(self, source: PretrainedWeights) -> list[int | None]:
        """Source row of each output channel: translation takes the source's row of the same modality (by
        ``channel_names``, aliases such as T1c = T1ce count); segmentation's head, and modalities the source
        did not output, start fresh (Algorithm 2: a new output head)."""
        if self.task.predicts_labels or not source.output_modalities:
            return [None] * self.out_channels
        names = [self.ctx.dataset_json.channel_names[str(c)] for c in range(self.num_modalities)]
        rows = head_rows_by_name(names, source.output_modalities)
        log.info("output head by modality name: %s", ", ".join(
            f"{n} <- {source.output_modalities[r]}" if r is not None else f"{n} freshly initialised (not in the "
            f"source's {', '.join(source.output_modalities)})" for n, r in zip(names, rows)))
        return rows

    def network_kwargs(self) -> dict:
        return self.description

    def uses_all_parameters(self) -> bool:
        """A fine-tuned PIRLNet never runs its heads on z (DDP must look for unused parameters); the plain
        networks use every parameter in every step."""
        return self.network_kind != "pirl"

    def write_validation_summary(self) -> None:
        """Whole validation volumes through the sliding-window predictor (patch-level if raw data are absent)."""
        if validate_fold(self.network, self.network_kind, self.task, self.ctx, self.patch_size,
                         self.config.save_probabilities) is None:
            super().write_validation_summary()

    # ---- one step ------------------------------------------------------------------------------
    def _forward(self, model: torch.nn.Module, images: torch.Tensor,
                 available: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Output of ``model`` (the DDP wrapper or the bare network) and the L_inv term (0 for plain networks)."""
        if self.network_kind == "pirl":
            with_inv = self.config.w_inv_finetune > 0 and model.training
            out = model(images, available=available, fuse=True, per_modality=with_inv, heads=False)
            if out.x_h_modalities is None:
                return out.output, images.new_zeros(())
            return out.output, self.inv_loss.across_modalities(out.x_h_modalities, out.owner)
        masked = images * available[:, :, None, None, None].to(images.device, images.dtype)
        return model(masked), images.new_zeros(())

    def _loss(self, output: torch.Tensor, images: torch.Tensor, target: torch.Tensor,
              present: torch.Tensor) -> torch.Tensor:
        """seg: labels ``target``; translate: ``images`` (the un-augmented modalities) inside ``target >= 0``,
        only the modalities each case has (``present`` (B, M))."""
        if self.task.predicts_labels:
            return self.loss(output, target.clamp_min(0))
        return self.loss(output, images, target >= 0, present.to(output.device))

    def _present(self, batch: dict) -> torch.Tensor:
        """(B, M) bool: the modalities each case of the batch has."""
        if "channels" in batch:
            return batch["channels"].to(torch.bool).cpu()
        return torch.ones(batch["data"].shape[0], self.num_modalities, dtype=torch.bool)

    def train_step(self, batch: dict) -> dict[str, float]:
        images = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"].to(self.device, non_blocking=True)
        clean = batch["target_image"].to(self.device, non_blocking=True) if "target_image" in batch else images
        present = self._present(batch)
        if self.config.modality_dropout:
            available = random_subsets(images.shape[0], self.num_modalities, present=present,
                                       keep_all=self.config.full_modality_share)
        else:
            available = present
        with self.autocast():
            output, inv = self._forward(self.model, images, available)
            task_loss = self._loss(output, clean, target, present)
            loss = task_loss + self.config.w_inv_finetune * inv
        self.backward(loss)
        return {"loss": loss.item(), self.config.task: task_loss.item(), "invariance": inv.item()}

    def validation_step(self, batch: dict, step: int) -> dict[str, float]:
        """seg: Dice per region/class with the modalities each case has; translate: foreground PSNR of every
        output the case has, from one input modality (its ``step % count``-th present one)."""
        images = batch["data"].to(self.device)
        target = batch["target"].to(self.device)
        present = self._present(batch)
        available = present.clone()
        if not self.task.predicts_labels:
            available[:] = False
            for b, row in enumerate(present):
                channels = row.nonzero()[:, 0]
                available[b, channels[step % len(channels)]] = True
        with self.autocast():
            output, _ = self._forward(self.network, images, available)
        output = output.float()
        if self.task.predicts_labels:
            return self._seg_metrics(output, target)
        mask = (target >= 0)[:, 0]
        if bool(present.all()):  # complete cases: each channel's PSNR over the whole batch's foreground
            values = [psnr(output[:, c][mask], images[:, c][mask]) for c in range(self.num_modalities)]
        else:
            values = [psnr(output[b, c][mask[b]], images[b, c][mask[b]]) for b in range(images.shape[0])
                      for c in present[b].nonzero()[:, 0].tolist()]
        return {"psnr": sum(values) / len(values), "metric": sum(values) / len(values)}

    def _seg_metrics(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """Dice per target of each patch, scored as the evaluation scores whole volumes: labels painted as
        pirl_predict paints them (regions nested), nothing outside the body, regions re-derived from labels."""
        rows = [segmentation_scores(logits[b], target[b].cpu().numpy(), self.ctx.dataset_json, prefix="dice_")
                for b in range(logits.shape[0])]
        return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
