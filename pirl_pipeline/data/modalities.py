"""Modality kinds: the one place that knows what a channel name (dataset.json ``channel_names``) means.

:func:`modality` looks a name up by alias, case and separators ignored (``"T2-FLAIR"``, ``"t2_flair"``, ``"T2f"``
are FLAIR); a name starting with a kind's prefix is that kind (``"CT_venous"``: CT; ``"PET_AC"``: PET); any other
name is generic MRI (per-image z-score is the safe scheme for a contrast without a physical unit). Each kind
(:class:`Modality`) carries:

- its **family** ("MRI", "CT" or "PET"): :func:`modality_kind`, the fingerprint's and the plans' ``modality_kinds``,
  the converter's padding outside a field of view;
- its **normaliser** (:class:`Normalizer`, named by the plans' scheme): forward, inverse, the dataset-level
  inverse for a channel a case lacked (synthesised), whether its output keeps physical units, the clause the
  plans' explanation gives, and whether it may normalise on the body mask;
- its **roles**: the threshold reference's lesion-bright order (FLAIR, then T2, then PET, else the first channel:
  :func:`lesion_index`), the uptake channel of the SUV rules (PET: :func:`uptake_index`), the evaluation's
  policy for a target absent from the reference ("exclude" when a channel is PET, AutoPET-like data with many
  lesion-free cases; else "one_if_both_empty", BraTS: :func:`empty_reference_policy`) and the integrity
  warnings (MRI expects a zero background; CT must be in Hounsfield units, PET in SUV);
- the names that denote the same contrast across BraTS 2018-2021, 2023, UPENN-GBM and nnU-Net spellings
  (weight transfer matches heads by :func:`modality_key`).

Adding a kind (ADC, DWI) is one entry in the list at the end of this module (or one :func:`register` call);
every module that reads a channel name asks this one. A kind registered at run time exists in the process that
registered it: pass ``-np 1`` (spawned workers import this module afresh), or add the entry here.

Normalisation schemes (``preprocessing/normalization.py`` applies them by name):

- ``ZScoreNormalization`` (MRI): per image, z-score on the non-zero mask when ``use_mask`` (skull-stripped
  data), background set to 0; on the whole image otherwise.
- ``CTNormalization``: clip to the dataset's foreground percentiles 0.5/99.5, then z-score with the
  dataset's foreground mean/std (nnU-Net's scheme; Hounsfield units are comparable across images).
- ``PETNormalization`` (our choice, docs/design.md §5): SUV is already a physical unit, so it is kept
  un-centred: ``max(SUV, 0) / p99.5`` of the dataset foreground. Background stays 0 and lesion
  contrast (SUV ratios) is preserved; no upper clip so hot lesions are not flattened.
- ``NoNormalization`` (no kind uses it; a hand-edited plans file may): identity.

Each returns the parameters ``{"mean", "std"}`` of its affine inverse (clipping is not invertible).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

EPS = 1e-8
FAMILIES = ("MRI", "CT", "PET")
#: the value outside a scan's field of view, per family (resampling pads with it): CT air, no PET uptake, MRI 0
OUTSIDE_VALUE = {"CT": -1000.0, "PET": 0.0, "MRI": 0.0}
EMPTY_REFERENCE = ("one_if_both_empty", "exclude")  # the evaluation's policies (evaluation/metrics.py applies them)
SUV_PLAUSIBLE_MAX = 200.0  # FDG SUV stays far below (bladder ~100); activity in Bq/ml is in the thousands
_SEPARATORS = re.compile(r"[\s_\-.]+")

#: forward(image float32, mask, dataset foreground statistics, use_mask) -> (normalised, inverse parameters)
Forward = Callable[[np.ndarray, np.ndarray | None, dict | None, bool], tuple[np.ndarray, dict]]


def name_key(name: str) -> str:
    """How names are compared: lower case, without spaces, ``_``, ``-`` and ``.`` ("T2-FLAIR" -> "t2flair")."""
    return _SEPARATORS.sub("", str(name).strip().lower())


def affine_inverse(image: np.ndarray, params: dict) -> np.ndarray:
    """``image * std + mean``: the inverse of every scheme here (affine part; clipping is not invertible)."""
    return image * params["std"] + params["mean"]


@dataclass(frozen=True)
class Normalizer:
    """A normalisation scheme, named as the plans name it (``scheme``).

    ``forward`` normalises one channel (see :data:`Forward`); ``inverse(image, params)`` undoes it;
    ``dataset_inverse(foreground statistics) -> params`` gives the inverse parameters of a channel the case did
    not have (a synthesised channel): None when its units are not physical, so the output stays in the
    normalised units; ``explain(foreground statistics)`` is its clause in the plans' explanation;
    ``uses_body_mask``: whether the planner may turn ``use_mask_for_norm`` on for it."""

    scheme: str
    forward: Forward
    explain: Callable[[dict], str]
    dataset_inverse: Callable[[dict], dict] | None = None
    inverse: Callable[[np.ndarray, dict], np.ndarray] = affine_inverse
    uses_body_mask: bool = False

    @property
    def keeps_units(self) -> bool:
        """Whether a synthesised channel is returned in physical units (HU, SUV) rather than normalised ones."""
        return self.dataset_inverse is not None

    def normalize(self, image: np.ndarray, mask: np.ndarray | None, props: dict | None,
                  use_mask: bool) -> tuple[np.ndarray, dict]:
        """One channel as float32, normalised; returns the image and the parameters needed to invert it."""
        return self.forward(image.astype(np.float32, copy=False), mask, props, use_mask)

    def dataset_params(self, props: dict | None) -> dict:
        """Inverse parameters of a channel a case lacked, from the dataset's foreground statistics ``props`` of
        that channel: the dataset-level inverse, or identity (the output stays in normalised units)."""
        return self.dataset_inverse(props) if self.dataset_inverse else {"mean": 0.0, "std": 1.0}


def _zscore(image: np.ndarray, mask: np.ndarray | None, props: dict | None,
            use_mask: bool) -> tuple[np.ndarray, dict]:
    region = image[mask] if use_mask and mask is not None and mask.any() else image
    mean, std = float(region.mean()), float(region.std())
    out = (image - mean) / max(std, EPS)
    if use_mask and mask is not None:
        out[~mask] = 0
    return out, {"mean": mean, "std": std}


def _ct(image: np.ndarray, mask: np.ndarray | None, props: dict | None,
        use_mask: bool) -> tuple[np.ndarray, dict]:
    lo, hi = props["percentile_00_5"], props["percentile_99_5"]
    mean, std = props["mean"], props["std"]
    return (np.clip(image, lo, hi) - mean) / max(std, EPS), {"mean": mean, "std": std}


def _pet(image: np.ndarray, mask: np.ndarray | None, props: dict | None,
         use_mask: bool) -> tuple[np.ndarray, dict]:
    scale = max(props["percentile_99_5"], EPS)
    return np.maximum(image, 0) / scale, {"mean": 0.0, "std": scale}


def _identity(image: np.ndarray, mask: np.ndarray | None, props: dict | None,
              use_mask: bool) -> tuple[np.ndarray, dict]:
    return image, {"mean": 0.0, "std": 1.0}


ZSCORE = Normalizer(
    "ZScoreNormalization", _zscore, uses_body_mask=True,
    # no dataset-level inverse: a synthesised channel stays in the model's z-score units (mean 0 / std 1 over the
    # body), NOT de-normalised (fix; was: the dataset-average mean/std). MRI intensities have no physical unit:
    # every scanner and protocol has its own gain and offset, so a dataset-average mean/std would invent a scale
    # the case never had. Scores that compare with the field (pirl_evaluate's PSNR/NMSE/SSIM) rescale every
    # volume by its own percentiles anyway; a user who needs the subject's units must calibrate.
    explain=lambda p: "z-score per image (MRI has no physical unit)")
CT_NORMALIZATION = Normalizer(
    "CTNormalization", _ct,
    dataset_inverse=lambda p: {"mean": p["mean"], "std": p["std"]},
    explain=lambda p: (f"HU clipped to the foreground 0.5/99.5 percentiles [{p['percentile_00_5']:.0f}, "
                       f"{p['percentile_99_5']:.0f}], then z-scored with the foreground mean {p['mean']:.0f} and std "
                       f"{p['std']:.0f} (nnU-Net's CT scheme)"))
PET_NORMALIZATION = Normalizer(
    "PETNormalization", _pet,
    dataset_inverse=lambda p: {"mean": 0.0, "std": p["percentile_99_5"]},
    explain=lambda p: (f"SUV kept un-centred, max(SUV, 0) / {p['percentile_99_5']:.3g} (foreground p99.5): "
                       "background stays 0 and SUV ratios survive"))
NO_NORMALIZATION = Normalizer("NoNormalization", _identity, explain=lambda p: "left as stored (no normalisation)")


def _not_hounsfield(channel: np.ndarray) -> str | None:
    if np.any((channel > -1000) & (channel < 0)):
        return None
    return ("has no value between -1000 and 0, so it is not in Hounsfield units (fat is about -100, lung -800): "
            "apply the rescale intercept (e.g. -1024)")


def _not_suv(channel: np.ndarray) -> str | None:
    if channel.max() <= SUV_PLAUSIBLE_MAX:
        return None
    return (f"reaches {channel.max():.4g}, above any SUV (> {SUV_PLAUSIBLE_MAX:g}): activity in Bq/ml? convert to "
            "SUV first")


@dataclass(frozen=True)
class Modality:
    """One modality kind.

    ``name``: canonical; ``family``: one of FAMILIES; ``normalizer``: its scheme; ``aliases``: other names that
    denote it (compared by :func:`name_key`); ``prefixes``: a name that starts with one (lower case, separators
    kept: "CT_venous", not "C_T1") is this kind too, unless it is another kind's alias; ``lesion_rank``: the
    threshold reference reads the channel of lowest rank (None: never chosen by name); ``uptake``: the SUV rules
    read it; ``empty_reference``: the evaluation's policy a channel of this kind asks for ("exclude" wins over the
    default); ``zero_background``: a case whose channels are all of such kinds and hold no 0 voxel is warned
    about; ``units_warning(channel)``: why the values are not in the kind's physical unit, or None."""

    name: str
    family: str
    normalizer: Normalizer
    aliases: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    lesion_rank: int | None = None
    uptake: bool = False
    empty_reference: str = "one_if_both_empty"
    zero_background: bool = True
    units_warning: Callable[[np.ndarray], str | None] | None = None

    @property
    def keys(self) -> set[str]:
        """Every name key that denotes this kind (its name and aliases)."""
        return {name_key(n) for n in (self.name, *self.aliases)}


GENERIC = "MRI"  # the kind of a name no entry claims
KINDS: dict[str, Modality] = {}


def register(kind: Modality) -> Modality:
    """Add ``kind`` to the registry; ValueError when its name, an alias or its scheme's name is taken by another
    kind, or a value is outside what is allowed."""
    if kind.family not in FAMILIES:
        raise ValueError(f"modality {kind.name!r}: family {kind.family!r}; choose from {FAMILIES}")
    if kind.empty_reference not in EMPTY_REFERENCE:
        raise ValueError(f"modality {kind.name!r}: empty_reference {kind.empty_reference!r}; choose from "
                         f"{EMPTY_REFERENCE}")
    for other in KINDS.values():
        if other.name == kind.name:
            raise ValueError(f"modality {kind.name!r} is already registered")
        if other.keys & kind.keys:
            raise ValueError(f"modality {kind.name!r}: name(s) {sorted(other.keys & kind.keys)} already denote "
                             f"{other.name!r}")
    known = {n.scheme: n for n in normalizers()}
    if known.get(kind.normalizer.scheme, kind.normalizer) != kind.normalizer:
        raise ValueError(f"modality {kind.name!r}: scheme {kind.normalizer.scheme!r} is another normaliser's name")
    KINDS[kind.name] = kind
    return kind


def normalizers() -> list[Normalizer]:
    """Every scheme the plans may name: the registered kinds' (in order) and NoNormalization."""
    found = {k.normalizer.scheme: k.normalizer for k in KINDS.values()}
    found.setdefault(NO_NORMALIZATION.scheme, NO_NORMALIZATION)
    return list(found.values())


def scheme_names() -> tuple[str, ...]:
    """The scheme names a plans file may hold."""
    return tuple(n.scheme for n in normalizers())


def normalizer(scheme: str) -> Normalizer:
    """The normaliser the plans call ``scheme``; ValueError naming the known ones otherwise."""
    for n in normalizers():
        if n.scheme == scheme:
            return n
    raise ValueError(f"unknown normalization scheme {scheme!r} (known: {', '.join(scheme_names())})")


def _by_alias(name: str) -> Modality | None:
    key = name_key(name)
    return next((k for k in KINDS.values() if key in k.keys), None)


def modality(name: str) -> Modality:
    """The kind of a channel name: by alias (case and separators ignored), else by prefix, else generic MRI."""
    found = _by_alias(name)
    if found is None:
        lower = str(name).strip().lower()
        found = next((k for k in KINDS.values() if any(lower.startswith(p) for p in k.prefixes)), KINDS[GENERIC])
    return found


def modality_kind(name: str) -> str:
    """'CT', 'PET' or 'MRI': the family of ``name``'s kind."""
    return modality(name).family


def modality_key(name: str) -> str:
    """The key two names share when they denote the same contrast: the kind's for one of its names or aliases
    ('T1c', 'T1Gd', 'T1ce' -> 't1ce'), else the name's own :func:`name_key` (prefixes do not count: 'CT_venous'
    and 'CT_arterial' stay two contrasts)."""
    found = _by_alias(name)
    return name_key(found.name) if found else name_key(name)


def lesion_index(names: Iterable[str]) -> int:
    """Index of the name whose kind shows lesions brightest (lowest ``lesion_rank``: FLAIR, then T2, then PET;
    the first among equals), else 0."""
    ranks = [modality(n).lesion_rank for n in names]
    ranked = [(r, i) for i, r in enumerate(ranks) if r is not None]
    return min(ranked)[1] if ranked else 0


def uptake_index(names: Iterable[str]) -> int | None:
    """Index of the first name whose kind the uptake (SUV) rules read, else None."""
    return next((i for i, n in enumerate(names) if modality(n).uptake), None)


def empty_reference_policy(names: Iterable[str]) -> str:
    """The evaluation's default for a target absent from the reference, for a dataset with channels ``names``:
    "exclude" when a channel's kind asks for it (PET), else "one_if_both_empty"."""
    return "exclude" if any(modality(n).empty_reference == "exclude" for n in names) else EMPTY_REFERENCE[0]


for _kind in (
    Modality("T1", "MRI", ZSCORE, aliases=("t1w", "t1n", "t1native")),
    Modality("T1ce", "MRI", ZSCORE, aliases=("t1c", "t1gd", "t1-gd", "t1post", "t1contrast")),
    Modality("T2", "MRI", ZSCORE, aliases=("t2w",), lesion_rank=1),
    Modality("FLAIR", "MRI", ZSCORE, aliases=("t2f", "t2flair", "t2-flair"), lesion_rank=0),
    Modality("CT", "CT", CT_NORMALIZATION, aliases=("ctres",), prefixes=("ct",), zero_background=False,
             units_warning=_not_hounsfield),
    Modality("PET", "PET", PET_NORMALIZATION, aliases=("suv", "suvbw", "fdgpet"), prefixes=("pet",), lesion_rank=2,
             uptake=True, empty_reference="exclude", zero_background=False, units_warning=_not_suv),
    Modality(GENERIC, "MRI", ZSCORE, aliases=("mr",)),
):
    register(_kind)
