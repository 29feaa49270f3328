"""``splits_final.json``: seeded k-fold cross-validation splits over case names (nnU-Net's format).

Five folds by default; with fewer than five cases, one fold per case (leave-one-out); a single case
gives one fold that trains and validates on it (a smoke-test set-up, logged as a warning).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pirl_pipeline.file_io import load_json, save_json

log = logging.getLogger("pirl")
SPLITS_FILE = "splits_final.json"


def make_splits(case_names: list[str], num_folds: int = 5, seed: int = 12345) -> list[dict[str, list[str]]]:
    names = sorted(case_names)
    if len(names) == 1:
        log.warning("only one case: fold 0 trains and validates on %s", names[0])
        return [{"train": names, "val": names}]
    folds = min(num_folds, len(names))
    order = np.random.default_rng(seed).permutation(len(names))
    chunks = np.array_split(order, folds)
    return [{"train": sorted(names[i] for i in np.setdiff1d(order, chunk)),
             "val": sorted(names[i] for i in chunk)} for chunk in chunks]


def load_or_create_splits(preprocessed_folder: Path, case_names: list[str]) -> list[dict[str, list[str]]]:
    """Existing ``splits_final.json`` is kept (users may hand-edit it); otherwise created."""
    path = Path(preprocessed_folder) / SPLITS_FILE
    if path.is_file():
        return load_json(path)
    splits = make_splits(case_names)
    save_json(splits, path)
    log.info("wrote %s (%d folds)", path, len(splits))
    return splits
