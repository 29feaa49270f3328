"""Find and read what a dataset's results folder holds; nothing here raises for a missing or damaged file.

Every trained fold ``TRAINER__PLANS__CONFIG/fold_F/`` becomes a :class:`TrainerRun` (history and config
from ``checkpoint_final.pth``, else ``checkpoint_latest.pth``, else ``training_log.txt`` + ``config.json``;
``validation/summary.json``; the ``missing_modalities/`` and ``translation_matrix/`` CSVs of
``pirl_evaluate_missing``). Each prediction folder becomes a :class:`PredictionFolder` with its
``pirl_evaluate`` ``summary.json`` when there is one. What could not be read is recorded as a sentence in
``problems`` for the report's "missing" list.
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pirl_pipeline.fold_folder import (
    FINAL,
    LATEST,
    TRAINING_LOG,
    FoldFolder,
    segmentation_matrix_name,
    translation_matrix_name,
)
from pirl_pipeline.paths import parse_model_folder_name
from pirl_pipeline.tasks import PRETRAIN, SEG, TASKS, TRANSLATE

log = logging.getLogger("pirl")

CHECKPOINTS = (FINAL, LATEST)  # what a run is reported from, first found first
_LOG_LINE = re.compile(r"^epoch (\d+) \| lr (\S+) \| (\S+)s((?: \| \S+ \S+)*)\s*$")


@dataclass
class TrainerRun:
    """One trained (or training) fold."""

    trainer: str
    plans: str
    configuration: str
    fold: str
    folder: Path
    source: str = "nothing"  # checkpoint file name, "training_log.txt" or "nothing"
    history: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    network: dict = field(default_factory=dict)
    plans_configuration: dict = field(default_factory=dict)
    dataset_json: dict | None = None
    epochs_done: int | None = None
    device: str | None = None  # from the first line of training_log.txt
    logged: dict = field(default_factory=dict)  # patch/batch/feature size from that line (fallback)
    validation: dict | None = None
    missing_dice: pd.DataFrame | None = None
    translation: dict[str, pd.DataFrame] = field(default_factory=dict)
    matrix_cases: dict[str, int] = field(default_factory=dict)  # task name -> cases evaluated
    postprocessing: dict | None = None  # postprocessing.json: what the final validation chose (seg)
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.trainer} fold {self.fold}"

    def matrix_title(self, task: str) -> str:
        """"TRAINER fold F, mean over N case(s)" for the pirl_evaluate_missing matrix of ``task``."""
        n = self.matrix_cases.get(task)
        return self.name + (f", mean over {n} case(s)" if n is not None else "")

    @property
    def task(self) -> str:
        return str(self.config.get("task") or "?")  # the run's own config (checkpoint, else config.json)

    @property
    def finished(self) -> bool:
        return self.source == FINAL

    @property
    def patch_size(self) -> list[int] | None:
        return self.config.get("patch_size") or self.network.get("patch_size") or \
            self.plans_configuration.get("patch_size") or self.logged.get("patch_size")

    @property
    def feature_size(self) -> int | None:
        return self.config.get("feature_size") or self.network.get("feature_size") or \
            self.plans_configuration.get("network", {}).get("feature_size") or self.logged.get("feature_size")

    @property
    def batch_size(self) -> int | None:
        return self.config.get("batch_size") or self.plans_configuration.get("batch_size") or \
            self.logged.get("batch_size")

    @property
    def training_time(self) -> float:
        return float(sum(r.get("epoch_time", 0.0) or 0.0 for r in self.history))

    @property
    def iterations(self) -> int | None:
        iters = self.config.get("iters_per_epoch")
        done = self.epochs_done if self.epochs_done is not None else len(self.history)
        return None if iters is None else int(iters) * int(done)


@dataclass
class PredictionFolder:
    """A ``pirl_predict`` output folder and its ``pirl_evaluate`` summary (if evaluated)."""

    label: str  # e.g. "seg_all"
    folder: Path
    task: str | None  # a Task name; None: unknown (not evaluated)
    summary: dict | None = None

    @property
    def exists(self) -> bool:
        return self.folder.is_dir()

    def files(self, file_ending: str = ".nii.gz") -> list[Path]:
        return sorted(f for f in self.folder.iterdir() if f.name.endswith(file_ending)) if self.exists else []

    @property
    def source(self) -> str:
        """The input channel of a single-source translation folder, by the demo's and the report's naming rule
        ``..._<channel>[_reference_<kind>]`` (``translate_t1``, ``translate_t1_reference_identity``): "t1",
        lower case; a prediction records no source, so the folder name is the only place it is said."""
        return self.label.split("_reference")[0].rsplit("_", 1)[-1].lower()

    @property
    def is_reference(self) -> bool:
        """A trivial reference's folder (``pirl_reference`` output, named ``..._reference_<kind>``)."""
        return "_reference" in self.label

    def source_channel(self, channel_names: list[str]) -> int | None:
        """The index of :attr:`source` among ``channel_names`` (None when no single channel has that name)."""
        matches = [c for c, n in enumerate(channel_names) if n.lower() == self.source]
        return matches[0] if len(matches) == 1 else None


def read_json(path: Path, problems: list[str]) -> Any | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        problems.append(f"`{path}` could not be read ({type(err).__name__})")
        return None


def read_matrix(path: Path, problems: list[str]) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        matrix = pd.read_csv(path, index_col=0)
        return matrix.apply(pd.to_numeric, errors="coerce")
    except (OSError, ValueError, pd.errors.ParserError) as err:
        problems.append(f"`{path}` could not be read ({type(err).__name__})")
        return None


def history_from_log(path: Path) -> list[dict]:
    """Epoch rows parsed back from ``training_log.txt`` lines (``epoch N | lr X | Ts | key value | ...``)."""
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        m = _LOG_LINE.match(line.strip())
        if not m:
            continue
        try:
            row: dict[str, float] = {"epoch": int(m.group(1)), "lr": float(m.group(2)),
                                     "epoch_time": float(m.group(3))}
            for part in m.group(4).split(" | ")[1:]:
                key, value = part.rsplit(" ", 1)
                row[key] = float(value)
        except ValueError:
            continue
        rows.append(row)
    return rows


def load_checkpoint_meta(path: Path) -> dict:
    """Everything but the tensors of a checkpoint (memory-mapped: the weights are never read)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # mmap needs the zip format; older files load whole
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise TypeError("not a dictionary")
    return {k: v for k, v in state.items()
            if k not in ("network_weights", "optimizer_state", "grad_scaler_state", "extra_state")}


def read_run(fold: FoldFolder) -> TrainerRun:
    trainer, plans, configuration = fold.identity or (fold.model.name, "?", "?")
    run = TrainerRun(trainer, plans, configuration, fold.fold, fold.path)
    for name in CHECKPOINTS:
        path = fold.checkpoint(name)
        if not path.is_file():
            continue
        try:
            state = load_checkpoint_meta(path)
        except Exception as err:  # noqa: BLE001 - torch raises many types for damaged files
            run.problems.append(f"{run.name}: `{name}` is unreadable ({type(err).__name__}); skipped")
            continue
        run.source = name
        run.history = [dict(r) for r in state.get("history") or []]
        run.config = dict(state.get("config") or {})
        run.network = dict(state.get("network_kwargs") or {})
        run.dataset_json = state.get("dataset_json")
        run.epochs_done = state.get("epoch")
        plans = state.get("plans") or {}
        run.plans_configuration = dict(plans.get("configurations", {}).get(state.get("configuration",
                                                                                     configuration), {}))
        run.trainer = str(state.get("trainer_name") or run.trainer)
        break
    log_file = fold.training_log
    if run.source == "nothing":
        if log_file.is_file():
            run.history = history_from_log(log_file)
            run.source = TRAINING_LOG
            run.epochs_done = len(run.history)
        config = read_json(fold.config, run.problems)  # the run's own record, as far as it got
        run.config = config if isinstance(config, dict) else {}
        run.problems.append(f"{run.name}: no readable checkpoint"
                            + (f" (history from {TRAINING_LOG})" if run.history else ""))
    elif run.source != FINAL:
        run.problems.append(f"{run.name}: no {FINAL} (training unfinished? "
                            f"reported from {run.source}, epoch {run.epochs_done})")
    if log_file.is_file():
        head = log_file.read_text(errors="replace")[:4000]
        m = re.search(r"\bdevice (\S+)", head)
        run.device = m.group(1) if m else None
        m = re.search(r"patch \[([\d, ]+)\], batch (\d+), feature_size (\d+)", head)
        if m:
            run.logged = {"patch_size": [int(p) for p in m.group(1).split(",")], "batch_size": int(m.group(2)),
                          "feature_size": int(m.group(3))}
    summary = read_json(fold.validation_summary, run.problems)
    run.validation = summary if isinstance(summary, dict) else None
    if fold.postprocessing.is_file():
        chosen = read_json(fold.postprocessing, run.problems)
        run.postprocessing = chosen if isinstance(chosen, dict) else None
    run.missing_dice = read_matrix(fold.matrix(SEG, segmentation_matrix_name("dice")), run.problems)
    for metric in ("PSNR", "SSIM"):
        matrix = read_matrix(fold.matrix(TRANSLATE, translation_matrix_name(metric)), run.problems)
        if matrix is not None:
            run.translation[metric] = square(matrix)
    for task in TASKS.values():
        info = read_json(fold.subsets_summary(task), run.problems)
        if isinstance(info, dict) and isinstance(info.get("cases"), int):
            run.matrix_cases[task.name] = info["cases"]
    return run


def square(matrix: pd.DataFrame) -> pd.DataFrame:
    """Columns in the order of the rows where both name the same modalities (the diagonal on the diagonal)."""
    rows = [str(i) for i in matrix.index]
    columns = [c for c in rows if c in matrix.columns] + [c for c in matrix.columns if c not in rows]
    return matrix[columns]


def collect_runs(results_dir: Path) -> list[TrainerRun]:
    """Every fold folder of every ``TRAINER__PLANS__CONFIG`` folder below ``results_dir`` (pre-training first)."""
    runs = []
    if not results_dir.is_dir():
        return runs
    for trainer_folder in sorted(p for p in results_dir.iterdir() if p.is_dir() and parse_model_folder_name(p.name)):
        runs.extend(read_run(fold) for fold in FoldFolder.folds(trainer_folder))
    order = {PRETRAIN: 0, SEG.name: 1, TRANSLATE.name: 2}
    return sorted(runs, key=lambda r: order.get(r.task, 3))


def read_prediction_folder(label: str, folder: Path, task: str | None, problems: list[str]) -> PredictionFolder:
    """``task``: what the caller says it is; the summary's own ``task`` wins (None: neither knows)."""
    pred = PredictionFolder(label, folder, task)
    summary = read_json(folder / "summary.json", problems)
    if isinstance(summary, dict):
        pred.summary = summary
        pred.task = summary.get("task") or task
    return pred


def summary_table(summary: dict) -> pd.DataFrame:
    """``pirl_evaluate`` summary -> targets x metrics table of "mean ± std" strings."""
    mean, std = summary.get("mean") or {}, summary.get("std") or {}
    rows: dict[str, dict[str, str]] = {}
    for target, metrics in mean.items():
        for metric, value in metrics.items():
            s = (std.get(target) or {}).get(metric)
            rows.setdefault(target, {})[metric] = format_value(value) + (
                f" ± {format_value(s)}" if _finite(s) and summary.get("num_cases", 0) > 1 else "")
    return pd.DataFrame.from_dict(rows, orient="index")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def format_value(value: Any, digits: int = 3) -> str:
    """Numbers to short strings (None/NaN -> "–", "inf" kept); anything else as text."""
    if value is None:
        return "–"
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return value
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        if abs(value) >= 1e5:
            return f"{value:.{digits - 1}e}"
        if value != 0 and abs(value) < 10 ** -digits:  # two significant digits, no exponent: 0.000052
            return np.format_float_positional(value, precision=2, unique=False, fractional=False, trim="-")
        return f"{value:.{digits}f}" if abs(value) < 10 else f"{value:.2f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)
