"""Checkpoints that rebuild their model alone: weights, optimiser, grad scaler, epoch, trainer config,
plans, dataset.json, trainer name and network keyword arguments. Written atomically; loaded with
``torch.load(weights_only=True)``; a truncated or foreign file is reported as such, naming it."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.file_io import atomic_path

log = logging.getLogger("pirl")
REQUIRED_KEYS = ("network_weights", "trainer_name", "network_kwargs", "config", "plans", "epoch")


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise PirlInputError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for damaged files
        raise PirlInputError(f"{path}: corrupt or partially written checkpoint ({type(err).__name__}: "
                             f"{str(err).splitlines()[0][:120] if str(err) else 'no detail'})") from None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
        raise PirlInputError(f"{path}: not a pirl checkpoint (missing {', '.join(missing)})")
    return state


def transfer_weights(model: torch.nn.Module, source: dict[str, torch.Tensor], source_name: str,
                     reinit_prefixes: tuple[str, ...] = ("out.",)) -> list[str]:
    """Load pretrained ``source`` weights into ``model``.

    Every parameter of the model must be present with the same shape, except those under
    ``reinit_prefixes`` (the output head), which keep their fresh initialisation when the shapes differ.
    Anything else is an error listing the mismatched keys. Returns the re-initialised keys.
    """
    target = model.state_dict()
    mismatched, missing, reinit = [], [], []
    for key, value in target.items():
        if key not in source:
            missing.append(key)
        elif source[key].shape != value.shape:
            if key.startswith(reinit_prefixes):
                reinit.append(key)
            else:
                mismatched.append(f"{key} {tuple(source[key].shape)} vs {tuple(value.shape)}")
    missing_outside_head = [k for k in missing if not k.startswith(reinit_prefixes)]
    if mismatched or missing_outside_head:
        parts = []
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es): " + "; ".join(mismatched[:6]))
        if missing_outside_head:
            parts.append(f"{len(missing_outside_head)} missing key(s): " + ", ".join(missing_outside_head[:6]))
        raise PirlInputError(f"{source_name}: pretrained weights do not fit this network "
                             f"(other channel count or feature size?): " + " | ".join(parts))
    reinit += [k for k in missing if k.startswith(reinit_prefixes)]
    model.load_state_dict({k: v for k, v in source.items() if k in target and k not in reinit}, strict=False)
    if reinit:
        log.info("pretrained weights loaded from %s; output head re-initialised: %s", source_name,
                 ", ".join(reinit))
    return reinit
