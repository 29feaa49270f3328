"""The durable record of an experiment: what the report reads, kept in git beside RESULTS.md.

The work folder (data, checkpoints, predictions) is large and not in git, so a new checkout loses it, and with it
every finished stage's numbers: a report of folds 1-3 alone would then drop fold 0. ``save_records`` copies what
the report reads into ``OUT/records/`` with the work folder's layout: each evaluation's ``per_case.csv`` and the
representation measurements' ``representation.csv`` (``eval/``), ``timings.json`` (the recorded commands, this
machine's work and data folders written ``WORK`` and ``../shared/data``), and, for every training run, its
checkpoint's metadata (config, its paths written the same way, and per-epoch history; no weights) as
``checkpoint_final.pth.meta.json``. The report then reads the records (``run_meta`` stands in for a checkpoint),
so runs of different sessions add up: a file of the work folder replaces its record, the rows of a
representation measurement and the stages of ``timings.json`` replace their own rows only, everything else stays.
To forget a run, delete its records (``git rm -r OUT/records/eval/RUN``).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from experiments.config import representation_csv
from experiments.data import SHARED_DATA
from experiments.stages import TIMINGS
from pirl_pipeline.file_io import atomic_path, load_json, save_json
from pirl_pipeline.fold_folder import FINAL, PER_CASE
from pirl_pipeline.report.collect import load_checkpoint_meta

RECORDS = "records"
META_SUFFIX = ".meta.json"
REPRESENTATION = representation_csv(Path()).name
#: a representation measurement's rows: one per (model, dataset, representation)
REPRESENTATION_KEY = ["model", "dataset", "representation"]


def records_root(out: Path) -> Path:
    """``OUT/records``: a work folder's layout holding only what the report reads."""
    return out / RECORDS


def meta_path(checkpoint: Path) -> Path:
    """Where the records keep a checkpoint's metadata: ``checkpoint_final.pth.meta.json`` beside it."""
    return checkpoint.with_name(checkpoint.name + META_SUFFIX)


def has_run(checkpoint: Path) -> bool:
    """A finished training run at ``checkpoint``: the file (work folder) or its recorded metadata."""
    return checkpoint.is_file() or meta_path(checkpoint).is_file()


def run_meta(checkpoint: Path) -> dict:
    """Everything but the tensors of a checkpoint: from the file when present, else from the records."""
    return load_checkpoint_meta(checkpoint) if checkpoint.is_file() else load_json(meta_path(checkpoint))


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def _merge_rows(source: Path, target: Path) -> None:
    """The recorded rows of other models, then ``source``'s rows (a measurement covers what its work folder has)."""
    new = pd.read_csv(source)
    if target.is_file():
        old = pd.read_csv(target)
        kept = ~old.set_index(REPRESENTATION_KEY).index.isin(new.set_index(REPRESENTATION_KEY).index)
        new = pd.concat([old[kept], new], ignore_index=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        new.to_csv(tmp, index=False)


def _portable(command: str, work: Path) -> str:
    """A recorded command with this machine's work and data folders written ``WORK`` and ``../shared/data``, so
    that the records name no one's checkout."""
    folders = {str(work.resolve()): "WORK", str(work): "WORK", str(SHARED_DATA.resolve()): "../shared/data",
               str(SHARED_DATA): "../shared/data"}
    for folder in sorted(folders, key=len, reverse=True):  # the longest first: a resolved path contains others
        command = command.replace(folder, folders[folder])
    return command


def save_records(work: Path, out: Path) -> Path:
    """Copy the report's inputs from ``work`` into ``records_root(out)`` (see the module docstring); returns the
    records root."""
    root = records_root(out)
    evaluations = work / "eval"
    for name, store in ((PER_CASE, _copy), (REPRESENTATION, _merge_rows)):
        for source in sorted(evaluations.rglob(name)) if evaluations.is_dir() else []:
            store(source, root / source.relative_to(work))
    results = work / "results"
    for checkpoint in sorted(results.rglob(FINAL)) if results.is_dir() else []:
        meta = load_checkpoint_meta(checkpoint)
        target = meta_path(root / checkpoint.relative_to(work))
        target.parent.mkdir(parents=True, exist_ok=True)
        kept = {k: meta[k] for k in ("config", "history", "epoch", "trainer_name") if k in meta}
        if isinstance(kept.get("config"), dict):  # its paths (e.g. ``pretrained``) written as the commands' are
            kept["config"] = {k: _portable(v, work) if isinstance(v, str) else v for k, v in kept["config"].items()}
        save_json(kept, target)
    timings = [load_json(path) for path in (root / TIMINGS, work / TIMINGS) if path.is_file()]
    if timings:
        root.mkdir(parents=True, exist_ok=True)
        merged = {name: t for stages in timings for name, t in stages.items()}
        save_json({name: {**t, "command": _portable(t["command"], work)} if "command" in t else t
                   for name, t in merged.items()}, root / TIMINGS)
    return root
