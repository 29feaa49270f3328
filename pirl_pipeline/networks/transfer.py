"""Weights from another channel set, patch size or network (issue 13): a source state dict mapped onto a
freshly initialised target (PIRLNet, SwinUNETR).

PIRLNet with fusion "mean"/"max" (the reference) encodes one modality at a time, repeated into every input
channel, so what it learnt is tied neither to C_in nor to the patch size. ``adapt_state`` maps, per key:

- stem (the convolutions that read the input: ``STEM_KEYS``, weights (out, C_in, k, k, k)): summed over the
  source's input channels and spread evenly over the target's, so sum_c W'[:, c] = sum_c W[:, c]: a modality
  repeated into every channel gives exactly the same features. A "joint" source learnt one kernel per
  modality (each in its own channel): with ``stem_rows`` (target input channel -> source channel, by modality
  name) each target channel takes its modality's kernel, and a modality the source never saw starts fresh;
- prior O (16fs, *grid): resampled trilinearly to the target's bottleneck grid; the prior attention embeds each
  channel by its grid values (embedding = grid volume), so with another grid volume it starts fresh;
- output head: rows picked by ``head_rows`` (target channel -> source channel, None: fresh), e.g. the
  decomposition/translation head by modality name (``head_rows_by_name``);
- a top-level module the source lacks (a plain SwinUNETR has no prior or heads, MONAI's self-supervised
  weights only the encoder) keeps its fresh initialisation; one the target lacks is not used;
- everything else must match key for key and shape for shape, or it is reported.

``swinunetr_state`` reads plain MONAI SwinUNETR state dicts and MONAI's self-supervised Swin weights.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from monai.networks.nets.swin_unetr import filter_swinunetr

from pirl_pipeline.data.modalities import modality_key

STEM_KEYS = ("swinViT.patch_embed.proj.weight", "encoder1.layer.conv1.conv.weight", "encoder1.layer.conv3.conv.weight")
PRIOR_KEY = "prior_fusion.prior"
PRIOR_ATTENTION = "prior_fusion.attn."
WRAPPERS = ("state_dict", "model", "network_weights", "net")  # where training scripts nest their weights

# Tang et al.'s self-supervised Swin weights (``model_swinvit.pt``), named as SwinUNETR.load_from reads them
_LEGACY_SSL = re.compile(r"(patch_embed\.proj\.(weight|bias)|layers[1-4]\.0\.(blocks\.\d+\.(norm[12]\.|attn\.|mlp\.)"
                         r"|downsample\.).*)")

def head_rows_by_name(target: Sequence[str], source: Sequence[str]) -> list[int | None]:
    """For each target modality the index of the same modality among ``source`` (aliases count: 'T1c', 'T1Gd'
    and 'T1ce' are one contrast, ``modalities.modality_key``), else None."""
    index = {modality_key(n): i for i, n in enumerate(source)}
    return [index.get(modality_key(n)) for n in target]


def swinunetr_state(obj: object) -> dict[str, torch.Tensor]:
    """SwinUNETR-keyed weights from a loaded file: a plain state dict (optionally under ``state_dict``/``model``/
    ``network_weights``/``net``, keys optionally prefixed ``module.``), MONAI's self-supervised Swin weights
    (``ssl_pretrained_weights.pth``, via MONAI's ``filter_swinunetr``) or Tang et al.'s ``model_swinvit.pt``
    (``module.patch_embed...``, ``mlp.fc1`` as ``SwinUNETR.load_from`` reads it). ValueError otherwise."""
    state = obj
    for wrapper in WRAPPERS:
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
            break
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("not a state dict of tensors")
    state = {str(k).removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("encoder.patch_embed.") for k in state):
        pairs = (filter_swinunetr(k, v) for k, v in state.items())
        state = dict(p for p in pairs if p is not None)
    elif "patch_embed.proj.weight" in state:
        state = {"swinViT." + k.replace("mlp.fc1.", "mlp.linear1.").replace("mlp.fc2.", "mlp.linear2."): v
                 for k, v in state.items() if _LEGACY_SSL.fullmatch(k)}
    if "swinViT.patch_embed.proj.weight" not in state:
        raise ValueError("no SwinUNETR encoder weights (swinViT.patch_embed.proj.weight)")
    return state


@dataclass
class Adaptation:
    """``state``: the tensors to load over the target's fresh initialisation (``strict=False``); ``notes``: what
    was adapted or left fresh (one line each); ``problems``: what cannot be adapted (empty when it all fits)."""

    state: dict[str, torch.Tensor] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _module(key: str) -> str:
    return key.split(".", 1)[0]


def _pick_rows(source: torch.Tensor, fresh: torch.Tensor, rows: Sequence[int | None], dim: int = 0) -> torch.Tensor:
    """``fresh`` with index t along ``dim`` taken from ``source``'s index rows[t] (None: the fresh one kept): the
    output head's rows (dim 0) or a stem's input channels (dim 1)."""
    if len(rows) != fresh.shape[dim]:
        raise ValueError(f"{len(rows)} row(s) given for {fresh.shape[dim]} channels along dim {dim}")
    out = fresh.clone()
    for target, row in enumerate(rows):
        if row is not None:
            out.select(dim, target).copy_(source.select(dim, row))
    return out


def _summed_stem(source: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
    """(out, C, k...) -> (out, C', k...) with the same sum over input channels, spread evenly."""
    return (source.sum(1, keepdim=True) / fresh.shape[1]).expand_as(fresh).clone()


def _resampled_prior(source: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
    """O (C, *grid) trilinearly resampled to the fresh prior's grid."""
    return F.interpolate(source[None].float(), size=fresh.shape[1:], mode="trilinear", align_corners=False)[0]


def adapt_state(target: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor], *,
                head: str | tuple[str, ...] = "out.", head_rows: Sequence[int | None] | None = None,
                stem_rows: Sequence[int | None] | None = None) -> Adaptation:
    """Map ``source`` onto the keys and shapes of ``target`` (a fresh model's state dict); see the module doc.

    head: key prefix(es) of the output head. head_rows: target output channel -> source row (None: fresh); when
    not given, the head is loaded if its shape fits and left fresh otherwise. stem_rows: target input channel
    -> source input channel (None: fresh), for a source whose stem reads each modality in its own channel.
    """
    result = Adaptation()
    target_modules, source_modules = {_module(k) for k in target}, {_module(k) for k in source}
    if fresh := [m for m in dict.fromkeys(map(_module, target)) if m not in source_modules]:
        result.notes.append(f"not in the source, freshly initialised: {', '.join(fresh)}")
    if unused := sorted(source_modules - target_modules):
        result.notes.append(f"not in this network, not used: {', '.join(unused)}")
    if not target_modules & source_modules:
        result.problems.append("no module in common")
    missing, mismatched, head_fresh, attention_fresh, stems = [], [], [], [], []
    for key, value in target.items():
        if _module(key) not in source_modules:
            continue
        if key not in source:
            missing.append(key)
            continue
        src = source[key]
        if key.startswith(head) and head_rows is not None:
            if all(row is None for row in head_rows):
                head_fresh.append(key)
            elif src.shape[1:] == value.shape[1:]:
                result.state[key] = _pick_rows(src, value, head_rows)
            else:
                mismatched.append(f"{key} {tuple(src.shape)} vs {tuple(value.shape)}")
        elif key in STEM_KEYS and stem_rows is not None and src.shape[0] == value.shape[0] \
                and src.shape[2:] == value.shape[2:]:
            result.state[key] = _pick_rows(src, value, stem_rows, dim=1)
            stems.append(key)
        elif src.shape == value.shape:
            result.state[key] = src
        elif key in STEM_KEYS and src.dim() == value.dim() and src.shape[0] == value.shape[0] \
                and src.shape[2:] == value.shape[2:]:
            result.state[key] = _summed_stem(src, value)
            stems.append(key)
        elif key == PRIOR_KEY and src.dim() == value.dim() and src.shape[0] == value.shape[0]:
            result.state[key] = _resampled_prior(src, value).to(value.dtype)
            result.notes.append(f"prior O resampled (trilinear) from grid {tuple(src.shape[1:])} to "
                                f"{tuple(value.shape[1:])}")
        elif key.startswith(PRIOR_ATTENTION):
            attention_fresh.append(key)
        elif key.startswith(head):
            head_fresh.append(key)
        else:
            mismatched.append(f"{key} {tuple(src.shape)} vs {tuple(value.shape)}")
    if stems and stem_rows is not None:
        result.notes.append(f"input stem mapped by modality (target channel <- source channel, None: fresh): "
                            f"{list(stem_rows)}: {', '.join(stems)}")
    elif stems:
        c_src, c_new = source[stems[0]].shape[1], target[stems[0]].shape[1]
        result.notes.append(f"input stem adapted from {c_src} to {c_new} channels (summed over the input channels: "
                            f"the same features for a modality repeated into every channel): {', '.join(stems)}")
    if attention_fresh:
        result.notes.append(f"prior attention freshly initialised (its embedding is the bottleneck grid volume): "
                            f"{', '.join(attention_fresh)}")
    if head_fresh:
        result.notes.append(f"output head freshly initialised: {', '.join(head_fresh)}")
    unexpected = [k for k in source if _module(k) in target_modules and k not in target]
    for label, keys in (("shape mismatch(es)", mismatched), ("missing key(s)", missing),
                        ("unexpected key(s)", unexpected)):
        if keys:
            result.problems.append(f"{len(keys)} {label}: " + "; ".join(keys[:6]) + ("; ..." if len(keys) > 6 else ""))
    return result
