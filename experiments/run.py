"""``make experiments`` / ``python -m experiments.run [--quick]``: the paper's claims on real images.

1. translation (Table 10 layout) on the real 4-modality cases: PIRL pre-train -> translate vs PIRLNet and
   SwinUNETR trained from scratch (the latter also with the pre-training's steps added), beside the
   references "copy the source" and "an intensity mapping fitted on the training cases";
2. segmentation (Table 8 layout) on the expert-labelled BraTS-2015 FLAIR + T1c cases (``seg``) and the
   BraTS-2018 FLAIR + T1 cases (``seg2``), the same models, every modality subset, beside the references
   "every brain voxel is tumour" and "a FLAIR threshold fitted on the training cases";
3. the Table-7 ablation rows on the translation task;
4. the representation itself: cross-modal subject retrieval and within/between-subject variance of z and
   X_h' for every pre-training (and a random initialisation) on cases no pre-training saw;
5. real PET/CT (``petct``, Table 8 on 16 FDG PET/CT subjects): PIRLNet and SwinUNETR from the PIRL weights,
   SwinUNETR and DynUNet from scratch, each scored on PET + CT and on PET alone, beside the clinical SUV
   thresholds and "everything is lesion" (Table-7 rows on request: ``--models pirl ablation_row1 ...``); PET <-> CT
   translation (``petct_translation``) beside copying the source and a fitted intensity mapping;
6. translation on Table 11's data (``seg4_translation``): the seg4 pre-trainings of both presets fine-tuned to
   translate, beside PIRLNet and SwinUNETR from scratch and the same references (the Table-7 rows of both
   presets on request: ``--models ablation_row1 ... ablation_row5_paper``);
7. Table 11 (``seg4``, BraTS-2018, 4 modalities, 15 subsets), both presets beside PIRLNet and SwinUNETR; the
   pre-training-length curve on request (``--models pirl_long pirl_paper_long``: 5x the steps, every kept
   checkpoint's representation measured on held-out subjects, the last one fine-tuned).
Everything runs through the pirl commands users type (convert, plan + preprocess, pirl_train,
pirl_evaluate_missing), each a logged, resumable stage; then the report's inputs are recorded in OUT/records/ (in
git; ``experiments.records``) and the tables (CSV + PNG) and RESULTS.md are written from them. Main rows
run with every seed of the budget. ``--quick``: one fold, one ablation row, 2 steps per training: a smoke
test of the whole chain (minutes), its numbers meaningless. Results of the full run: ``experiments/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from experiments import data
from experiments.config import (
    COMPARISON,
    EXTERNAL_TESTS,
    FULL,
    PART_MODELS,
    PARTS,
    QUICK,
    SHARED_PART,
    TABLE11_ABLATION,
    Budget,
    Model,
    ablation_model,
    eval_folder,
    representation_csv,
    run_key,
)
from experiments.records import records_root, save_records
from experiments.report import write_report
from experiments.stages import StageRunner, plan_table
from experiments.table11 import BOTTLENECK_STAGE, representation_label
from pirl_pipeline.cli.common import command
from pirl_pipeline.demo import FINETUNE_LR, FINETUNE_SET
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.fold_folder import SUMMARY, FoldFolder
from pirl_pipeline.paths import model_folder

REPO = Path(__file__).resolve().parents[1]
ALL_PARTS = ["translation", "seg", "seg2", "seg4", "seg4_translation", "ablation", "representation", "petct",
             "petct_translation"]
#: parts whose evaluation computes the distance metrics (HD95, NSD): small images, where they cost little
DISTANCE_PARTS = ("petct",)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.run", description=__doc__.split("\n\n")[0],
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke test: tiny budget, results in experiments/quick/")
    p.add_argument("--out", type=Path, help="results folder (default experiments/, or experiments/quick/)")
    p.add_argument("--work", type=Path, help="data, models and logs (default OUT/work)")
    p.add_argument("--only", nargs="+", choices=ALL_PARTS,
                   help="run only these parts (the report covers whatever has results)")
    p.add_argument("--report-only", action="store_true", help="no training: tables and RESULTS.md from results")
    p.add_argument("--dry-run", action="store_true",
                   help="print the planned stages (done, recorded only, to run) and their expected minutes; run nothing")
    p.add_argument("-device", choices=["cpu", "cuda"], help="default cpu")
    for name, kind in (("spacing", float), ("patch", int), ("feature-size", int), ("epochs", int),
                       ("pretrain-iters-per-epoch", int), ("finetune-iters-per-epoch", int),
                       ("translate-iters-per-epoch", int)):
        p.add_argument(f"--{name}", type=kind, help="override the preset's value")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds of the main rows (default 12345 2)")
    p.add_argument("--translation-folds", type=int, nargs="+", help="folds 0-3 of 2 held-out cases (default 0)")
    p.add_argument("--seg-folds", type=int, nargs="+", help="BraTS-2015 folds 0-1 (default both)")
    p.add_argument("--seg2-folds", type=int, nargs="+", help="BraTS-2018 folds 0-2 (default 0)")
    p.add_argument("--seg4-folds", type=int, nargs="+", help="BraTS-2018 four-modality folds 0-3 (default 0)")
    p.add_argument("--petct-folds", type=int, nargs="+",
                   help="PET/CT folds 0-3 of 4 held-out subjects (default 0; petct and petct_translation)")
    p.add_argument("--petct-spacing", type=float,
                   help="PET/CT target spacing in mm, isotropic (default: the planner's own, the PET grid)")
    p.add_argument("--ablation-rows", type=int, nargs="*", help="Table-7 rows 1-5 (default all; full PIRL = row 6)")
    p.add_argument("--models", nargs="+", choices=sorted({m.key for ms in (COMPARISON, *PART_MODELS.values()) for m in ms}),
                   help="compared models to run (default all but the on-request ones: petct's Table-7 rows "
                        "ablation_row1-5 and its pirl_scratch, seg4_translation's ablation_row1-5 and "
                        "ablation_row1-5_paper, seg4's pirl_long and pirl_paper_long; the report covers whatever "
                        "has results)")
    return p


def budget_from(args: argparse.Namespace) -> Budget:
    budget = QUICK if args.quick else FULL
    overrides = {k: getattr(args, k) for k in ("spacing", "patch", "feature_size", "epochs",
                                               "pretrain_iters_per_epoch", "finetune_iters_per_epoch",
                                               "translate_iters_per_epoch", "petct_spacing")
                 if getattr(args, k) is not None}
    for key in ("seeds", "translation_folds", "seg_folds", "seg2_folds", "seg4_folds", "petct_folds",
                "ablation_rows"):
        if getattr(args, key) is not None:
            overrides[key] = tuple(getattr(args, key))
    if args.device:
        overrides["device"] = args.device
    if overrides.get("seeds", FULL.seeds)[0] != FULL.seeds[0]:
        raise PirlInputError(f"--seeds must start with {FULL.seeds[0]}: a run folder names the first seed by the "
                             f"bare model key (config.run_key), so another first seed would be read as "
                             f"{FULL.seeds[0]}'s runs; e.g. --seeds {FULL.seeds[0]} {' '.join(map(str, args.seeds))}")
    return dataclasses.replace(budget, **overrides)


class Experiment:
    """The stage list of one run: per part, fold and seed: pre-train, fine-tune, evaluate; references; the
    representation measurement."""

    def __init__(self, budget: Budget, work: Path, models: list[str] | None = None) -> None:
        self.budget, self.work = budget, work
        self.wanted = models
        self.stages: list[tuple] = []

    def common(self, seed: int, task: str = "pretrain", model: Model | None = None, epochs: int | None = None
               ) -> list[str]:
        """Flags every run of ``task`` shares (``epochs``: None = the budget's); a fine-tuning adds the demo's lr
        and ``--set`` fields for its task (after the budget's, so they win); then the model's variant and
        settings (``Model.settings``)."""
        b = self.budget
        lr = [] if task == "pretrain" else ["--lr", f"{FINETUNE_LR[task]:g}"]
        sets = [] if task == "pretrain" else FINETUNE_SET[task]
        # DynUNet has no attention window (pirl_train refuses the flag for it)
        window = [] if model is not None and model.network == "DynUNet" else ["--window-size", str(b.window_size)]
        return ["--epochs", str(epochs or b.epochs), "--val-iters", str(b.val_iters), "--patch-size", *[str(b.patch)] * 3,
                "--feature-size", str(b.feature_size), *window, "--batch-size",
                str(b.batch_size), "-npa", "0", "-device", b.device, *lr, "--set", f"seed={seed}",
                f"lr_schedule={b.lr_schedule}", *sets, *(model.settings() if model is not None else [])]

    def models(self, part: str) -> list[Model]:
        """The compared models of ``part`` (``PART_MODELS``, else COMPARISON), filtered by ``--models``; an
        on-request model only when named there."""
        return [m for m in PART_MODELS.get(part, COMPARISON)
                if (m.key in self.wanted if self.wanted is not None else not m.on_request)]

    def fold_folder(self, run: str, part: str, trainer: str, fold: int) -> FoldFolder:
        return FoldFolder(model_folder(PARTS[part][0], trainer, root=self.work / "results" / run), fold)

    def pretrain_checkpoint(self, model: Model, part: str, fold: int, seed: int) -> Path:
        return self.pretrain_folder(model, part, fold, seed).checkpoint()

    def add_model(self, model: Model, part: str, fold: int, seed: int) -> None:
        b, (dataset, task) = self.budget, PARTS[part]
        run = run_key(model.key, seed, b)
        pretrained: list[str] = []
        if model.pretrain_key is not None:
            checkpoint = self.pretrain_checkpoint(model, part, fold, seed)
            disable = ["--disable", *model.disabled] if model.disabled else []
            source = run_key(model.pretrain_key, seed, b)  # another model's pre-training: the same stage name
            data_part = SHARED_PART.get(part, part)  # parts on one dataset share their pre-trainings
            self.add(f"pretrain {source} {data_part} fold{fold}", source, checkpoint,
                     ["pirl_pipeline.cli.train", dataset, "3d_fullres", "pretrain", "-f", str(fold),
                      "--iters", str(b.pretrain_iters_per_epoch),
                      *self.common(seed, model=model, epochs=b.epochs * model.pretrain_scale),
                      *([f"keep_every={model.keep_every(b)}"] if model.keep_every(b) else []), *disable])
            pretrained = ["--pretrained", str(checkpoint)]
        if model.pretrain_only:
            return
        trainer = model.trainer(task)
        folder = self.fold_folder(run, part, trainer, fold)
        self.add(f"train {run} {part} fold{fold}", run, folder.checkpoint(),
                 ["pirl_pipeline.cli.train", dataset, "3d_fullres", task, "-f", str(fold), "-tr", trainer,
                  "--iters", str(model.iters_per_epoch(b, task)), *self.common(seed, task, model), *pretrained])
        out = eval_folder(self.work, run, part, fold)
        distances = [] if part in DISTANCE_PARTS else ["--no_distance_metrics"]
        evaluate = ["pirl_pipeline.cli.evaluate_missing", "-d", dataset, "-f", str(fold), "-t", task, "-tr", trainer,
                    "--disable_tta", *distances, "-device", b.device]
        self.add(f"evaluate {run} {part} fold{fold}", run, out / SUMMARY, [*evaluate, "-o", str(out)])
        external = EXTERNAL_TESTS.get(part)
        if external is not None and model.key in external.keys:
            out = eval_folder(self.work, run, external.name, fold)
            images = self.work / "raw" / PARTS[external.dataset_part][0] / "imagesTr"
            self.add(f"evaluate {run} {external.name} fold{fold}", run, out / SUMMARY,
                     [*evaluate, "-i", str(images), "-o", str(out)])

    def add_seg4_representation(self, parts: list[str]) -> None:
        """One measurement of every seg4 pre-training planned now or already on disk (so that a run of some
        models or seeds never drops the others' rows; the Table-7 rows of ``seg4_translation`` when planned in
        ``parts`` or on disk), and of SwinUNETR from scratch after its seg training. Always fold 0's networks (the
        held-out subjects are in no fold), so a run of other folds leaves the rows as they are."""
        b, out = self.budget, representation_csv(self.work, "seg4")
        fold = 0
        planned = {m.key for part in ("seg4", "seg4_translation") if part in parts and fold in b.folds(part)
                   for m in self.models(part)}
        checkpoints, swinunetr = [], []
        for m in (*PART_MODELS["seg4"], *TABLE11_ABLATION):
            for seed in dict.fromkeys((*m.seeds(b), *m.seeds(FULL))):  # the default seeds: kept when on disk
                wanted = m.key in planned and seed in m.seeds(b)
                if m.pretrain_key == m.key:
                    points = self.pretrain_points(m, "seg4", fold, seed)
                    if wanted or points[-1][1].is_file():
                        checkpoints += [f"{label}={path}" for label, path in points]
                elif m.network == "SwinUNETR" and m.pretrain_key is None:
                    path = self.fold_folder(run_key(m.key, seed, b), "seg4", m.trainer("seg"), fold).checkpoint()
                    if wanted or path.is_file():
                        swinunetr.append(f"{representation_label(m.label, fold, seed, BOTTLENECK_STAGE)}={path}")
        if checkpoints:  # measured again whenever the checkpoints to measure change
            self.add("representation seg4", "shared", out,
                     ["experiments.representation_rows", "--work", str(self.work), "--rows", "--held-out",
                      PARTS["translation"][0], "--health", "--out", str(out), "--checkpoint", *checkpoints,
                      *(["--swinunetr", *swinunetr] if swinunetr else [])], same_command=True)

    def pretrain_folder(self, model: Model, part: str, fold: int, seed: int) -> FoldFolder:
        """The fold folder of the pre-training ``model`` starts from (shared by its fine-tunings)."""
        return self.fold_folder(run_key(model.pretrain_key, seed, self.budget), part, "PIRLPretrainer", fold)

    def pretrain_points(self, model: Model, part: str, fold: int, seed: int) -> list[tuple[str, Path]]:
        """(representation row label, checkpoint) of a pre-training: its final checkpoint; with
        ``pretrain_scale`` > 1 every kept checkpoint too (``Model.keep_every``), labelled by its steps."""
        b, folder = self.budget, self.pretrain_folder(model, part, fold, seed)
        if model.pretrain_scale == 1:
            return [(representation_label(model.label, fold, seed), folder.checkpoint())]
        every = model.keep_every(b)
        points = [(k * b.pretrain_steps, folder.epoch_checkpoint(k * every)) for k in range(1, model.pretrain_scale)]
        return [(representation_label(model.label, fold, seed, f"after {steps} steps"), path)
                for steps, path in [*points, (model.pretrain_scale * b.pretrain_steps, folder.checkpoint())]]

    def add_references(self, part: str, fold: int) -> None:
        out = eval_folder(self.work, "references", part, fold)
        self.add(f"references {part} fold{fold}", "shared", out / "done",
                 ["experiments.reference_rows", "--work", str(self.work), "--part", part, "--fold", str(fold)])

    def add(self, name: str, results: str, done: Path, argv: list[str], same_command: bool = False) -> None:
        """Plan a stage once (``StageRunner.run``'s arguments; ``same_command``: a measurement run again when
        its command changes)."""
        if not any(s[0] == name for s in self.stages):
            self.stages.append((name, results, done, argv, same_command))

    def plan(self, parts: list[str]) -> None:
        b = self.budget
        for part in ("translation", "seg", "seg2", "seg4", "seg4_translation", "petct", "petct_translation"):
            if part not in parts:
                continue
            for fold in b.folds(part):
                self.add_references(part, fold)
                if part in EXTERNAL_TESTS:
                    self.add_references(EXTERNAL_TESTS[part].name, fold)
                for model in self.models(part):
                    for seed in model.seeds(b):
                        self.add_model(model, part, fold, seed)
        if "seg4" in parts:  # the seg4 pre-trainings' representation on the 8 subjects of the translation data
            self.add_seg4_representation(parts)
        if "ablation" in parts:
            for row in b.ablation_rows:
                self.add_model(ablation_model(row), "translation", b.translation_folds[0], b.seeds[0])
        if "representation" in parts:
            self.add("representation", "shared", representation_csv(self.work),
                     ["experiments.representation_rows", "--work", str(self.work), "--fold",
                      str(b.translation_folds[0]), "--rows", *map(str, b.ablation_rows)])


def data_parts(parts: list[str]) -> list[str]:
    """The PARTS whose datasets ``parts`` need (the ablation, the representation, seg4's representation
    measurement and the EXTERNAL_TESTS use the translation data; petct_translation petct's), each dataset once."""
    wanted = set(parts) | ({"translation"} if {"ablation", "representation", "seg4"} & set(parts) else set())
    wanted |= {EXTERNAL_TESTS[p].dataset_part for p in wanted if p in EXTERNAL_TESTS}
    wanted = {SHARED_PART.get(p, p) for p in wanted}
    return [p for p in PARTS if p in wanted]


def prepare_data(runner: StageRunner, budget: Budget, work: Path, parts: list[str] | None = None) -> None:
    """Convert the datasets ``parts`` need (None: all), plan + preprocess at the budget's spacing, write the fixed
    splits."""
    data.check_shared()
    needed = data_parts(ALL_PARTS if parts is None else parts)
    commands = data.conversion_commands(work)
    for part in needed:
        name = PARTS[part][0]
        runner.run(f"convert {name}", commands[name], work / "raw" / name / "dataset.json")
    for part, (name, _) in ((p, PARTS[p]) for p in needed):
        marker = work / "preprocessed" / name / f".done_spacing_{spacing_tag(budget, part)}"
        runner.run(f"plan_and_preprocess {name}", ["pirl_pipeline.cli.plan_and_preprocess", "-d", name, "-np", "2",
                                                   *spacing_argv(budget, part)], marker)
        data.write_splits(work / "preprocessed" / name, data.splits_for(part, work / "preprocessed" / name))
        for stale in marker.parent.glob(".done_spacing_*"):
            stale.unlink()
        marker.touch()


def spacing_argv(budget: Budget, part: str) -> list[str]:
    """plan_and_preprocess's spacing flags for ``part``: ``--spacing S S S``, or, where the budget keeps the
    planner's own spacing (petct), ``--overwrite_plans`` so that plans an earlier ``--petct-spacing`` wrote go."""
    spacing = budget.part_spacing(part)
    return ["--overwrite_plans"] if spacing is None else ["--spacing", *[f"{spacing:g}"] * 3]


def spacing_tag(budget: Budget, part: str) -> str:
    spacing = budget.part_spacing(part)
    return "plans" if spacing is None else f"{spacing:g}"


def run(args: argparse.Namespace) -> None:
    budget = budget_from(args)
    out = args.out or (REPO / "experiments" / ("quick" if args.quick else ""))
    work = (args.work or out / "work").resolve()
    parts = args.only or ALL_PARTS
    experiment = Experiment(budget, work, args.models)
    experiment.plan(parts)
    if args.dry_run:
        print(plan_table(experiment.stages, work, records_root(out)))
        return
    start = time.perf_counter()
    try:
        if not args.report_only:
            runner = StageRunner(work, total=len(experiment.stages) + 2 * len(data_parts(parts)))
            prepare_data(runner, budget, work, parts)
            for name, results, done, argv, same_command in experiment.stages:
                runner.run(name, argv, done, results, same_command)
    finally:  # a failed stage keeps the finished ones' records
        records = save_records(work, out)
    report = write_report(records, out, budget, quick=args.quick, parts=args.only)
    print(f"experiments finished in {(time.perf_counter() - start) / 60:.1f} min; results: {report}")


main = command(build_parser, run)


if __name__ == "__main__":
    raise SystemExit(main())
