"""Where pirl keeps raw data, preprocessed data and results (nnU-Net style).

Environment variables ``PIRL_raw``, ``PIRL_preprocessed`` and ``PIRL_results`` win; when one is unset,
an embedded default under ``./pirl_data/`` is used, and the log says so once. A root that exists but is not a
folder is a PirlInputError naming the variable. :func:`check_output_folder` is the one rule for where a
command that reads a folder may write.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.file_io import NAME_MAX

log = logging.getLogger("pirl")

_DEFAULTS = {"PIRL_raw": "raw", "PIRL_preprocessed": "preprocessed", "PIRL_results": "results"}
_announced: set[str] = set()


def _root(var: str) -> Path:
    value = os.environ.get(var)
    path = Path(value) if value else Path.cwd() / "pirl_data" / _DEFAULTS[var]
    if path.exists() and not path.is_dir():
        raise PirlInputError(f"{path}: {var} must name a folder, but this is a file" if value else
                             f"{path}: not a folder ({var} is not set, so pirl uses this default)")
    if not value and var not in _announced:
        _announced.add(var)
        log.info("%s is not set: using %s", var, path)
    return path


def raw_root() -> Path:
    return _root("PIRL_raw")


def preprocessed_root() -> Path:
    return _root("PIRL_preprocessed")


def results_root() -> Path:
    return _root("PIRL_results")


def check_output_folder(input_dir: Path, output_dir: Path, flag: str = "-o") -> None:
    """A command reading ``input_dir`` writes to ``output_dir``: the input must be a folder, the output neither it,
    nor inside it, nor a file (PirlInputError naming the folder)."""
    if not input_dir.is_dir():
        raise PirlInputError(f"{input_dir}: input folder not found")
    inp, out = input_dir.resolve(), output_dir.resolve()
    if out == inp or inp in out.parents:
        raise PirlInputError(f"{output_dir}: the output folder must not be (inside) the input folder")
    if output_dir.exists() and not output_dir.is_dir():
        raise PirlInputError(f"{output_dir}: exists and is not a folder ({flag} names the output folder)")


def dataset_folder_name(dataset_id: int, name: str) -> str:
    return f"Dataset{int(dataset_id):03d}_{name}"


def find_dataset_name(dataset: str | int, root: Path | None = None) -> str:
    """Resolve ``501`` or ``Dataset501_Name`` to the folder name that exists under ``root`` (raw by default)."""
    root = raw_root() if root is None else root
    text = str(dataset)
    if len(os.fsencode(text)) > NAME_MAX:
        raise PirlInputError(f"{text[:40]}...: not a dataset (a name of {len(os.fsencode(text))} bytes)")
    if re.fullmatch(r"Dataset\d{3}_.+", text):
        if (root / text).is_dir():
            return text
        raise PirlInputError(f"{root / text}: dataset folder not found")
    if not text.isdigit():
        raise PirlInputError(f"{text!r}: expected a dataset id (e.g. 501) or a name like Dataset501_Name")
    prefix = f"Dataset{int(text):03d}_"
    matches = sorted(p.name for p in root.glob(prefix + "*") if p.is_dir()) if root.is_dir() else []
    if not matches:
        raise PirlInputError(f"{root}: no dataset with id {int(text)} (expected a folder {prefix}NAME)")
    if len(matches) > 1:
        raise PirlInputError(f"{root}: dataset id {int(text)} is ambiguous: {', '.join(matches)}")
    return matches[0]


DEFAULT_PLANS = "PIRLPlans"  # the planner's plans name (plans/planner.py writes it into PIRLPlans.json)
DEFAULT_CONFIGURATION = "3d_fullres"


def model_folder(dataset_name: str, trainer: str, plans_name: str = DEFAULT_PLANS,
                 configuration: str = DEFAULT_CONFIGURATION, root: Path | None = None) -> Path:
    """``ROOT/DatasetXXX_Name/TRAINER__PLANS__CONFIGURATION`` (ROOT: $PIRL_results; ``Path()`` gives the relative
    form), the one owner of nnU-Net's results-folder layout; its folds are ``fold_folder.FoldFolder``."""
    return (results_root() if root is None else root) / dataset_name / f"{trainer}__{plans_name}__{configuration}"


def parse_model_folder_name(name: str) -> tuple[str, str, str] | None:
    """(trainer, plans, configuration) of a ``TRAINER__PLANS__CONFIGURATION`` folder name; None for other names."""
    m = re.fullmatch(r"(?P<trainer>[^_].*?)__(?P<plans>.+?)__(?P<configuration>.+)", name)
    return (m["trainer"], m["plans"], m["configuration"]) if m else None
