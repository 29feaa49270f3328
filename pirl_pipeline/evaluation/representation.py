"""Is the representation personalised and invariant? The same subject seen through different modalities
should land close together, different subjects apart (docs/design.md §1, the paper's central claim).

Embeddings: for each held-out case (a preprocessed (C, z, y, x) array, already normalised) the centre patch
of the network's patch size (zero-padded where the case is smaller, as the validation patches are cut);
each modality alone (``PIRLNet.single_modality``: repeated into all input channels, or in its own channel
with fusion "joint") gives z (the deepest encoder state, before the
prior O) and X_h' (after the prior fusion), each flattened to D = 16·fs·(P/32)^3 features, float64.

Metrics of an embedding array E (N subjects, M modalities, D features), for z and for X_h' alike:

- ``retrieval_top1``: for every ordered modality pair (a, b), a != b, each subject's E[i, a] ranks all
  subjects' E[:, b] by cosine similarity; a hit when its own subject ranks first (k tied first places share
  the hit, 1/k each, so a collapsed representation scores chance exactly); mean over queries and pairs.
  ``retrieval_chance`` = 1/N. ``retrieval_top1_centered``: the same after subtracting the mean embedding over
  all (subject, modality) pairs, so a large shared component (e.g. a dominant prior O) does not swamp the
  cosines.
- ``within_var``: mean over subjects and features of the sample variance (ddof=1) across the subject's M
  modalities; ``between_var``: mean over features of the sample variance across subjects of the subject
  means; ``variance_ratio`` = within / between: 0 for a perfectly personalised-invariant representation;
  without any subject structure (every embedding drawn independently) it is about M (a mean of M draws has
  1/M of their variance): ``variance_ratio_no_structure`` = M. Lower is better; inf when between_var = 0 <
  within_var (the representation ignores the subject), NaN when both are 0 (a variance below 1e-20 of the
  mean square of E is float rounding and counts as 0).
- collapse check: ``cosine_other_subjects`` (mean cosine similarity over pairs of embeddings of DIFFERENT
  subjects, any modalities), ``cosine_same_subject`` (different modalities of the same subject) and
  ``between_std_relative`` = sqrt(between_var) / RMS of all embedding values (about 0 when every subject
  maps to the same point: then cosine_other_subjects is about 1 and retrieval sits at chance).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from monai.networks.nets import SwinUNETR

from pirl_pipeline.checkpoint import load_checkpoint, load_network
from pirl_pipeline.dataloading.augmentation import IMAGE_PAD
from pirl_pipeline.dataloading.dataset import PreprocessedDataset
from pirl_pipeline.dataloading.sampling import centered_position, crop_padded
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.file_io import atomic_path, save_json
from pirl_pipeline.networks.factory import build_network
from pirl_pipeline.networks.modalities import slot_modality
from pirl_pipeline.networks.pirl_net import PIRLNet

REPRESENTATIONS = ("z", "x_h")
BOTTLENECK = "bottleneck"  # a SwinUNETR's deepest encoder state (swinunetr_bottleneck), its counterpart of z
METRICS = ("retrieval_top1", "retrieval_top1_centered", "retrieval_chance", "within_var", "between_var",
           "variance_ratio", "variance_ratio_no_structure", "cosine_other_subjects", "cosine_same_subject",
           "between_std_relative")
_TIE = 1e-12  # cosine similarities this close to the best count as tied first places
_ZERO = 1e-20  # variances below this fraction of the mean square are float rounding: 0


@dataclass
class Embeddings:
    """Flattened representations of each (subject, modality): z and x_h are (N, M, D) float64."""

    cases: list[str]
    z: np.ndarray
    x_h: np.ndarray


def _unit(e: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(e, axis=-1, keepdims=True)
    return np.divide(e, norm, out=np.zeros_like(e), where=norm > 0)  # a zero vector has cosine 0 with all


def retrieval_top1(e: np.ndarray) -> float:
    """Mean top-1 cross-modal subject retrieval over ordered modality pairs (ties share the hit)."""
    n, m, _ = e.shape
    unit = _unit(e)
    hits = []
    for a in range(m):
        for b in range(m):
            if a != b:
                similarity = unit[:, a] @ unit[:, b].T  # (N queries, N candidates)
                first = similarity >= similarity.max(axis=1, keepdims=True) - _TIE
                hits.append(np.diag(first) / first.sum(axis=1))
    return float(np.mean(hits)) if n else math.nan


def embedding_metrics(embeddings: np.ndarray) -> dict[str, float]:
    """The metrics of the module docstring for E (N >= 2 subjects, M >= 2 modalities, D features)."""
    e = np.asarray(embeddings, np.float64)
    if e.ndim != 3 or e.shape[0] < 2 or e.shape[1] < 2:
        raise ValueError(f"embeddings must be (N>=2 subjects, M>=2 modalities, D), got shape {e.shape}")
    if not np.isfinite(e).all():
        raise ValueError("embeddings hold non-finite values")
    n, m, _ = e.shape
    mean_square = float(np.mean(e**2))
    within, between = (float(v) if v > _ZERO * mean_square else 0.0
                       for v in (e.var(axis=1, ddof=1).mean(), e.mean(axis=1).var(axis=0, ddof=1).mean()))
    if between > 0:
        ratio = within / between
    else:
        ratio = math.inf if within > 0 else math.nan
    unit = _unit(e).reshape(n * m, -1)
    cosine = unit @ unit.T
    subject = np.repeat(np.arange(n), m)
    same = subject[:, None] == subject[None, :]
    rms = math.sqrt(mean_square)
    return {
        "retrieval_top1": retrieval_top1(e),
        "retrieval_top1_centered": retrieval_top1(e - e.mean(axis=(0, 1))),
        "retrieval_chance": 1 / n,
        "within_var": within,
        "between_var": between,
        "variance_ratio": ratio,
        "variance_ratio_no_structure": float(m),
        "cosine_other_subjects": float(cosine[~same].mean()),
        "cosine_same_subject": float(cosine[same & ~np.eye(n * m, dtype=bool)].mean()),
        "between_std_relative": math.sqrt(between) / rms if rms > 0 else math.nan,
    }


def center_patch(data: np.ndarray, patch_size: Sequence[int]) -> np.ndarray:
    """The centre patch (C, *patch_size) of a (C, z, y, x) array, zero-padded where the array is smaller."""
    patch = tuple(int(p) for p in patch_size)
    return crop_padded(data, centered_position(data.shape[1:], patch), patch, IMAGE_PAD)


@torch.no_grad()
def embed_cases(network: PIRLNet, cases: dict[str, np.ndarray], patch_size: Sequence[int] | None = None,
                device: torch.device | str = "cpu") -> Embeddings:
    """z and X_h' of every (case, modality): each modality of the case's centre patch fed alone
    (``PIRLNet.single_modality``). ``cases``: ``{name: (M, z, y, x)}``, all with the same M."""
    if not isinstance(network, PIRLNet):
        raise PirlInputError(f"representation metrics need a PIRLNet (z and X_h'), got {type(network).__name__}")
    patch = tuple(network.patch_size if patch_size is None else patch_size)
    counts = {np.asarray(a).shape[0] for a in cases.values()}
    if len(counts) != 1:
        raise PirlInputError(f"every case needs the same number of modalities, got {sorted(counts)}")
    network = network.to(device).eval()
    names, z, x_h = sorted(cases), [], []
    for name in names:
        crop = torch.from_numpy(center_patch(np.asarray(cases[name], np.float32), patch))[None].to(device)
        inputs = torch.cat([network.single_modality(crop, m) for m in range(crop.shape[1])])
        out = network(inputs, decode=False, heads=False)
        z.append(out.z.flatten(1).double().cpu().numpy())
        x_h.append(out.x_h.flatten(1).double().cpu().numpy())
    return Embeddings(names, np.stack(z), np.stack(x_h))


def representation_metrics(network: PIRLNet, cases: dict[str, np.ndarray], patch_size: Sequence[int] | None = None,
                           device: torch.device | str = "cpu") -> dict:
    """``{"cases", "subjects", "modalities", "feature_dim", "patch_size", "z": {metric: value}, "x_h": {...}}``
    for the held-out ``cases`` (``{name: (M, z, y, x)}`` preprocessed arrays); see the module docstring."""
    embeddings = embed_cases(network, cases, patch_size, device)
    n, m, d = embeddings.z.shape
    return {"cases": embeddings.cases, "subjects": n, "modalities": m, "feature_dim": d,
            "patch_size": list(network.patch_size if patch_size is None else patch_size),
            **{r: embedding_metrics(getattr(embeddings, r)) for r in REPRESENTATIONS}}


@torch.no_grad()
def swinunetr_bottleneck(network: SwinUNETR, cases: dict[str, np.ndarray], patch_size: Sequence[int],
                         device: torch.device | str = "cpu") -> np.ndarray:
    """(N, M, D) float64: a SwinUNETR's deepest encoder state ``encoder10(swinViT(x)[4])`` (its counterpart of
    PIRL's z) for every (case, modality), each modality alone in its own channel of the case's centre patch and
    the others zero, as a dropped channel reaches it in training; cases sorted by name."""
    network = network.to(device).eval()
    out = []
    for name in sorted(cases):
        crop = torch.from_numpy(center_patch(np.asarray(cases[name], np.float32), patch_size))[None].to(device)
        alone = torch.cat([slot_modality(crop, m) for m in range(crop.shape[1])])
        state = network.encoder10(network.swinViT(alone, network.normalize)[4])
        out.append(state.flatten(1).double().cpu().numpy())
    return np.stack(out)


def load_swinunetr_network(checkpoint: str | Path, device: torch.device | str = "cpu",
                           random_init_seed: int | None = None) -> tuple[SwinUNETR, list[int]]:
    """(the SwinUNETR of a pirl checkpoint in eval mode, the patch size it was trained on); with
    ``random_init_seed`` the same architecture with fresh weights drawn under that seed instead."""
    state = load_checkpoint(checkpoint, map_location=device)
    if state["network_kwargs"].get("kind") != "swinunetr":
        raise PirlInputError(f"{checkpoint}: a {state['network_kwargs'].get('kind')!r} network, not a SwinUNETR")
    if random_init_seed is None:
        network = load_network(state, Path(checkpoint))
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(random_init_seed)
            network = build_network(state["network_kwargs"])
    return network.to(device).eval(), list(state["config"]["patch_size"])


def load_pirl_network(checkpoint: str | Path, device: torch.device | str = "cpu") -> PIRLNet:
    """The PIRLNet of a pirl checkpoint (pre-training or fine-tuning), weights loaded, eval mode."""
    state = load_checkpoint(checkpoint, map_location=device)
    if state["network_kwargs"].get("kind") != "pirl":
        raise PirlInputError(f"{checkpoint}: a {state['network_kwargs'].get('kind')!r} network; representation "
                             "metrics need a PIRLNet (z before and X_h' after the prior)")
    network = build_network(state["network_kwargs"])
    network.load_state_dict(state["network_weights"])
    return network.to(device).eval()


def random_init_like(network: PIRLNet, seed: int = 0) -> PIRLNet:
    """The same architecture with fresh weights drawn under ``seed`` (the global torch RNG is left as is)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PIRLNet(**network.config).eval()


def load_preprocessed_cases(folder: str | Path, case_names: list[str] | None = None) -> dict[str, np.ndarray]:
    """``{case: (C, z, y, x) memory map}`` of a preprocessed configuration folder (e.g. a fold's val cases)."""
    dataset = PreprocessedDataset(folder, case_names)
    return {name: dataset.arrays(name)[0] for name in dataset.case_names}


def checkpoint_representation(checkpoint: str | Path, cases: dict[str, np.ndarray],
                              device: torch.device | str = "cpu", seed: int = 0) -> dict[str, dict]:
    """``{"trained": metrics, "random_init": metrics}``: a checkpoint's network and the same architecture
    freshly initialised (``seed``), on the same cases."""
    trained = load_pirl_network(checkpoint, device)
    return {"trained": representation_metrics(trained, cases, device=device),
            "random_init": representation_metrics(random_init_like(trained, seed), cases, device=device)}


def _jsonable(value):
    """NaN -> null, +-inf -> "inf"/"-inf" (as summary.json writes them); anything else unchanged."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def write_representation_results(results: dict[str, dict], out_folder: str | Path) -> list[Path]:
    """``representation.json`` (``{model label: representation_metrics(...)}`` as given, NaN as null, inf as
    "inf") and ``representation.csv`` (one row per model and representation, one column per metric)."""
    out = Path(out_folder)
    rows = [{"model": label, "representation": r, "subjects": res["subjects"], "modalities": res["modalities"],
             **res[r]} for label, res in results.items() for r in REPRESENTATIONS]
    clean = {label: {k: {m: _jsonable(v) for m, v in val.items()} if k in REPRESENTATIONS else val
                     for k, val in res.items()} for label, res in results.items()}
    json_path, csv_path = out / "representation.json", out / "representation.csv"
    save_json(clean, json_path)
    with atomic_path(csv_path) as tmp:
        pd.DataFrame(rows, columns=["model", "representation", "subjects", "modalities", *METRICS]).to_csv(
            tmp, index=False)
    return [json_path, csv_path]
