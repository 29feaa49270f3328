"""Trained folds of one model folder (``TRAINER__PIRLPlans__CONFIG``), rebuilt from their checkpoints."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from pirl_pipeline.checkpoint import check_same_model, load_checkpoint, load_network
from pirl_pipeline.data.dataset_json import DatasetJson, parse_dataset_json
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.fold_folder import FINAL, PREFIX, FoldFolder
from pirl_pipeline.networks.swinunetr_compat import set_fused_attention
from pirl_pipeline.tasks import PRETRAIN
from pirl_pipeline.trainer_config import TrainerConfig
from plans.plans_manager import Plans


@dataclass
class TrainedModel:
    """Everything prediction needs, all taken from the checkpoints (no access to training data)."""

    networks: list[torch.nn.Module]  # one per fold, eval mode
    kind: str  # "pirl", "swinunetr" or "dynunet"
    task: str  # "seg" or "translate"
    plans: Plans
    configuration: str
    dataset_json: DatasetJson
    patch_size: list[int]
    folds: list[str]


@contextmanager
def one_thread():
    """torch's intra-op threads set to 1 inside the block (2-3x faster network construction on a loaded machine,
    where each tiny parallel op waits for a descheduled thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def load_model_folder(folder: str | Path, folds: list[str] | None = None,
                      checkpoint: str = FINAL, device: torch.device | str = "cpu",
                      fused_attention: bool = True) -> TrainedModel:
    """Load the given folds (default: every fold with ``checkpoint``) of a model folder.

    ``fused_attention``: Swin window attention through ``scaled_dot_product_attention`` (same outputs to
    float rounding, 1.3-1.6x faster on the CPU, less memory); it does not depend on how the model was
    trained, and checkpoints of any pirl version load either way."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PirlInputError(f"{folder}: model folder not found")
    folds = folds or [f.fold for f in FoldFolder.folds(folder, require=checkpoint)]
    if not folds:
        raise PirlInputError(f"{folder}: no {PREFIX}*/{checkpoint} (train first, or pick another -chk)")
    paths = [FoldFolder(folder, fold).checkpoint(checkpoint) for fold in folds]
    networks, first = [], None
    for path in paths:
        state = load_checkpoint(path)
        if first is None:
            first = state
        check_same_model(path, state, paths[0], first)  # fold_0's plans are used for every fold
        with one_thread():  # thousands of tiny init ops: one thread is as fast, and immune to busy CPUs
            net = load_network(state, path, assign=True)  # the loaded tensors themselves: no copies
        set_fused_attention(net, fused_attention)
        networks.append(net.to(device).eval())
    try:
        config = TrainerConfig.from_dict(first["config"])
        plans = Plans.from_dict(first["plans"])
        plan_config = plans.configuration(first["configuration"])
    except (PirlInputError, KeyError, TypeError, ValueError) as err:
        what = str(err) if isinstance(err, PirlInputError) else f"{type(err).__name__}: {err}"
        raise PirlInputError(f"{paths[0]}: damaged checkpoint metadata ({what})") from None
    if config.task == PRETRAIN:
        raise PirlInputError(f"{folder}: a pre-training model; fine-tune it for seg or translate first")
    dataset_json = parse_dataset_json(first.get("dataset_json"), paths[0])
    patch = list(plan_config.patch_size if config.patch_size is None else config.patch_size)
    return TrainedModel(networks, first["network_kwargs"]["kind"], config.task, plans, first["configuration"],
                        dataset_json, patch, folds)
