"""Checkpoints that rebuild their model alone: weights, optimiser, grad scaler, epoch, trainer config,
plans, dataset.json, trainer name and network keyword arguments. Written atomically; loaded with
``torch.load(weights_only=True)``; a truncated or foreign file is reported as such, naming it.

``load_network`` rebuilds a checkpoint's network (an unknown kind or weights that do not fit: an error naming the
file); ``check_same_model`` is the one test that two checkpoints are folds of one model (export, install, predict).
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
from pirl_pipeline.networks.factory import build_network, canonical
from pirl_pipeline.networks.transfer import adapt_state, swinunetr_state
from pirl_pipeline.tasks import PRETRAIN, TASKS
from plans.plans_manager import differences

log = logging.getLogger("pirl")
REQUIRED_KEYS = ("network_weights", "trainer_name", "network_kwargs", "config", "plans", "epoch")


def torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through ``atomic_path``. torch reports a failed write (a full disk) as a RuntimeError of its
    zip writer; it is raised as the OSError it is, so the error is atomic_path's one line naming ``path``."""
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as err:
            if not any(k in str(err) for k in ("inline_container", "PytorchStreamWriter", "file write failed")):
                raise
            raise OSError(f"torch.save failed: {str(err).splitlines()[0][:120]}") from err


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    torch_save(state, path)


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


def load_network(state: dict[str, Any], path: Path, assign: bool = False) -> torch.nn.Module:
    """The network of the checkpoint ``state`` (read from ``path``) with its weights, strictly: an unknown network
    kind, a description it cannot build, or weights that do not fit it are a PirlInputError naming ``path``."""
    try:
        net = build_network(state["network_kwargs"])
    except (ValueError, TypeError) as err:
        raise PirlInputError(f"{path}: cannot rebuild its network ({err})") from None
    weights = state["network_weights"]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise PirlInputError(f"{path}: network_weights is not a dictionary of tensors")
    try:
        result = net.load_state_dict(weights, strict=False, assign=assign)
    except RuntimeError as err:  # shapes that differ
        raise PirlInputError(f"{path}: its weights do not fit its network ("
                             f"{' '.join(str(err).split())[:300]})") from None
    if result.missing_keys or result.unexpected_keys:
        listed = [f"{what} {', '.join(keys[:3])}" + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
                  for what, keys in (("missing", result.missing_keys), ("unexpected", result.unexpected_keys)) if keys]
        raise PirlInputError(f"{path}: its weights do not fit its network ({'; '.join(listed)})")
    return net


def model_identity(state: dict[str, Any]) -> dict[str, Any]:
    """What the folds of one model share: trainer, configuration, task, plans (dataset name included), channels
    and labels, network description (``factory.canonical``: a fold saved before a network argument existed
    describes that argument's default)."""
    dj, config = (d if isinstance(d, dict) else {} for d in (state.get("dataset_json"), state["config"]))
    return {"trainer": state["trainer_name"], "configuration": state.get("configuration"),
            "task": config.get("task"), "plans": state["plans"],
            "channel_names": dj.get("channel_names"), "labels": dj.get("labels"),
            "regions_class_order": dj.get("regions_class_order"), "network": canonical(state["network_kwargs"])}


def check_same_model(path: Path, state: dict[str, Any], reference_path: Path, reference: dict[str, Any]) -> None:
    """A PirlInputError naming ``path`` when its checkpoint is not a fold of ``reference``'s model (another dataset,
    plans, channels, labels, task or network): such folds are neither ensembled nor shipped together."""
    differ = differences(model_identity(reference), model_identity(state))
    if differ:
        raise PirlInputError(f"{path}: not the model of {reference_path} ({', '.join(differ[:4])}"
                             f"{f' and {len(differ) - 4} more' if len(differ) > 4 else ''} differ); folds of one "
                             "model only")


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
