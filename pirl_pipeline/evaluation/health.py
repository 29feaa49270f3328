"""Representation health: does PIRLNet's X_h' carry the person? Logged every epoch (``val/health_*``).

On fixed patches of S subjects (S, M, *patch) — each modality fed alone, as the network sees a single modality
(``PIRLNet.single_modality``) — five numbers say whether the representation is alive (issue 23):

- ``health_swap``: each subject's X_h' replaced by another subject's (cyclic pairing i <- i+1), its own skips
  kept: ||D(X_h'_j, skips_i) - D(X_h'_i, skips_i)|| / ||D(X_h'_j, skips_j) - D(X_h'_i, skips_i)||, mean over
  subjects and modalities. 0: the decoder ignores X_h' (it reads the skips only); about 1: X_h' decides.
- ``health_spread`` (X_h') and ``health_spread_z`` (z, before the prior): sqrt(between / within), with
  between = variance across subjects of the subject means and within = mean variance across a subject's
  modalities, both about their means (centred), averaged over features. Scale- and shift-free, so a
  LayerNorm'd embedding with a large shared component is not mistaken for collapse. 0: every subject maps to
  the same point (collapse); about 1/sqrt(M): no subject structure; large: subjects apart, modalities together.
  inf when the modalities of each subject coincide exactly; NaN with one modality.
- ``health_retrieval``: top-1 cross-modal subject retrieval from centred X_h' (``representation.retrieval_top1``;
  chance 1/S; ties share the hit, so a collapsed X_h' scores chance). NaN with one modality.
- ``health_prior_entropy``: mean entropy of the prior attention rows / log C (1: uniform, it attends to
  nothing); ``health_prior_share``: variance of the O path's additive part of X_h' (the fuse convolution of
  T(Attn(z, O)) alone) / variance of X_h', over all elements. Both NaN without the prior.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from pirl_pipeline.evaluation.representation import center_patch, retrieval_top1
from pirl_pipeline.networks.pirl_net import PIRLNet

HEALTH_KEYS = ("health_swap", "health_spread", "health_spread_z", "health_retrieval", "health_prior_entropy",
               "health_prior_share")
_ZERO = 1e-12  # variances below this fraction of the mean square are float rounding: 0


def spread(e: np.ndarray) -> float:
    """sqrt(between / within) of E (S subjects, M modalities, D features); see the module docstring."""
    if e.shape[1] < 2:
        return math.nan
    floor = _ZERO * float(np.mean(e**2)) + 1e-30
    within = float(e.var(axis=1, ddof=1).mean())
    between = float(e.mean(axis=1).var(axis=0, ddof=1).mean())
    if between <= floor:
        return 0.0
    return math.inf if within <= floor else math.sqrt(between / within)


def _swap_share(network: PIRLNet, x_h: torch.Tensor, skips: list[torch.Tensor]) -> float:
    """x_h (S, C, *grid) and skips of S subjects (one modality): the swap ratio, mean over subjects."""
    own = network.decode(x_h, skips).flatten(1).double()
    swapped = network.decode(x_h.roll(-1, dims=0), skips).flatten(1).double()
    other = own.roll(-1, dims=0)  # D(X_h'_j, skips_j)
    between = (other - own).norm(dim=1)
    ratio = (swapped - own).norm(dim=1) / between.clamp_min(1e-12)
    return float(ratio[between > 1e-12].mean()) if bool((between > 1e-12).any()) else math.nan


@torch.no_grad()
def representation_health(network: PIRLNet, patches: torch.Tensor) -> dict[str, float]:
    """The HEALTH_KEYS of ``network`` on ``patches`` (S >= 2 subjects, M modalities, *patch), see the module
    docstring. Runs in eval mode and puts the network's mode back."""
    if patches.dim() != 5 or patches.shape[0] < 2:
        raise ValueError(f"health needs patches (S>=2, M, *patch), got {tuple(patches.shape)}")
    was_training = network.training
    network.eval()
    try:
        fusion = network.prior_fusion
        z_all, x_all, swaps, entropies, shares = [], [], [], [], []
        for m in range(patches.shape[1]):
            z, x_h, skips = network.encode(network.single_modality(patches, m))
            z_all.append(z.flatten(1).double().cpu().numpy())
            x_all.append(x_h.flatten(1).double().cpu().numpy())
            swaps.append(_swap_share(network, x_h, skips))
            if fusion is not None:
                weights = fusion.attend(z, need_weights=True)[1].double()  # (S, heads, C, C)
                entropy = -(weights * weights.clamp_min(1e-30).log()).sum(-1)
                entropies.append(float(entropy.mean()) / math.log(weights.shape[-1]))
                _, o_part = fusion.parts(z)
                shares.append(float(o_part.double().var() / x_h.double().var().clamp_min(1e-30)))
        z_e, x_e = np.stack(z_all, axis=1), np.stack(x_all, axis=1)  # (S, M, D)
        multi = patches.shape[1] >= 2
        return {
            "health_swap": float(np.nanmean(swaps)) if not all(map(math.isnan, swaps)) else math.nan,
            "health_spread": spread(x_e),
            "health_spread_z": spread(z_e),
            "health_retrieval": retrieval_top1(x_e - x_e.mean(axis=(0, 1))) if multi else math.nan,
            "health_prior_entropy": float(np.mean(entropies)) if entropies else math.nan,
            "health_prior_share": float(np.mean(shares)) if shares else math.nan,
        }
    finally:
        network.train(was_training)


def health_patches(cases: Sequence[np.ndarray], patch_size: Sequence[int]) -> torch.Tensor:
    """(S, M, *patch) float32: the centre patch of each preprocessed case (M, z, y, x) (``center_patch``)."""
    return torch.from_numpy(np.stack([center_patch(np.asarray(c, np.float32), patch_size) for c in cases]))
