"""Typed access to ``PIRLPlans.json`` (the plans schema).

The JSON stays the source of truth and is meant to be read and hand-edited; these dataclasses only give
the trainers and the predictor attribute access and defaults. Unknown keys are kept, so a hand-added field
survives a load/save round trip.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from pirl_pipeline.data.modalities import modality_kind, scheme_names
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.file_io import load_json, save_json

log = logging.getLogger("pirl")
PLANS_FILE = "PIRLPlans.json"
IMAGE_ORDERS = (0, 1, 3)  # the image interpolation orders preprocessing/resampling.py implements
LABEL_RESAMPLING = "linear per class"  # the one label interpolation it implements (nnU-Net's)


def check_resampling(name: str, resampling: object) -> None:
    """The plans' ``resampling`` block, which preprocessing and prediction read: ``data_order`` (image
    interpolation, 0/1/3), ``label`` ("linear per class", the only one implemented) and ``anisotropy_threshold``
    (> 1: the spacing ratio above which the coarse axis is interpolated separately). PirlInputError otherwise."""
    where = f"plans configuration {name!r}: resampling"
    if not isinstance(resampling, dict) or not {"data_order", "label", "anisotropy_threshold"} <= set(resampling):
        raise PirlInputError(f"{where} must hold data_order, label and anisotropy_threshold, got {resampling!r}")
    if resampling["data_order"] not in IMAGE_ORDERS or isinstance(resampling["data_order"], bool):
        raise PirlInputError(f"{where}: data_order must be one of {IMAGE_ORDERS}, got {resampling['data_order']!r}")
    if resampling["label"] != LABEL_RESAMPLING:
        raise PirlInputError(f"{where}: label must be {LABEL_RESAMPLING!r} (the only label interpolation pirl "
                             f"implements), got {resampling['label']!r}")
    threshold = resampling["anisotropy_threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not threshold > 1:
        raise PirlInputError(f"{where}: anisotropy_threshold must be a number > 1, got {threshold!r}")


@dataclass
class ConfigurationPlans:
    """One configuration (e.g. ``3d_fullres``) of the plans."""

    name: str
    data_identifier: str
    spacing: list[float]
    patch_size: list[int]
    batch_size: int
    median_image_size_in_voxels: list[float]
    normalization_schemes: list[str]
    use_mask_for_norm: list[bool]
    resampling: dict
    network: dict
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, name: str, d: dict) -> ConfigurationPlans:
        keys = [f for f in cls.__dataclass_fields__ if f not in ("name", "extra")]
        missing = [k for k in keys if k not in d]
        if missing:
            raise PirlInputError(f"plans configuration {name!r}: missing key(s) {', '.join(missing)}")
        for scheme in d["normalization_schemes"]:
            if scheme not in scheme_names():
                raise PirlInputError(f"plans configuration {name!r}: unknown normalization scheme {scheme!r} "
                                     f"(known: {', '.join(scheme_names())})")
        if len(d["patch_size"]) != 3 or any(int(s) % 32 or int(s) < 32 for s in d["patch_size"]):
            raise PirlInputError(f"plans configuration {name!r}: patch_size must be 3 sides, each a multiple "
                                 f"of 32 (SwinUNETR), got {d['patch_size']}")
        if len(d["spacing"]) != 3 or not all(float(s) > 0 for s in d["spacing"]):
            raise PirlInputError(f"plans configuration {name!r}: spacing must be 3 values > 0, got {d['spacing']}")
        check_resampling(name, d["resampling"])
        if len(d["use_mask_for_norm"]) != len(d["normalization_schemes"]):
            raise PirlInputError(f"plans configuration {name!r}: use_mask_for_norm has "
                                 f"{len(d['use_mask_for_norm'])} entries, normalization_schemes "
                                 f"{len(d['normalization_schemes'])}")
        return cls(name=name, **{k: d[k] for k in keys}, extra={k: v for k, v in d.items() if k not in keys})

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("name", "extra")}
        return {**d, **self.extra}


@dataclass
class Plans:
    """The whole plans file: dataset-level facts plus one entry per configuration."""

    dataset_name: str
    plans_name: str
    channel_names: dict[str, str]
    modality_kinds: list[str]
    labels: dict
    regions_class_order: list[int] | None
    foreground_intensity_properties_per_channel: dict[str, dict[str, float]]
    configurations: dict[str, ConfigurationPlans]
    extra: dict = field(default_factory=dict)

    @property
    def num_input_channels(self) -> int:
        return len(self.channel_names)

    def configuration(self, name: str) -> ConfigurationPlans:
        if name not in self.configurations:
            raise PirlInputError(f"{self.plans_name}: no configuration {name!r} "
                                 f"(available: {', '.join(self.configurations)})")
        return self.configurations[name]

    @classmethod
    def from_dict(cls, d: dict) -> Plans:
        keys = [f for f in cls.__dataclass_fields__ if f not in ("configurations", "extra")]
        missing = [k for k in keys + ["configurations"] if k not in d]
        if missing:
            raise PirlInputError(f"plans: missing key(s) {', '.join(missing)}")
        names = d["channel_names"]
        if not isinstance(names, dict) or sorted(names) != sorted(str(i) for i in range(len(names))):
            raise PirlInputError(f"plans: channel_names must map '0'..'N-1' to names, got {names!r}")
        derived = [modality_kind(names[str(i)]) for i in range(len(names))]
        if d["modality_kinds"] != derived:
            raise PirlInputError(f"plans: modality_kinds {d['modality_kinds']} do not follow from channel_names "
                                 f"({derived}): a channel's kind comes from its name (data/modalities.py); edit "
                                 "normalization_schemes to change how a channel is normalised")
        configs = {n: ConfigurationPlans.from_dict(n, c) for n, c in d["configurations"].items()}
        for config in configs.values():
            if len(config.normalization_schemes) != len(d["channel_names"]):
                raise PirlInputError(f"plans configuration {config.name!r}: {len(config.normalization_schemes)} "
                                     f"normalization_schemes for {len(d['channel_names'])} channels")
        extra = {k: v for k, v in d.items() if k not in keys and k != "configurations"}
        return cls(**{k: d[k] for k in keys}, configurations=configs, extra=extra)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("configurations", "extra")}
        d["configurations"] = {n: c.to_dict() for n, c in self.configurations.items()}
        return {**d, **self.extra}

    @classmethod
    def load(cls, path: str | Path) -> Plans:
        path = Path(path)
        if not path.is_file():
            raise PirlInputError(f"{path}: plans file not found (run pirl_plan_and_preprocess first)")
        try:
            return cls.from_dict(load_json(path))
        except PirlInputError as err:
            raise PirlInputError(f"{path}: {err}") from None
        except (ValueError, TypeError) as err:
            raise PirlInputError(f"{path}: invalid plans ({err})") from None

    def save(self, path: str | Path) -> None:
        save_json(self.to_dict(), path)


def as_json(value: object) -> object:
    """``value`` as it reads back from JSON (tuples become lists), for comparing plans with a file."""
    return json.loads(json.dumps(value))


def differences(a: object, b: object, prefix: str = "") -> list[str]:
    """Dotted keys where two JSON values differ (``configurations.3d_fullres.patch_size``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in dict.fromkeys([*a, *b]) for d in differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".") or "(the whole file)"]


def check_matches_dataset(plans: Plans, dataset_json, path: Path) -> None:
    """The plans' copies of ``dataset.json`` (channel_names, labels, regions_class_order) equal it: the dataset is
    their source, so an edit of the copies would change nothing (PirlInputError naming ``path``)."""
    for key in ("channel_names", "labels", "regions_class_order"):
        if getattr(plans, key) != getattr(dataset_json, key):
            raise PirlInputError(f"{path}: the plans' {key} {getattr(plans, key)} differ from dataset.json's "
                                 f"{getattr(dataset_json, key)} (dataset.json is their source; rerun "
                                 "pirl_plan_and_preprocess with --overwrite_plans)")


def keep_or_write_plans(path: Path, planned: Plans, replace: bool) -> Plans:
    """The plans to use. An existing file is kept, hand edits included (the log names what the planner would
    change), unless ``replace``; else ``planned`` is written. Kept plans must fit the dataset's channels and
    labels."""
    path = Path(path)
    if replace or not path.is_file():
        planned.save(path)
        log.info("plans: wrote %s", path)
        return planned
    try:
        existing = Plans.load(path)
    except PirlInputError as err:
        raise PirlInputError(f"{err} (fix the file, or --overwrite_plans replaces it)") from None
    check_matches_dataset(existing, planned, path)
    changed = differences(as_json(existing.to_dict()), as_json(planned.to_dict()))
    if changed:
        log.warning("plans: using the existing %s, which differs from what the planner would write now in %s "
                    "(hand edits are kept; --overwrite_plans replaces the file)", path,
                    ", ".join(changed[:6]) + (f" (+{len(changed) - 6} more)" if len(changed) > 6 else ""))
    else:
        log.info("plans: using the existing %s (as planned)", path)
    return existing
