"""The durable record of an experiment: the small files the report reads, kept in git beside RESULTS.md.

The work folder (data, checkpoints, predictions) is large and not in git, so a new checkout loses it, and with it
every finished stage's numbers: a report of folds 1-3 alone would then drop fold 0. ``save_records`` copies what
the report reads into ``OUT/records/`` with the work folder's layout: the evaluation tree (``eval/``: per-case
CSVs, summaries, ``done`` markers; no images), ``timings.json`` (the recorded commands), and, for every training
run, its checkpoint's metadata (config and per-epoch history, no weights) as ``checkpoint_final.pth.meta.json``.
The report then reads the records (``run_meta`` stands in for a checkpoint), so runs of different sessions add
up: what a session re-runs replaces its own files, everything else stays.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from pirl_pipeline.file_io import atomic_path, load_json, save_json
from pirl_pipeline.fold_folder import FINAL
from pirl_pipeline.report.collect import load_checkpoint_meta

RECORDS = "records"
TIMINGS = "timings.json"
META_SUFFIX = ".meta.json"
#: what of ``eval/`` is recorded: tables, summaries and stage markers (``done``), never images or volumes
RECORDED_SUFFIXES = ("", ".csv", ".json", ".txt")
MAX_FILE_BYTES = 2_000_000


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


def save_records(work: Path, out: Path) -> Path:
    """Copy the report's inputs from ``work`` into ``records_root(out)`` (files of ``work`` replace their records,
    records ``work`` lacks stay; timings merge by stage, ``work``'s winning); returns the records root."""
    root = records_root(out)
    evaluations = work / "eval"
    for source in sorted(evaluations.rglob("*")) if evaluations.is_dir() else []:
        if source.is_file() and source.suffix in RECORDED_SUFFIXES and source.stat().st_size <= MAX_FILE_BYTES:
            target = root / source.relative_to(work)
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as tmp:
                shutil.copyfile(source, tmp)
    results = work / "results"
    for checkpoint in sorted(results.rglob(FINAL)) if results.is_dir() else []:
        meta = load_checkpoint_meta(checkpoint)
        target = meta_path(root / checkpoint.relative_to(work))
        target.parent.mkdir(parents=True, exist_ok=True)
        save_json({k: meta[k] for k in ("config", "history", "epoch", "trainer_name") if k in meta}, target)
    timings = {name: load_json(path) for name, path in (("old", root / TIMINGS), ("new", work / TIMINGS))
               if path.is_file()}
    if timings:
        root.mkdir(parents=True, exist_ok=True)
        save_json(timings.get("old", {}) | timings.get("new", {}), root / TIMINGS)
    return root
