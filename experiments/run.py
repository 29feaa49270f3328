"""``make experiments`` / ``python -m experiments.run [--quick]``: the paper's claims on real images.

1. translation (Table 10 layout) on the three real 4-modality cases: PIRL pre-train -> translate vs PIRLNet
   and SwinUNETR trained from scratch (the latter also with the pre-training's steps added);
2. segmentation (Table 8 layout) on the four expert-labelled BraTS-2015 FLAIR + T1c cases, the same models,
   every modality subset (FLAIR, T1c, both);
3. the Table-7 ablation rows on the translation task.
Everything runs through the pirl commands users type (convert, plan + preprocess, pirl_train,
pirl_evaluate_missing), each a logged, resumable stage; then tables (CSV + PNG) and RESULTS.md.
``--quick``: one fold, one ablation row, 2 steps per training at 3 mm: a smoke test of the whole chain
(minutes), its numbers meaningless. Results of the full run: ``experiments/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from experiments import data
from experiments.config import (
    COMPARISON,
    FULL,
    QUICK,
    SEGMENTATION_ID,
    SEGMENTATION_NAME,
    TRANSLATION_ID,
    TRANSLATION_NAME,
    Budget,
    Model,
    ablation_model,
)
from experiments.report import write_report
from experiments.stages import StageRunner
from pirl_pipeline.cli.common import cli_entry

REPO = Path(__file__).resolve().parents[1]
PLANS = "PIRLPlans__3d_fullres"
DATASETS = {"translate": f"Dataset{TRANSLATION_ID}_{TRANSLATION_NAME}",
            "seg": f"Dataset{SEGMENTATION_ID}_{SEGMENTATION_NAME}"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.run", description=__doc__.split("\n\n")[0],
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke test: tiny budget, results in experiments/quick/")
    p.add_argument("--out", type=Path, help="results folder (default experiments/, or experiments/quick/)")
    p.add_argument("--work", type=Path, help="data, models and logs (default OUT/work)")
    p.add_argument("--only", nargs="+", choices=["translation", "seg", "ablation"],
                   help="run only these parts (the report covers whatever has results)")
    p.add_argument("--report-only", action="store_true", help="no training: tables and RESULTS.md from results")
    p.add_argument("-device", choices=["cpu", "cuda"], help="default cpu")
    for name, kind in (("spacing", float), ("patch", int), ("feature-size", int), ("epochs", int),
                       ("pretrain-iters-per-epoch", int), ("finetune-iters-per-epoch", int)):
        p.add_argument(f"--{name}", type=kind, help="override the preset's value")
    p.add_argument("--translation-folds", type=int, nargs="+", help="leave-one-out folds 0-2 (default 0)")
    p.add_argument("--seg-folds", type=int, nargs="+", help="folds 0-1 (default both)")
    p.add_argument("--ablation-rows", type=int, nargs="*", help="Table-7 rows 1-5 (default all; full PIRL = row 6)")
    return p


def budget_from(args: argparse.Namespace) -> Budget:
    budget = QUICK if args.quick else FULL
    overrides = {k: getattr(args, k) for k in ("spacing", "patch", "feature_size", "epochs",
                                               "pretrain_iters_per_epoch", "finetune_iters_per_epoch")
                 if getattr(args, k) is not None}
    for key in ("translation_folds", "seg_folds", "ablation_rows"):
        if getattr(args, key) is not None:
            overrides[key] = tuple(getattr(args, key))
    if args.device:
        overrides["device"] = args.device
    return dataclasses.replace(budget, **overrides)


class Experiment:
    """The stage list of one run: data, then per part and fold: pre-train, fine-tune, evaluate."""

    def __init__(self, budget: Budget, work: Path) -> None:
        self.budget, self.work = budget, work
        self.stages: list[tuple] = []

    def common(self) -> list[str]:
        b = self.budget
        return ["--epochs", str(b.epochs), "--val-iters", str(b.val_iters), "--patch-size", *[str(b.patch)] * 3,
                "--feature-size", str(b.feature_size), "--batch-size", str(b.batch_size), "-npa", "0",
                "-device", b.device]

    def fold_folder(self, model_key: str, task: str, trainer: str, fold: int) -> Path:
        return self.work / "results" / model_key / DATASETS[task] / f"{trainer}__{PLANS}" / f"fold_{fold}"

    def add_model(self, model: Model, task: str, fold: int) -> None:
        b, dataset = self.budget, DATASETS[task]
        pretrained: list[str] = []
        if model.pretrain_key is not None:
            folder = self.fold_folder(model.pretrain_key, task, "PIRLPretrainer", fold)
            disable = ["--disable", *model.disabled] if model.disabled else []
            self.add(f"pretrain {model.key} {task} fold{fold}", model.pretrain_key, folder / "checkpoint_final.pth",
                     ["pirl_pipeline.cli.train", dataset, "3d_fullres", "pretrain", "-f", str(fold),
                      "--iters", str(b.pretrain_iters_per_epoch), *self.common(), *disable])
            pretrained = ["--pretrained", str(folder / "checkpoint_final.pth")]
        trainer = model.trainer(task)
        folder = self.fold_folder(model.key, task, trainer, fold)
        self.add(f"train {model.key} {task} fold{fold}", model.key, folder / "checkpoint_final.pth",
                 ["pirl_pipeline.cli.train", dataset, "3d_fullres", task, "-f", str(fold), "-tr", trainer,
                  "--iters", str(model.iters_per_epoch(b)), *self.common(), *pretrained])
        out = self.work / "eval" / model.key / f"{task}_fold{fold}"
        self.add(f"evaluate {model.key} {task} fold{fold}", model.key, out / "summary.json",
                 ["pirl_pipeline.cli.evaluate_missing", "-d", dataset, "-f", str(fold), "-t", task, "-tr", trainer,
                  "--disable_tta", "-device", b.device, "-o", str(out)])

    def add(self, name: str, results: str, done: Path, argv: list[str]) -> None:
        if not any(s[0] == name for s in self.stages):
            self.stages.append((name, results, done, argv))

    def plan(self, parts: list[str]) -> None:
        b = self.budget
        if "translation" in parts:
            for fold in b.translation_folds:
                for model in COMPARISON:
                    self.add_model(model, "translate", fold)
        if "seg" in parts:
            for fold in b.seg_folds:
                for model in COMPARISON:
                    self.add_model(model, "seg", fold)
        if "ablation" in parts:
            for row in b.ablation_rows:
                self.add_model(ablation_model(row), "translate", b.translation_folds[0])


def prepare_data(runner: StageRunner, budget: Budget, work: Path) -> None:
    """Convert both datasets, plan + preprocess at the budget's spacing, and write the fixed splits."""
    data.check_shared()
    for name, argv in data.conversion_commands(work).items():
        runner.run(f"convert {name}", argv, work / "raw" / name / "dataset.json")
    for task, name in DATASETS.items():
        marker = work / "preprocessed" / name / f".done_spacing_{budget.spacing:g}"
        runner.run(f"plan_and_preprocess {name}", ["pirl_pipeline.cli.plan_and_preprocess", "-d", name, "-np", "2",
                                                   "--spacing", *[f"{budget.spacing:g}"] * 3], marker)
        cases = sorted(p.stem for p in (work / "preprocessed" / name / "pirl_plans_3d_fullres").glob("*.json"))
        splits = data.translation_splits(cases) if task == "translate" else data.segmentation_splits(cases)
        data.write_splits(work / "preprocessed" / name, splits)
        for stale in marker.parent.glob(".done_spacing_*"):
            stale.unlink()
        marker.touch()


def run(args: argparse.Namespace) -> None:
    budget = budget_from(args)
    out = args.out or (REPO / "experiments" / ("quick" if args.quick else ""))
    work = (args.work or out / "work").resolve()
    parts = args.only or ["translation", "seg", "ablation"]
    experiment = Experiment(budget, work)
    experiment.plan(parts)
    start = time.perf_counter()
    if not args.report_only:
        runner = StageRunner(work, total=len(experiment.stages) + 4)
        prepare_data(runner, budget, work)
        for name, results, done, argv in experiment.stages:
            runner.run(name, argv, done, results)
    report = write_report(work, out, budget, quick=args.quick)
    print(f"experiments finished in {(time.perf_counter() - start) / 60:.1f} min; results: {report}")


@cli_entry
def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
