"""The training loop and nothing else: epochs of fixed iteration counts, AdamW + poly schedule, autocast
on CUDA, validation hook, per-epoch logging/plots, atomic checkpoints and exact resume.

Subclasses say what to build and what to compute: ``build_network``, ``train_step`` (returns the
detached loss terms after calling ``self.backward`` on its loss) and ``validation_step``.

Reproducibility: every epoch reseeds torch/numpy/python from (seed, epoch, rank) and the batch stream is a
pure function of (seed, rank, batch index), so a run resumed from ``checkpoint_latest.pth`` repeats exactly
the epochs an uninterrupted run would have done.
"""
from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pirl_pipeline.data.dataset_json import DatasetJson
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.file_io import save_json
from pirl_pipeline.training import distributed
from pirl_pipeline.training.checkpoint import load_checkpoint, save_checkpoint
from pirl_pipeline.training.config import TrainerConfig
from pirl_pipeline.training.data import AugmentationConfig, BatchStream, make_train_loader, make_val_loader
from pirl_pipeline.training.distributed import gather
from pirl_pipeline.training.progress import ProgressLog
from plans.plans_manager import Plans

log = logging.getLogger("pirl")


@dataclass
class RunContext:
    """Where a run reads and writes, and what it trains on."""

    plans: Plans
    configuration: str
    dataset_json: DatasetJson
    preprocessed_folder: Path  # the folder holding the preprocessed case files
    output_folder: Path  # .../TRAINER__PIRLPlans__3d_fullres/fold_F
    train_cases: list[str]
    val_cases: list[str]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dist: distributed.DistInfo = field(default_factory=distributed.DistInfo)


class BaseTrainer:
    """Owns the loop; see the module docstring for what subclasses provide."""

    name = "BaseTrainer"

    def __init__(self, ctx: RunContext, config: TrainerConfig) -> None:
        self.ctx, self.config = ctx, config
        plan_config = ctx.plans.configuration(ctx.configuration)
        self.patch_size = list(config.patch_size or plan_config.patch_size)
        self.batch_size = int(config.batch_size or plan_config.batch_size)
        self.feature_size = int(config.feature_size or plan_config.network.get("feature_size", 48))
        self.num_modalities = ctx.plans.num_input_channels
        self.plan_config = plan_config
        self.device = ctx.device
        torch.manual_seed(config.seed)
        self.network = self.build_network().to(self.device)
        self.model = distributed.wrap(self.network, ctx.dist, self.device)
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=config.lr,
                                           weight_decay=config.weight_decay)
        use_amp = config.amp and self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_amp and self.amp_dtype == torch.float16)
        self.use_amp = use_amp
        self.epoch = 0
        self.best_metric: float | None = None
        self.progress = ProgressLog(ctx.output_folder / "training_log.txt")

    # ---- what subclasses provide -------------------------------------------------------------
    def build_network(self) -> torch.nn.Module:
        raise NotImplementedError

    def network_kwargs(self) -> dict:
        """Keyword arguments that rebuild ``self.network`` (stored in checkpoints)."""
        raise NotImplementedError

    def train_step(self, batch: dict) -> dict[str, float]:
        """Forward, ``self.backward(loss)``; return the loss terms (floats, 'loss' = the total)."""
        raise NotImplementedError

    def validation_step(self, batch: dict, step: int) -> dict[str, float]:
        """Metrics of validation batch number ``step`` (under no_grad); 'metric' (higher is better) decides 'best'."""
        raise NotImplementedError

    def extra_state(self) -> dict:
        """Additional state dicts to checkpoint (e.g. the contrastive queue)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        return None

    def make_train_stream(self) -> BatchStream:
        """Augmented training batches, continuing where ``self.epoch`` left off (exact resume)."""
        return make_train_loader(
            self.ctx.preprocessed_folder, self.ctx.train_cases, self.plan_config,
            AugmentationConfig() if self.config.augment else AugmentationConfig.off(),
            batch_size=self.batch_size, patch_size=tuple(self.patch_size), num_workers=self.config.num_workers,
            seed=self.config.seed, rank=self.ctx.dist.rank, world_size=self.ctx.dist.world_size,
            oversample_foreground=self.config.oversample_foreground,
            start_batch=self.epoch * self.config.iters_per_epoch, pin_memory=self.device.type == "cuda")

    # ---- the loop ----------------------------------------------------------------------------
    def autocast(self):
        if not self.use_amp:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def _optimizer_step(self) -> None:
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def learning_rate(self, epoch: int) -> float:
        if self.config.lr_schedule == "constant":
            return self.config.lr
        return self.config.lr * (1 - epoch / self.config.epochs) ** 0.9

    def _seed_epoch(self, epoch: int) -> None:
        """Seed the global RNGs (modality dropout, Φ, view augmentation) from (seed, epoch, rank)."""
        seed = (self.config.seed + 1009 * epoch + 7919 * self.ctx.dist.rank) % (2**31)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def run_epoch(self, epoch: int, stream: Iterator[dict]) -> dict[str, float]:
        self._seed_epoch(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(epoch)
        self.model.train()
        sums: dict[str, float] = {}
        for iteration in range(self.config.iters_per_epoch):
            batch = next(stream)
            if iteration == 0 and epoch == self.epoch:
                self._log_first_batch(batch)
            self.optimizer.zero_grad(set_to_none=True)
            terms = self.train_step(batch)
            self._optimizer_step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
        return {f"train/{k}": v / self.config.iters_per_epoch for k, v in sums.items()}

    def _log_first_batch(self, batch: dict) -> None:
        """Which patches each rank drew first: shows in the log that DDP ranks see different data."""
        drawn = gather([f"{k}@{tuple(int(v) for v in lower)}" for k, lower in zip(batch["keys"], batch["patch_lower"])],
                       self.ctx.dist)
        if self.ctx.dist.is_main:
            for rank, patches in enumerate(drawn):
                self.progress.write(f"rank {rank} first batch: {', '.join(patches)}")

    @torch.no_grad()
    def validate(self, shard: bool = True) -> dict[str, float]:
        """Mean metrics over at most ``val_iters`` fixed, unaugmented validation batches (this rank's share
        when ``shard``). Subclasses evaluate ``self.network`` (not the DDP wrapper: no collectives here)."""
        if not self.ctx.val_cases or self.config.val_iters <= 0:
            return {}
        self.model.eval()
        sums: dict[str, float] = {}
        batches = make_val_loader(self.ctx.preprocessed_folder, self.ctx.val_cases, self.plan_config,
                                  batch_size=self.batch_size, patch_size=tuple(self.patch_size),
                                  rank=self.ctx.dist.rank if shard else 0,
                                  world_size=self.ctx.dist.world_size if shard else 1, seed=self.config.seed)
        count = 0
        for step, batch in zip(range(self.config.val_iters), batches):
            for k, v in self.validation_step(batch, step).items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
        return {f"val/{k}": v / max(count, 1) for k, v in sums.items()}

    def run(self) -> None:
        """Train from ``self.epoch`` to ``config.epochs``, then write the final checkpoint and summary."""
        main = self.ctx.dist.is_main
        if main:
            self.ctx.output_folder.mkdir(parents=True, exist_ok=True)
            save_json(self.config.to_dict(), self.ctx.output_folder / "config.json")
            self.progress.write(f"{self.name}: {len(self.ctx.train_cases)} training / {len(self.ctx.val_cases)} "
                                f"validation cases, patch {self.patch_size}, batch {self.batch_size}, "
                                f"feature_size {self.feature_size}, device {self.device}")
        stream = self.make_train_stream()
        try:
            self._train_epochs(stream)
        finally:
            stream.close()
        if main:
            self.save("checkpoint_final.pth")
            self.write_validation_summary()

    def _train_epochs(self, stream: BatchStream) -> None:
        main = self.ctx.dist.is_main
        for epoch in range(self.epoch, self.config.epochs):
            start = time.perf_counter()
            row = {**self.run_epoch(epoch, stream), **self.validate()}
            row = distributed.all_reduce_mean(row, self.ctx.dist)
            self.epoch = epoch + 1
            row.update(epoch=epoch, lr=self.learning_rate(epoch), epoch_time=time.perf_counter() - start)
            metric = row.get("val/metric")
            improved = metric is not None and (self.best_metric is None or metric > self.best_metric)
            if improved:
                self.best_metric = metric
            if main:
                log.info(self.progress.add_epoch(row))
                if improved:
                    self.save("checkpoint_best.pth")
                if self.epoch % self.config.save_every == 0 or self.epoch == self.config.epochs:
                    self.save("checkpoint_latest.pth")
                self.progress.plot(self.ctx.output_folder / "progress.png", title=self.name)
            distributed.barrier(self.ctx.dist)

    def write_validation_summary(self) -> None:
        """Patch-level validation of the final model; fine-tuning trainers replace it with whole volumes."""
        metrics = self.validate(shard=False)
        save_json({"kind": "patch-level validation (random patches of the validation cases)",
                   "cases": self.ctx.val_cases, "patches": self.config.val_iters * self.batch_size,
                   "metrics": metrics}, self.ctx.output_folder / "validation" / "summary.json")

    # ---- checkpoints -------------------------------------------------------------------------
    def checkpoint_state(self) -> dict:
        return {
            "network_weights": self.network.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.scaler.state_dict(),
            "extra_state": self.extra_state(),
            "epoch": self.epoch,
            "best_metric": self.best_metric,
            "history": self.progress.history,
            "config": self.config.to_dict(),
            "plans": self.ctx.plans.to_dict(),
            "configuration": self.ctx.configuration,
            "dataset_json": self.ctx.dataset_json.to_dict(),
            "trainer_name": self.name,
            "network_kwargs": self.network_kwargs(),
        }

    def save(self, filename: str) -> None:
        save_checkpoint(self.checkpoint_state(), self.ctx.output_folder / filename)

    def resume(self, path: Path) -> None:
        state = load_checkpoint(path, self.device)
        if state["trainer_name"] != self.name:
            raise PirlInputError(f"{path}: written by {state['trainer_name']}, not {self.name}")
        self.network.load_state_dict(state["network_weights"])
        self.optimizer.load_state_dict(state["optimizer_state"])
        self.scaler.load_state_dict(state["grad_scaler_state"])
        self.load_extra_state(state.get("extra_state", {}))
        self.epoch, self.best_metric = int(state["epoch"]), state.get("best_metric")
        self.progress.history = list(state.get("history", []))
        log.info("resumed from %s at epoch %d", path, self.epoch)
