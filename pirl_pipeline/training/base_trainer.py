"""The training loop and nothing else: epochs of fixed iteration counts, AdamW + poly schedule, autocast
on CUDA, validation hook, per-epoch logging/plots, atomic checkpoints and exact resume.

Device and speed: on CUDA bf16 autocast (``amp``; fp16 + grad scaler where bf16 is missing) around the
forward passes only, ``cudnn.benchmark``; everywhere the fused Swin window attention (``fused_attention``),
optional gradient checkpointing and ``torch.compile`` (``grad_checkpoint``, ``compile``). Under DDP the
per-epoch logs are reduced once per epoch as sums and counts (``distributed.reduce_means``).

Construction only reads the configuration; ``initialize()`` builds the network, the losses and the optimiser
(``run`` and ``resume`` call it; ``registry.build_trainer`` returns an initialised trainer). Subclasses say what
to build and what to compute: ``build_network`` (the network, nothing else), ``build_losses`` (after it, e.g.
the objective that needs the network's sizes), ``train_step`` (returns the detached loss terms after calling
``self.backward`` on its loss) and ``validation_step``.

Reproducibility: every epoch reseeds torch/numpy/python from (seed, epoch, rank) and the batch stream is a
pure function of (seed, rank, batch index), so a run resumed from ``checkpoint_latest.pth`` repeats exactly
the epochs an uninterrupted run would have done.
"""
from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pirl_pipeline.checkpoint import load_checkpoint, save_checkpoint
from pirl_pipeline.data.dataset_json import DatasetJson
from pirl_pipeline.dataloading import (
    AugmentationConfig,
    BatchStream,
    PreprocessedDataset,
    make_train_loader,
    make_val_loader,
)
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.evaluation.health import health_patches, representation_health
from pirl_pipeline.file_io import save_json
from pirl_pipeline.fold_folder import BEST, FINAL, LATEST, FoldFolder
from pirl_pipeline.networks.pirl_net import PIRLNet
from pirl_pipeline.networks.swinunetr_compat import set_fused_attention, set_gradient_checkpointing
from pirl_pipeline.trainer_config import NETWORK_FIXES, TrainerConfig
from pirl_pipeline.training import distributed
from pirl_pipeline.training.distributed import gather
from pirl_pipeline.training.progress import ProgressLog
from plans.plans_manager import Plans

log = logging.getLogger("pirl")
VOLUME_ROWS = "volume_rows"  # reduced flag: > 0 when some rank validated whole volumes


def default_num_workers(device: torch.device, cpus: int | None = None, local_ranks: int | None = None) -> int:
    """Loader processes per rank when the config leaves them open: on CUDA min(8, CPUs / 2 per local rank),
    so augmentation keeps up with a GPU step; on the CPU 0 (a step takes seconds, in-process augmentation
    about 0.1 s of it, and no worker start-up)."""
    if device.type != "cuda":
        return 0
    cpus = cpus or len(os.sched_getaffinity(0))
    local_ranks = local_ranks or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return min(8, max(1, cpus // (2 * local_ranks)))


@dataclass
class RunContext:
    """Where a run reads and writes, and what it trains on."""

    plans: Plans
    configuration: str
    dataset_json: DatasetJson
    preprocessed_folder: Path  # the folder holding the preprocessed case files
    fold_folder: FoldFolder  # where the run writes: .../TRAINER__PIRLPlans__3d_fullres/fold_F
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
        self.patch_size = list(plan_config.patch_size if config.patch_size is None else config.patch_size)
        self.batch_size = int(plan_config.batch_size if config.batch_size is None else config.batch_size)
        self.feature_size = int(plan_config.network.get("feature_size", 48) if config.feature_size is None
                                else config.feature_size)
        self.num_modalities = ctx.plans.num_input_channels
        self.plan_config = plan_config
        self.device = ctx.device
        self.num_workers = default_num_workers(self.device) if config.num_workers is None else config.num_workers
        use_amp = config.amp and self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
        self.use_amp = use_amp
        self.epoch = 0
        self.best_metric: float | None = None
        self.progress = ProgressLog(ctx.fold_folder.training_log)
        self.initialized = False

    def window_override(self) -> dict[str, int]:
        """``{"window_size": W}`` when the run sets the Swin window (``--window-size``), else {} (the plans')."""
        return {} if self.config.window_size is None else {"window_size": int(self.config.window_size)}

    def initialize(self) -> None:
        """Build the network (seeded), the losses, the DDP/compile wrapper, the optimiser and the grad scaler;
        once (later calls do nothing)."""
        if self.initialized:
            return
        config = self.config
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # one patch size all run long: autotuned convolutions pay off
        torch.manual_seed(config.seed)
        network = self.build_network()
        built = {k: network.config[k] for k in NETWORK_FIXES} if isinstance(network, PIRLNet) else {}
        self.config = config = config.pinned(**built)  # config.json and checkpoints record what ran
        self.build_losses(network)
        set_fused_attention(network, config.fused_attention)
        set_gradient_checkpointing(network, config.grad_checkpoint)
        self.network = network.to(self.device)
        self.model = distributed.wrap(self.network, self.ctx.dist, self.device,
                                      find_unused=not self.uses_all_parameters())
        if config.compile:  # the wrapper only: self.network keeps its state-dict keys and runs validation eagerly
            self.model = torch.compile(self.model)
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.initialized = True

    # ---- what subclasses provide -------------------------------------------------------------
    def build_network(self) -> torch.nn.Module:
        """The network (not yet on the device), nothing else."""
        raise NotImplementedError

    def build_losses(self, network: torch.nn.Module) -> None:
        """The losses (on ``self.device``), built right after ``network``; none by default."""
        return

    def network_kwargs(self) -> dict:
        """Keyword arguments that rebuild ``self.network`` (stored in checkpoints)."""
        raise NotImplementedError

    def train_step(self, batch: dict) -> dict[str, float]:
        """Forward, ``self.backward(loss)``; return the loss terms (floats, 'loss' = the total)."""
        raise NotImplementedError

    def validation_step(self, batch: dict, step: int) -> dict[str, float]:
        """Metrics of validation batch number ``step`` (under no_grad); 'metric' (higher is better) decides 'best'."""
        raise NotImplementedError

    def uses_all_parameters(self) -> bool:
        """True when every training step gives every parameter a gradient (DDP then skips its search for
        unused ones); False, the safe answer, when a head or the decoder may stay idle."""
        return False

    def extra_state(self) -> dict:
        """Additional state dicts to checkpoint (e.g. the contrastive queue)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        return None

    def augmentation(self) -> AugmentationConfig:
        """The training augmentation (nnU-Net v2's defaults, or none); trainers may restrict it."""
        return AugmentationConfig() if self.config.augment else AugmentationConfig.off()

    #: batches carry ``target_image`` (the patch with the spatial transform only) for image targets
    clean_targets: bool = False

    def validate_volumes(self, cases: list[str]) -> list[dict[str, float]]:
        """Per-case metrics of whole validation volumes (``cases``: this rank's share); none by default.
        Keys are logged as ``val/<key>``; a ``metric`` key (higher is better) replaces the patch-level one."""
        return []

    def representation_health(self) -> dict[str, float]:
        """``evaluation.health`` of a PIRLNet on the centre patches of up to ``health_subjects`` validation cases
        (topped up with training cases to 2 when fewer; logged once), fixed for the run; {} otherwise."""
        wanted = self.config.health_subjects
        if not isinstance(self.network, PIRLNet) or wanted == 0:
            return {}
        if getattr(self, "_health_patches", None) is None:
            cases = list(self.ctx.val_cases[:wanted])
            if len(cases) < 2:
                extra = [c for c in self.ctx.train_cases if c not in cases][: 2 - len(cases)]
                log.info("representation health: %d validation case(s), adding training case(s) %s", len(cases), extra)
                cases += extra
            if len(cases) < 2:
                return {}
            dataset = PreprocessedDataset(self.ctx.preprocessed_folder, cases)
            self._health_patches = health_patches([dataset.arrays(c)[0] for c in cases], self.patch_size)
        return representation_health(self.network, self._health_patches.to(self.device))

    def make_train_stream(self) -> BatchStream:
        """Augmented training batches, continuing where ``self.epoch`` left off (exact resume)."""
        return make_train_loader(
            self.ctx.preprocessed_folder, self.ctx.train_cases, self.plan_config, self.augmentation(),
            batch_size=self.batch_size, patch_size=tuple(self.patch_size), num_workers=self.num_workers,
            seed=self.config.seed, rank=self.ctx.dist.rank, world_size=self.ctx.dist.world_size,
            oversample_foreground=self.config.oversample_foreground,
            start_batch=self.epoch * self.config.iters_per_epoch, pin_memory=self.device.type == "cuda",
            clean_targets=self.clean_targets)

    # ---- the loop ----------------------------------------------------------------------------
    def autocast(self):
        if not self.use_amp:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate ``loss`` (scaled for fp16). Must run outside ``self.autocast()``: the backward pass
        takes the dtypes of the forward ops, and autocast around it only adds casts."""
        if self.use_amp and torch.is_autocast_enabled(self.device.type):
            raise RuntimeError("backward() inside autocast(): close the `with self.autocast()` block first")
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

    def run_epoch(self, epoch: int, stream: Iterator[dict]) -> tuple[dict[str, float], dict[str, int]]:
        """One epoch of ``iters_per_epoch`` steps; this rank's sums and counts of the terms (``train/<term>``)."""
        self._seed_epoch(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(epoch)
        self.model.train()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for iteration in range(self.config.iters_per_epoch):
            batch = next(stream)
            if iteration == 0 and epoch == self.epoch:
                self._log_first_batch(batch)
            self.optimizer.zero_grad(set_to_none=True)
            terms = self.train_step(batch)
            self._optimizer_step()
            _accumulate(sums, counts, {f"train/{k}": v for k, v in terms.items()})
        return sums, counts

    def _log_first_batch(self, batch: dict) -> None:
        """Which patches each rank drew first: shows in the log that DDP ranks see different data."""
        drawn = gather([f"{k}@{tuple(int(v) for v in lower)}" for k, lower in zip(batch["keys"], batch["patch_lower"])],
                       self.ctx.dist)
        if self.ctx.dist.is_main:
            for rank, patches in enumerate(drawn):
                self.progress.write(f"rank {rank} first batch: {', '.join(patches)}")

    @torch.no_grad()
    def validation_sums(self, shard: bool = True) -> tuple[dict[str, float], dict[str, int]]:
        """Sums and counts of this rank's validation (its share when ``shard``; no collectives): patch metrics
        of at most ``val_iters`` fixed, unaugmented batches (``val/<key>``) and the rows of
        ``validate_volumes`` (``volume/<key>``, NaN skipped). Subclasses evaluate ``self.network``."""
        if not self.ctx.val_cases or self.config.val_iters <= 0:
            return {}, {}
        self.model.eval()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        rank, world = (self.ctx.dist.rank, self.ctx.dist.world_size) if shard else (0, 1)
        batches = make_val_loader(self.ctx.preprocessed_folder, self.ctx.val_cases, self.plan_config,
                                  batch_size=self.batch_size, patch_size=tuple(self.patch_size),
                                  rank=rank, world_size=world, seed=self.config.seed)
        for step, batch in zip(range(self.config.val_iters), batches):
            _accumulate(sums, counts, {f"val/{k}": v for k, v in self.validation_step(batch, step).items()})
        rows = self.validate_volumes(self.ctx.val_cases[rank::world])
        for row in rows:
            _accumulate(sums, counts, {f"volume/{k}": v for k, v in row.items() if not math.isnan(v)})
        if rank == 0:  # one rank measures: the reduced mean is its value
            health = self.representation_health()
            _accumulate(sums, counts, {f"val/{k}": v for k, v in health.items() if math.isfinite(v)})
        sums[VOLUME_ROWS], counts[VOLUME_ROWS] = float(len(rows)), 1
        return sums, counts

    def validate(self, shard: bool = True) -> dict[str, float]:
        """Mean validation metrics of this process (``val/<key>``); see ``validation_sums`` and ``epoch_row``."""
        return epoch_row(distributed.reduce_means(*self.validation_sums(shard), distributed.DistInfo()))

    def run(self) -> None:
        """Train from ``self.epoch`` to ``config.epochs``, then write the final checkpoint and summary."""
        self.initialize()
        main = self.ctx.dist.is_main
        if main:
            self.ctx.fold_folder.path.mkdir(parents=True, exist_ok=True)
            save_json(self.config.to_dict(), self.ctx.fold_folder.config)
            self.progress.write(f"{self.name}: {len(self.ctx.train_cases)} training / {len(self.ctx.val_cases)} "
                                f"validation cases, patch {self.patch_size}, batch {self.batch_size}, "
                                f"feature_size {self.feature_size}, device {self.device}")
        stream = self.make_train_stream()
        try:
            self._train_epochs(stream)
        finally:
            stream.close()
        if main:
            self.save(FINAL)
            self.write_validation_summary()

    def _train_epochs(self, stream: BatchStream) -> None:
        main = self.ctx.dist.is_main
        for epoch in range(self.epoch, self.config.epochs):
            start = time.perf_counter()
            train_sums, train_counts = self.run_epoch(epoch, stream)
            val_sums, val_counts = self.validation_sums()
            row = epoch_row(distributed.reduce_means({**train_sums, **val_sums}, {**train_counts, **val_counts},
                                                     self.ctx.dist))  # once per epoch, all ranks
            self.epoch = epoch + 1
            row.update(epoch=epoch, lr=self.learning_rate(epoch), epoch_time=time.perf_counter() - start)
            metric = row.get("val/metric")
            improved = metric is not None and (self.best_metric is None or metric > self.best_metric)
            if improved:
                self.best_metric = metric
            if main:
                log.info(self.progress.add_epoch(row))
                if improved:
                    self.save(BEST)
                if self.epoch % self.config.save_every == 0 or self.epoch == self.config.epochs:
                    self.save(LATEST)
                if self.config.keep_every and self.epoch % self.config.keep_every == 0:
                    save_checkpoint(self.checkpoint_state(), self.ctx.fold_folder.epoch_checkpoint(self.epoch))
                self.progress.plot(self.ctx.fold_folder.progress_plot, title=self.name)
            distributed.barrier(self.ctx.dist)

    def write_validation_summary(self) -> None:
        """Patch-level validation of the final model; fine-tuning trainers replace it with whole volumes."""
        metrics = self.validate(shard=False)
        save_json({"kind": "patch-level validation (random patches of the validation cases)",
                   "cases": self.ctx.val_cases, "patches": self.config.val_iters * self.batch_size,
                   "metrics": metrics}, self.ctx.fold_folder.validation_summary)

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
        save_checkpoint(self.checkpoint_state(), self.ctx.fold_folder.checkpoint(filename))

    def resume(self, path: Path) -> None:
        self.initialize()
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


def _accumulate(sums: dict[str, float], counts: dict[str, int], values: dict[str, float]) -> None:
    for k, v in values.items():
        sums[k] = sums.get(k, 0.0) + float(v)
        counts[k] = counts.get(k, 0) + 1


def epoch_row(means: dict[str, float]) -> dict[str, float]:
    """The logged row from reduced means: whole volumes (``volume/<key>``), when any rank had some, are logged
    as ``val/<key>`` and their ``metric`` replaces the patch-level one (patches overrate a model)."""
    row = {k: v for k, v in means.items() if not k.startswith("volume/") and k != VOLUME_ROWS}
    if means.get(VOLUME_ROWS, 0) > 0:
        row.pop("val/metric", None)
        row.update({"val/" + k.removeprefix("volume/"): v for k, v in means.items() if k.startswith("volume/")})
    return row
