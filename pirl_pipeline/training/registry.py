"""Trainer names (the ``-tr`` option and the results folder name) -> what they build, and the results-folder
layout (``model_folder``: the one place that knows ``DatasetXXX_Name/TRAINER__PLANS__CONFIGURATION``).

Names are configurations of two classes, not subclasses: comparisons are one flag away.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pirl_pipeline.checkpoint import PretrainedWeights, load_pretrained
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.tasks import PRETRAIN, TASKS
from pirl_pipeline.trainer_config import TrainerConfig
from pirl_pipeline.training.base_trainer import BaseTrainer, RunContext
from pirl_pipeline.training.downstream import DownstreamTrainer
from pirl_pipeline.training.pretrainer import PIRLPretrainer


@dataclass(frozen=True)
class TrainerSpec:
    task: str
    network_kind: str = "pirl"
    pretrained: str = "optional"  # "optional", "required" or "refused"
    summary: str = ""


TRAINERS: dict[str, TrainerSpec] = {
    "PIRLPretrainer": TrainerSpec("pretrain", "pirl", "refused", "Algorithm 1 pre-training"),
    "PIRLSegTrainer": TrainerSpec("seg", "pirl", "optional", "PIRLNet segmentation (Algorithm 2)"),
    "PIRLTranslateTrainer": TrainerSpec("translate", "pirl", "optional", "PIRLNet modality translation"),
    "SwinUNETRSegTrainer": TrainerSpec("seg", "swinunetr", "refused", "SwinUNETR from scratch"),
    "SwinUNETRTranslateTrainer": TrainerSpec("translate", "swinunetr", "refused", "SwinUNETR from scratch"),
    "SwinUNETRFromPIRLSegTrainer": TrainerSpec("seg", "swinunetr", "required", "SwinUNETR with PIRL weights"),
    "SwinUNETRFromPIRLTranslateTrainer": TrainerSpec("translate", "swinunetr", "required",
                                                     "SwinUNETR with PIRL weights"),
    "DynUNetSegTrainer": TrainerSpec("seg", "dynunet", "refused", "nnU-Net-like plain U-Net from scratch"),
    "DynUNetTranslateTrainer": TrainerSpec("translate", "dynunet", "refused", "plain U-Net from scratch"),
}
DEFAULT_TRAINER = {PRETRAIN: "PIRLPretrainer", **{t.name: t.default_trainer for t in TASKS.values()}}


def resolve_trainer(task: str, name: str | None) -> str:
    name = name or DEFAULT_TRAINER[task]
    if name not in TRAINERS:
        raise PirlInputError(f"unknown trainer {name!r}; choose from {', '.join(TRAINERS)}")
    if TRAINERS[name].task != task:
        raise PirlInputError(f"trainer {name} is for task {TRAINERS[name].task!r}, not {task!r}")
    return name


def build_trainer(name: str, ctx: RunContext, config: TrainerConfig, pretrained: PretrainedWeights | Path | None,
                  network: dict | None = None) -> BaseTrainer:
    """The trainer ``name`` on ``ctx``, initialised (network, losses, optimiser built). ``pretrained``: initial
    weights (fine-tuning); ``network``: the description of the network to build instead (a resumed run: the
    checkpoint's own, whose weights replace any other)."""
    spec = TRAINERS[name]
    if isinstance(pretrained, (str, Path)):
        pretrained = load_pretrained(pretrained)
    if spec.pretrained == "required" and pretrained is None and network is None:
        raise PirlInputError(f"{name} needs pretrained weights (a PIRLPretrainer checkpoint or SwinUNETR weights)")
    if spec.pretrained == "refused" and pretrained is not None:
        raise PirlInputError(f"{name} trains from scratch: no pretrained weights")
    if spec.task == PRETRAIN:
        trainer: BaseTrainer = PIRLPretrainer(ctx, config)
    else:
        trainer = DownstreamTrainer(ctx, config, name=name, network_kind=spec.network_kind, pretrained=pretrained,
                                    network=network)
    trainer.initialize()
    return trainer
