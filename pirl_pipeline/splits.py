"""``splits_final.json``: seeded k-fold cross-validation splits over case names (nnU-Net's format), or the
folds of a published split that the user supplies.

Five folds by default; with fewer than five cases, one fold per case (leave-one-out); a single case
gives one fold that trains and validates on it (a smoke-test set-up, logged as a warning).

A user's split file (``pirl_plan_and_preprocess --split_file FILE``, or a hand-written ``splits_final.json``
as in nnU-Net) holds a list of folds ``[{"train": [...], "val": [...]}, ...]`` (nnU-Net's
``splits_final.json``) or one fold ``{"train": [...], "val": [...]}`` (a published train/validation split,
used as fold 0). :func:`check_splits` refuses, naming the file: no folds, a fold without exactly the keys
``train`` and ``val``, an empty list, a case listed twice, a case the dataset does not have, a case both in
``train`` and ``val`` of one fold. Cases in no fold (a held-out test set) are allowed and logged.
"""
from __future__ import annotations

import collections
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.file_io import load_json, loads, save_json

log = logging.getLogger("pirl")
SPLITS_FILE = "splits_final.json"
Splits = list[dict[str, list[str]]]


def make_splits(case_names: list[str], num_folds: int = 5, seed: int = 12345) -> Splits:
    names = sorted(case_names)
    if len(names) == 1:
        log.warning("only one case: fold 0 trains and validates on %s", names[0])
        return [{"train": names, "val": names}]
    folds = min(num_folds, len(names))
    order = np.random.default_rng(seed).permutation(len(names))
    chunks = np.array_split(order, folds)
    return [{"train": sorted(names[i] for i in np.setdiff1d(order, chunk)),
             "val": sorted(names[i] for i in chunk)} for chunk in chunks]


def _some(names: Sequence[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def check_splits(splits: object, case_names: Sequence[str], source: str | Path, hint: str = "") -> Splits:
    """``splits`` validated against the dataset's ``case_names`` (see the module docstring); PirlInputError
    ``"<source>: fold F: <problem>"`` (plus ``hint``) otherwise. The one-case fold of :func:`make_splits`
    (train = val = the only case) is the one overlap allowed."""
    def fail(problem: str) -> PirlInputError:
        return PirlInputError(f"{source}: {problem}{hint}")

    if not isinstance(splits, list) or not splits:
        raise fail('expected a list of folds [{"train": [...], "val": [...]}, ...] (nnU-Net\'s splits_final.json) '
                   "or one such fold")
    known = set(case_names)
    for i, fold in enumerate(splits):
        if not isinstance(fold, dict) or set(fold) != {"train", "val"}:
            got = sorted(fold) if isinstance(fold, dict) else type(fold).__name__
            raise fail(f"fold {i}: need exactly the keys 'train' and 'val' (got {got}); cases in no fold are "
                       "simply not used")
        for key in ("train", "val"):
            names = fold[key]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise fail(f"fold {i}: '{key}' must be a list of case names")
            if not names:
                raise fail(f"fold {i}: '{key}' is empty")
            twice = sorted(n for n, k in collections.Counter(names).items() if k > 1)
            if twice:
                raise fail(f"fold {i}: '{key}' lists {_some(twice)} more than once")
            unknown = sorted(set(names) - known)
            if unknown:
                raise fail(f"fold {i}: {len(unknown)} case(s) in '{key}' not in the dataset: {_some(unknown)}")
        both = sorted(set(fold["train"]) & set(fold["val"]))
        if both and not (len(known) == 1 and fold["train"] == fold["val"]):
            raise fail(f"fold {i}: {len(both)} case(s) both in 'train' and 'val': {_some(both)}")
    return [{"train": list(fold["train"]), "val": list(fold["val"])} for fold in splits]


def read_split_file(path: str | Path, case_names: Sequence[str]) -> Splits:
    """The folds of a user's split file (a list of folds, or one fold), checked against ``case_names``."""
    path = Path(path)
    if not path.is_file():
        raise PirlInputError(f"{path}: split file not found")
    try:
        data = loads(path.read_text())  # duplicate keys and absurd nesting refused
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PirlInputError(f"{path}: invalid JSON ({err})") from None
    splits = check_splits([data] if isinstance(data, dict) else data, case_names, path)
    used = {n for fold in splits for n in fold["train"] + fold["val"]}
    unused = sorted(set(case_names) - used)
    log.info("%s: %d fold(s)%s", path, len(splits),
             f"; {len(unused)} case(s) in no fold, not used: {_some(unused)}" if unused else "")
    return splits


def install_splits(preprocessed_folder: Path, splits: Splits, source: str | Path) -> None:
    """Write ``splits`` (from :func:`read_split_file`) as the dataset's ``splits_final.json``, replacing
    another one (logged)."""
    path = Path(preprocessed_folder) / SPLITS_FILE
    if path.is_file():
        if load_json(path) == splits:
            return
        log.warning("%s: replaced by the folds of %s (models trained on the old folds keep them)", path, source)
    save_json(splits, path)
    log.info("wrote %s (%d folds, from %s)", path, len(splits), source)


def load_or_create_splits(preprocessed_folder: Path, case_names: list[str]) -> Splits:
    """Existing ``splits_final.json`` is kept (users may hand-edit it; it is checked like a user's split
    file); otherwise created."""
    path = Path(preprocessed_folder) / SPLITS_FILE
    if path.is_file():
        try:
            splits = load_json(path)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise PirlInputError(f"{path}: invalid JSON ({err})") from None
        return check_splits(splits, case_names, path, " (fix it, or delete it to have the folds made again)")
    splits = make_splits(case_names)
    save_json(splits, path)
    log.info("wrote %s (%d folds)", path, len(splits))
    return splits
