"""``pirl_find_best_configuration``: choose, by cross-validation, the trainer or ensemble of trainers to predict
with (nnU-Net's ``nnUNetv2_find_best_configuration``); writes ``inference_instructions.txt`` (the
``pirl_predict`` command) and ``inference_information.json`` (every candidate's scores). How candidates are
built, scored and ranked: ``evaluation/best_configuration.py``."""
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

from pirl_pipeline.cli.common import command, positive_int
from pirl_pipeline.cli.predict import describe
from pirl_pipeline.data.dataset_json import load_dataset_json
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.evaluation.best_configuration import (
    SCORE_DECIMALS,
    Candidate,
    TrainedTrainer,
    candidate_record,
    candidates,
    find_trainers,
    rank,
    score_candidates,
)
from pirl_pipeline.evaluation.primary_metric import primary_metric
from pirl_pipeline.evaluation.segmentation import SegmentationOptions
from pirl_pipeline.file_io import atomic_path, json_bytes, size_is
from pirl_pipeline.inference.ensembling import common_postprocessing
from pirl_pipeline.inference.postprocessing import load_postprocessing
from pirl_pipeline.paths import DEFAULT_CONFIGURATION, DEFAULT_PLANS, find_dataset_name, raw_root, results_root
from pirl_pipeline.tasks import TASKS, get_task

log = logging.getLogger("pirl")

INSTRUCTIONS = "inference_instructions.txt"
INFORMATION = "inference_information.json"
RULE = (f"highest primary score (equal to {SCORE_DECIMALS} decimals: a tie); ties: fewer trainers first, then the "
        "name in alphabetical order")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pirl_find_best_configuration",
        description="Score every trained trainer of a dataset and task on its cross-validation predictions "
                    "(fold_F/validation), and the ensembles of those with saved probabilities (pirl_train --npz), "
                    "with pirl_evaluate's metrics; choose by the primary metric (seg: mean Dice over the regions, "
                    "else the foreground labels) and write inference_instructions.txt (the pirl_predict command) "
                    "and inference_information.json (every candidate's scores).")
    p.add_argument("-d", dest="dataset", required=True, help="dataset id or name, e.g. 501")
    p.add_argument("-t", dest="task", required=True, choices=list(TASKS), help="task (seg)")
    p.add_argument("-c", dest="configuration", default=DEFAULT_CONFIGURATION, help="configuration (3d_fullres)")
    p.add_argument("-p", dest="plans", default=DEFAULT_PLANS, help=f"plans name ({DEFAULT_PLANS})")
    p.add_argument("-tr", dest="trainers", nargs="+", metavar="TRAINER",
                   help="only these trainers (default: every trained trainer of the task)")
    p.add_argument("-f", dest="folds", nargs="+", metavar="FOLD",
                   help="only these folds (default: the validated folds, which must be the same for every trainer)")
    p.add_argument("--disable_ensembling", action="store_true", help="score single trainers only")
    p.add_argument("--max_ensemble_size", type=int, default=3,
                   help="largest ensemble tried (default 3; nnU-Net tries pairs: 2)")
    p.add_argument("--distance_metrics", action="store_true",
                   help="also HD95, NSD and lesion-wise metrics in the JSON (1-3 s per case and candidate; the "
                        "choice uses Dice alone)")
    p.add_argument("-o", dest="output", type=Path,
                   help="folder for the two files (default: $PIRL_results/DatasetXXX_Name)")
    p.add_argument("-np", dest="num_processes", type=positive_int, default=2, help="worker processes (default 2)")
    return p


def predict_command(args: argparse.Namespace, winner: Candidate, trainers: dict[str, TrainedTrainer]) -> str:
    """The ``pirl_predict`` call of the winner on the folds it was validated with."""
    members = [trainers[t] for t in winner.trainers]
    if args.plans == DEFAULT_PLANS:
        model = f"-d {args.dataset} -t {args.task} -c {args.configuration} -tr {' '.join(winner.trainers)}"
    else:  # pirl_predict -d/-tr finds the default plans only
        model = f"-t {args.task} -m " + " ".join(str(m.folder) for m in members)
    return f"pirl_predict -i INPUT_FOLDER -o OUTPUT_FOLDER {model} -f {' '.join(members[0].folds)}"


def instructions(info: dict, ranking: list[tuple[Candidate, float]], lacking: list[TrainedTrainer]) -> str:
    width = max(len(c.name) for c, _ in ranking)
    lines = [(f"pirl_find_best_configuration: {info['dataset']}, task {info['task']}, configuration "
              f"{info['configuration']}, plans {info['plans']}"),
             f"cross-validation: folds {' '.join(info['folds'])}, {len(info['cases'])} case(s)",
             f"primary metric: {info['primary_metric']['name']}",
             f"ranking: {RULE}", ""]
    lines += [f"{k:3d}. {c.name:<{width}}  {s:.4f}" for k, (c, s) in enumerate(ranking, 1)]
    if lacking:
        lines += ["", "not ensembled (no probabilities: train with pirl_train ... --npz to save them): "
                  + "; ".join(f"{t.trainer} ({len(t.missing_probabilities)} CASE.npz missing, e.g. "
                              f"{t.missing_probabilities[0]})" for t in lacking)]
    best, score = ranking[0]
    lines += ["", f"best: {best.name} ({score:.4f})", "predict with:", info["command"],
              f"post-processing (pirl_predict applies it; --disable_postprocessing to skip): {info['postprocessing']}",
              ""]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    task = get_task(args.task)
    if not task.predicts_labels:
        raise PirlInputError("-t translate: a translation fold's validation keeps no per-case images to score or "
                             "average (it writes the source -> target matrix); compare translation models with "
                             "pirl_evaluate_missing -t translate")
    if args.max_ensemble_size < 2 and not args.disable_ensembling:
        raise PirlInputError(f"--max_ensemble_size {args.max_ensemble_size}: need 2 or more "
                             "(or --disable_ensembling)")
    name = find_dataset_name(args.dataset, results_root())
    dj = load_dataset_json(raw_root() / name)
    folds = None if args.folds is None else [str(f) for f in args.folds]
    trainers = find_trainers(results_root() / name, task, dj, args.configuration, args.plans, args.trainers, folds)
    lacking = [t for t in trainers if t.missing_probabilities]
    for t in lacking:
        log.warning("%s: no probabilities for %d of its validation cases (e.g. %s): scored alone, not ensembled "
                    "(train with pirl_train ... --npz)", t.trainer, len(t.missing_probabilities),
                    t.missing_probabilities[0])
    candidate_list = candidates(trainers, 1 if args.disable_ensembling else args.max_ensemble_size)
    cases = sorted(c for t in trainers[:1] for cs in t.cases.values() for c in cs)
    log.info("%d trainer(s): %s; folds %s, %d case(s); %d candidate(s)", len(trainers),
             ", ".join(t.trainer for t in trainers), " ".join(trainers[0].folds), len(cases), len(candidate_list))
    options = SegmentationOptions(distance_metrics=args.distance_metrics).resolved(dj)
    tables = score_candidates(trainers, candidate_list, raw_root() / name / "labelsTr", dj, options,
                              args.num_processes)
    metric = primary_metric(task, dj)
    ranking = rank(tables, candidate_list, metric)
    best = ranking[0][0]
    if not math.isfinite(ranking[0][1]):
        raise PirlInputError(f"no candidate has a finite {metric.name} (every reference empty?)")
    by_name = {t.trainer: t for t in trainers}
    pp = common_postprocessing([load_postprocessing(by_name[t].folder, by_name[t].folds) for t in best.trainers])
    info = {"dataset": name, "task": task.name, "configuration": args.configuration, "plans": args.plans,
            "folds": list(trainers[0].folds), "cases": cases,
            "primary_metric": {"name": metric.name, "metric": metric.metric, "targets": metric.targets},
            "ranking_rule": RULE, "segmentation_options": options.to_dict(),
            "trainers": [{"trainer": t.trainer, "folder": str(t.folder), "probabilities": not t.missing_probabilities,
                          "missing_probabilities": len(t.missing_probabilities)} for t in trainers],
            "candidates": [candidate_record(c, s if math.isfinite(s) else None, tables[c.name]) for c, s in ranking],
            "best": best.name, "command": predict_command(args, best, by_name),
            "postprocessing": describe(pp, False)}
    output = args.output or results_root() / name
    text = instructions(info, ranking, lacking)
    data, words = json_bytes(info), text.encode()
    # both written before either is renamed: a full disk leaves neither
    with (atomic_path(output / INSTRUCTIONS, size_is(len(words))) as text_tmp,
          atomic_path(output / INFORMATION, size_is(len(data))) as json_tmp):
        text_tmp.write_bytes(words)
        json_tmp.write_bytes(data)
    log.info("\n%s", text)
    log.info("wrote %s and %s", output / INSTRUCTIONS, output / INFORMATION)


main = command(build_parser, run)

if __name__ == "__main__":
    raise SystemExit(main())
