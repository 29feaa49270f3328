"""nnU-Net's ``find_best_configuration`` for pirl: which trained trainer, or which ensemble of trainers, to
predict with, judged by cross-validation (``pirl_find_best_configuration``).

Inputs, per model folder ``$PIRL_results/DatasetXXX_Name/TRAINER__PLANS__CONFIG`` of the task: the final
validation of each fold (``fold_F/validation/``, written at the end of ``pirl_train``): ``CASE.nii.gz`` (the
raw prediction: no post-processing, no TTA) and, with ``pirl_train --npz``, ``CASE.npz`` (key
``probabilities``: float16 (regions or classes, z, y, x) on the case's grid, 0 outside its body mask). A fold
counts once ``validation/summary.json`` exists; ``fold_all`` is no cross-validation and is ignored.

Candidates: every trainer alone (its label maps) and, among the trainers with probabilities for every case,
each ensemble of 2..``max_ensemble_size`` of them (probabilities averaged with equal weight per trainer, then
labels painted with ``labels_from_probabilities``: what ``pirl_predict -tr A B`` computes). All are scored on
the same cases (the union of the folds' validation cases, against ``labelsTr``) with ``pirl_evaluate``'s
evaluator (``segmentation_metrics``) and ranked by the dataset's primary metric (``primary_metric.py``).

Ranking rule (deterministic): the higher primary score, compared after rounding to 1e-9; on a tie the
candidate with fewer trainers (cheaper to run), then the name (trainers joined by ``+``) in alphabetical order.
"""
from __future__ import annotations

import functools
import itertools
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pirl_pipeline.data.dataset_json import DatasetJson, list_label_files
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.evaluation.evaluate import nest, read_on_grid, run_cases, summarize
from pirl_pipeline.evaluation.primary_metric import PrimaryMetric
from pirl_pipeline.evaluation.segmentation import (
    SegmentationOptions,
    evaluate_segmentation_case,
    segmentation_metric_names,
    segmentation_metrics,
    segmentation_targets,
)
from pirl_pipeline.fold_folder import PREFIX, VALIDATION_SUMMARY, FoldFolder
from pirl_pipeline.inference.export import labels_from_probabilities
from pirl_pipeline.paths import parse_model_folder_name
from pirl_pipeline.tasks import Task

log = logging.getLogger("pirl")

PROBABILITIES_KEY = "probabilities"  # what PIRLPredictor.export writes into CASE.npz
SCORE_DECIMALS = 9  # scores equal to this many decimals are a tie


@dataclass(frozen=True)
class TrainedTrainer:
    """One model folder's cross-validation: ``cases`` {fold: validation cases}; ``missing_probabilities``:
    the ``CASE.npz`` files its validation did not write (empty: it can be ensembled)."""

    trainer: str
    folder: Path
    cases: dict[str, tuple[str, ...]]
    missing_probabilities: tuple[Path, ...]

    @property
    def folds(self) -> tuple[str, ...]:
        return tuple(self.cases)

    def fold_of(self, case: str) -> str:
        return next(f for f, cases in self.cases.items() if case in cases)

    def prediction(self, case: str, file_ending: str) -> Path:
        return FoldFolder(self.folder, self.fold_of(case)).validation / f"{case}{file_ending}"

    def probabilities(self, case: str) -> Path:
        return FoldFolder(self.folder, self.fold_of(case)).validation / f"{case}.npz"


@dataclass(frozen=True)
class Candidate:
    trainers: tuple[str, ...]

    @property
    def name(self) -> str:
        return "+".join(self.trainers)


def _validated_folds(folder: Path) -> list[str]:
    """Numeric folds with a finished final validation, in numeric order."""
    return [f.fold for f in FoldFolder.folds(folder, require=VALIDATION_SUMMARY) if f.fold.isdigit()]


def _task_of(folder: Path) -> str | None:
    """The task a model folder was trained for (what its first fold recorded; None before any started)."""
    return next((fold.task() for fold in FoldFolder.folds(folder) if fold.config.is_file()), None)


def _some(items, limit: int = 5) -> str:
    items = list(items)
    return ", ".join(map(str, items[:limit])) + (f" ... (+{len(items) - limit} more)" if len(items) > limit else "")


def find_trainers(dataset_folder: Path, task: Task, dataset_json: DatasetJson, configuration: str, plans: str,
                  trainers: list[str] | None = None, folds: list[str] | None = None) -> list[TrainedTrainer]:
    """The trained trainers of ``task`` under ``dataset_folder`` (``$PIRL_results/DatasetXXX_Name``) with their
    validated folds (``folds``: only these, each required), sorted by name; errors when none is found or when
    they were validated on different folds or cases."""
    if not dataset_folder.is_dir():
        raise PirlInputError(f"{dataset_folder}: no results folder for this dataset (train first)")
    found: dict[str, TrainedTrainer] = {}
    for folder in sorted(p for p in dataset_folder.iterdir() if p.is_dir()):
        parsed = parse_model_folder_name(folder.name)
        if parsed is None or parsed[1:] != (plans, configuration) or (trainers and parsed[0] not in trainers):
            continue
        if _task_of(folder) != task.name:
            continue
        validated = _validated_folds(folder)
        if not validated:
            log.warning("%s: no fold with a finished final validation (%sF/%s); left out", folder, PREFIX,
                        VALIDATION_SUMMARY)
            continue
        if folds is not None:
            if absent := [f for f in folds if f not in validated]:
                raise PirlInputError(f"{folder}: fold(s) {' '.join(absent)} have no final validation "
                                     f"(validated: {' '.join(validated)})")
            validated = list(folds)
        cases = {}
        for fold in validated:
            validation = FoldFolder(folder, fold).validation
            predicted = list_label_files(validation, dataset_json.file_ending)
            if not predicted:
                raise PirlInputError(f"{validation}: no predicted label maps "
                                     f"(CASE{dataset_json.file_ending}; validated without the raw data?)")
            cases[fold] = tuple(predicted)
        trained = TrainedTrainer(parsed[0], folder, cases, ())
        missing = tuple(p for c in itertools.chain(*cases.values()) if not (p := trained.probabilities(c)).is_file())
        found[parsed[0]] = TrainedTrainer(parsed[0], folder, cases, missing)
    if trainers and (absent := [t for t in trainers if t not in found]):
        raise PirlInputError(f"{dataset_folder}: no validated {task.name} model folder "
                             f"{absent[0]}__{plans}__{configuration}")
    if not found:
        raise PirlInputError(f"{dataset_folder}: no trained {task.name} trainer with a final validation "
                             f"(*__{plans}__{configuration}/{PREFIX}F/{VALIDATION_SUMMARY}); train first")
    result = [found[t] for t in sorted(found)]
    check_same_cases(result)
    return result


def check_same_cases(trainers: list[TrainedTrainer]) -> None:
    """Every trainer validated the same folds on the same cases, and no case in two folds."""
    first = trainers[0]
    for other in trainers[1:]:
        if other.folds != first.folds:
            raise PirlInputError(f"{first.trainer} and {other.trainer} were validated on different folds "
                                 f"({' '.join(first.folds)} vs {' '.join(other.folds)}); give -f with folds "
                                 "both have")
        for fold in first.folds:
            a, b = set(first.cases[fold]), set(other.cases[fold])
            if a != b:
                raise PirlInputError(
                    f"fold {fold}: {first.trainer} and {other.trainer} validated different cases "
                    f"({first.folder.name} only: {_some(sorted(a - b)) or '-'}; {other.folder.name} only: "
                    f"{_some(sorted(b - a)) or '-'}); were they trained with different splits?")
    seen: dict[str, str] = {}
    for fold, cases in first.cases.items():
        for case in cases:
            if case in seen:
                raise PirlInputError(f"{first.folder}: case {case} is a validation case of folds {seen[case]} and "
                                     f"{fold}; give -f with folds that do not overlap")
            seen[case] = fold


def candidates(trainers: list[TrainedTrainer], max_ensemble_size: int) -> list[Candidate]:
    """Each trainer alone, then each ensemble of 2..max_ensemble_size trainers that all have probabilities."""
    singles = [Candidate((t.trainer,)) for t in trainers]
    ensemblable = [t.trainer for t in trainers if not t.missing_probabilities]
    sizes = range(2, min(max_ensemble_size, len(ensemblable)) + 1)
    return singles + [Candidate(c) for k in sizes for c in itertools.combinations(ensemblable, k)]


def _load_probabilities(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    try:
        with np.load(path) as npz:
            probs = npz[PROBABILITIES_KEY].astype(np.float32)
    except (OSError, ValueError, KeyError) as err:
        raise PirlInputError(f"{path}: unreadable probabilities ({err})") from None
    if probs.shape[1:] != shape:
        raise PirlInputError(f"{path}: probabilities of shape {probs.shape[1:]}, the reference is {shape}")
    return probs


@dataclass(frozen=True)
class CaseJob:
    case: str
    reference: Path
    predictions: dict[str, Path]  # trainer -> label map
    probabilities: dict[str, Path]  # trainer -> CASE.npz (trainers that are ensembled)


def score_case(job: CaseJob, candidates: list[Candidate], dataset_json: DatasetJson,
               options: SegmentationOptions) -> dict[str, dict[str, float]]:
    """``{candidate name: metrics}`` of one case: a single trainer's label map scored as ``pirl_evaluate``
    scores it; an ensemble's averaged probabilities painted into labels, then scored the same way."""
    out, reference, grid, probabilities = {}, None, None, {}
    for candidate in candidates:
        if len(candidate.trainers) == 1:
            [trainer] = candidate.trainers
            out[candidate.name] = evaluate_segmentation_case(job.reference, job.predictions[trainer], dataset_json,
                                                             options)
            continue
        if reference is None:
            reference, grid = read_on_grid(job.reference, None)
        for t in candidate.trainers:
            if t not in probabilities:
                probabilities[t] = _load_probabilities(job.probabilities[t], reference.shape)
        total = sum(probabilities[t] for t in candidate.trainers)
        labels = labels_from_probabilities(total / len(candidate.trainers), dataset_json)
        out[candidate.name] = segmentation_metrics(labels, reference, dataset_json, spacing=grid.spacing,
                                                   options=options)
    return out


def score_candidates(trainers: list[TrainedTrainer], candidate_list: list[Candidate], references: Path,
                     dataset_json: DatasetJson, options: SegmentationOptions,
                     num_processes: int = 1) -> dict[str, pd.DataFrame]:
    """``{candidate name: per-case table}`` (``pirl_evaluate``'s columns) over every validated case."""
    cases = sorted(itertools.chain(*trainers[0].cases.values()))
    ensembled = {t for c in candidate_list if len(c.trainers) > 1 for t in c.trainers}
    jobs = []
    for case in cases:
        reference = references / f"{case}{dataset_json.file_ending}"
        if not reference.is_file():
            raise PirlInputError(f"{reference}: reference label map of validation case {case} not found")
        jobs.append(CaseJob(case, reference, {t.trainer: t.prediction(case, dataset_json.file_ending)
                                              for t in trainers},
                            {t.trainer: t.probabilities(case) for t in trainers if t.trainer in ensembled}))
    rows = run_cases(functools.partial(score_case, candidates=candidate_list, dataset_json=dataset_json,
                                       options=options), jobs, num_processes, "score candidates")
    columns = [f"{m}/{t}" for m in segmentation_metric_names(options.distance_metrics)
               for t in segmentation_targets(dataset_json)]
    index = pd.Index(cases, name="case")
    return {c.name: pd.DataFrame([row[c.name] for row in rows], index=index, columns=columns)
            for c in candidate_list}


def rank(tables: dict[str, pd.DataFrame], candidate_list: list[Candidate],
         metric: PrimaryMetric) -> list[tuple[Candidate, float]]:
    """(candidate, primary score), best first, by the module's ranking rule."""
    scored = [(c, metric.score(tables[c.name])) for c in candidate_list]

    def key(item: tuple[Candidate, float]) -> tuple:
        candidate, score = item
        value = -round(score, SCORE_DECIMALS) if math.isfinite(score) else math.inf
        return value, len(candidate.trainers), candidate.name

    return sorted(scored, key=key)


def candidate_record(candidate: Candidate, score: float, table: pd.DataFrame) -> dict:
    """One candidate's entry in ``inference_information.json``: its primary score and every metric's mean."""
    stats = summarize(table)
    return {"name": candidate.name, "trainers": list(candidate.trainers), "primary_score": score,
            "mean": nest(stats.loc["mean"]), "count": {t: {m: int(v) for m, v in d.items()}
                                                      for t, d in nest(stats.loc["count"]).items()}}
