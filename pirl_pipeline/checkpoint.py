"""Checkpoints that rebuild their model alone: weights, optimiser, grad scaler, epoch, trainer config,
plans, dataset.json, trainer name and network keyword arguments. Written atomically; loaded with
``torch.load(weights_only=True)``; a truncated or foreign file is reported as such, naming it.

``load_pretrained`` reads what ``--pretrained`` names (a pirl checkpoint or a plain SwinUNETR state dict) and
``transfer_weights`` maps it onto a new network (``networks.transfer``: other channels, patch size, heads)."""
from __future__ import annotations

import logging
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.file_io import atomic_path
from pirl_pipeline.networks.transfer import adapt_state, swinunetr_state
from pirl_pipeline.tasks import PRETRAIN, TASKS

log = logging.getLogger("pirl")
REQUIRED_KEYS = ("network_weights", "trainer_name", "network_kwargs", "config", "plans", "epoch")


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load(path: Path, map_location: str | torch.device) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary Python objects."""
    if not path.is_file():
        raise PirlInputError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise PirlInputError(f"{path}: holds Python objects other than tensors; refused (loading them could run "
                                 f"code)") from None
        raise PirlInputError(f"{path}: corrupt or partially written checkpoint (UnpicklingError: "
                             f"{str(err).splitlines()[0][:120]})") from None
    except Exception as err:  # noqa: BLE001 - torch raises many types for damaged files
        raise PirlInputError(f"{path}: corrupt or partially written checkpoint ({type(err).__name__}: "
                             f"{str(err).splitlines()[0][:120] if str(err) else 'no detail'})") from None


def is_pirl_checkpoint(state: Any) -> bool:
    return isinstance(state, dict) and all(k in state for k in REQUIRED_KEYS)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    state = _load(path, map_location)
    if not is_pirl_checkpoint(state):
        missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
        raise PirlInputError(f"{path}: not a pirl checkpoint (missing {', '.join(missing)})")
    return state


@dataclass
class PretrainedWeights:
    """What ``--pretrained`` names: weights with PIRLNet/SwinUNETR keys and what is known of their network."""

    path: Path
    weights: dict[str, torch.Tensor]
    network_kwargs: dict | None = None  # pirl checkpoint: its network description; plain state dict: None
    output_modalities: list[str] | None = None  # modality names of the output rows (pre-training, translation)
    input_modalities: list[str] | None = None  # modality names of the input channels (pirl checkpoints)

    @property
    def feature_size(self) -> int:
        return int(self.weights["swinViT.patch_embed.proj.weight"].shape[0])

    @property
    def patch_size(self) -> list[int] | None:
        size = (self.network_kwargs or {}).get("patch_size")
        return None if size is None else [int(s) for s in size]


def load_pretrained(path: str | Path) -> PretrainedWeights:
    """A pirl checkpoint, or a plain MONAI SwinUNETR state dict (also MONAI's self-supervised Swin weights)."""
    path = Path(path)
    state = _load(path, "cpu")
    if is_pirl_checkpoint(state):
        channels = state.get("dataset_json", {}).get("channel_names", {})
        names = [channels[k] for k in sorted(channels, key=int)]
        task = state["config"].get("task")
        if "swinViT.patch_embed.proj.weight" not in state["network_weights"]:
            raise PirlInputError(f"{path}: a {state['network_kwargs'].get('kind')} checkpoint has no Swin encoder "
                                 f"to fine-tune from")
        return PretrainedWeights(path, state["network_weights"], state["network_kwargs"],
                                 names if task == PRETRAIN or (task in TASKS and not TASKS[task].predicts_labels)
                                 else None, names or None)
    try:
        weights = swinunetr_state(state)
    except ValueError as err:
        raise PirlInputError(f"{path}: neither a pirl checkpoint nor a SwinUNETR state dict ({err})") from None
    log.info("%s: a plain SwinUNETR state dict (%d tensors, feature size %d)", path, len(weights),
             weights["swinViT.patch_embed.proj.weight"].shape[0])
    return PretrainedWeights(path, weights)


def transfer_weights(model: torch.nn.Module, source: dict[str, torch.Tensor], source_name: str,
                     reinit_prefixes: tuple[str, ...] = ("out.",),
                     head_rows: Sequence[int | None] | None = None,
                     stem_rows: Sequence[int | None] | None = None) -> list[str]:
    """Load pretrained ``source`` weights into ``model``, adapted where that is exact or logged (other input
    channels, prior grid, output head rows ``head_rows``; see ``networks.transfer``). Anything else that does
    not fit is an error listing the keys. Returns the keys that keep their fresh initialisation."""
    target = model.state_dict()
    adaptation = adapt_state(target, source, head=reinit_prefixes, head_rows=head_rows, stem_rows=stem_rows)
    if adaptation.problems:
        raise PirlInputError(f"{source_name}: pretrained weights do not fit this network (another feature size "
                             f"or depth?): " + " | ".join(adaptation.problems))
    model.load_state_dict(adaptation.state, strict=False)
    for note in adaptation.notes:
        log.info("pretrained weights from %s: %s", source_name, note)
    return [k for k in target if k not in adaptation.state]
