"""``pirl_demo``: the whole pipeline on the embedded demo dataset, sized for a laptop CPU.

Dataset500_DemoBrain (simulated contrasts on real MNI152 anatomy) -> plan + preprocess -> PIRL
pre-training -> fine-tuning for segmentation and translation -> prediction of the held-out cases with all
modalities and with one modality -> the trivial references (``pirl_reference``: a FLAIR threshold and "the
whole brain" fitted on the training cases; T1 copied and T1 mapped by a fitted intensity mapping) ->
evaluation of all of them by the same evaluator -> missing-modality matrices -> report; with ``--compare``
also SwinUNETR and DynUNet from scratch on the same fold and budget, then ``pirl_find_best_configuration``
choosing among the three and their ensembles. Each stage is a
pirl command (printed, so it can be re-run by hand); finished stages are skipped on a rerun.

The CPU configuration overrides the plans on the command line: 3 mm voxels (one 64^3 patch holds the whole
brain), feature_size 12, batch 1, and the step counts where the learning curves flatten
(docs/measurements_history.md, "The demo"; measured, not assumed): translation beats copying the source there. On the 8 held-out cases
segmentation beats the FLAIR threshold on mean whole-tumour Dice and HD95 but wins only 3 of the 8 cases,
and it adds the tumour core and enhancing tumour, which the threshold cannot paint. This is far from the
paper's 1000 epochs on 4 GPUs.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import logging
import shlex
import time
from collections.abc import Callable
from pathlib import Path

from dataset_conversion import demo_brain
from pirl_pipeline.cli import (
    evaluate,
    evaluate_missing,
    find_best_configuration,
    plan_and_preprocess,
    predict,
    reference,
    report,
    train,
)
from pirl_pipeline.cli.common import command
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.file_io import save_json
from pirl_pipeline.fold_folder import FoldFolder
from pirl_pipeline.paths import model_folder, raw_root, results_root
from pirl_pipeline.tasks import SEG, TRANSLATE, get_task

log = logging.getLogger("pirl")
DATASET = "Dataset500_DemoBrain"
PRETRAIN_ITERS, SEG_ITERS, TRANSLATE_ITERS, EPOCHS = 8, 160, 40, 4  # learning curves: docs/measurements_history.md
#: learning rate per fine-tuning task: seg at 1e-3 reached validation WT 0.810 / TC 0.483 after 160 steps
#: against 0.778 / 0.406 at the default 2e-4 (same seed, fold-0 validation cases; docs/measurements_history.md)
FINETUNE_LR = {"seg": 1e-3, "translate": 2e-4}
#: further TrainerConfig fields per fine-tuning task (``--set``), each chosen on the validation volumes (docs/measurements_history.md,
#: "The demo"): seg keeps all modalities in half of its samples (uniform modality dropout gives the full
#: set 1 sample in 15) and decays its lr (poly: validation metric 0.603 at 160 steps vs 0.590 at constant lr)
FINETUNE_SET = {"seg": ["lr_schedule=poly", "full_modality_share=0.5"], "translate": ["lr_schedule=constant"]}
#: held-out cases: with 2 the model and the FLAIR threshold read 0.801 vs 0.803, one case each (docs/measurements_history.md)
TEST_CASES = 8
#: Swin attention window: 4 tiles the 64^3 patch's token grids (32/16/8/4) exactly, where the paper's 7 pads them
#: to 35/21/14 and makes every step 3.3-3.4x costlier in CPU time (benchmarks/RESULTS.md, "Swin attention window")
WINDOW = 4
#: the trivial references, scored beside the models (the report compares them): (folder, task, arguments)
REFERENCES = (("seg_flair_reference_threshold", "seg", ["--kind", "threshold", "--channels", "3"]),
              ("seg_all_reference_whole_brain", "seg", ["--kind", "whole_brain"]),
              ("translate_t1_reference_identity", "translate", ["--kind", "identity", "--source", "0"]),
              ("translate_t1_reference_histogram", "translate", ["--kind", "histogram", "--source", "0"]))
#: the seg trainers ``--compare`` trains from scratch beside PIRL, with the PIRL seg model's budget and settings
COMPARED = ("SwinUNETRSegTrainer", "DynUNetSegTrainer")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pirl_demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=8, help="training cases of the demo dataset (default 8)")
    p.add_argument("--test-cases", type=int, default=TEST_CASES,
                   help=f"held-out cases of the demo dataset (default {TEST_CASES})")
    p.add_argument("--downsample", type=int, default=3, help="demo voxel size in mm (default 3)")
    p.add_argument("--pretrain-iters", type=int, default=PRETRAIN_ITERS,
                   help=f"pre-training iterations (default {PRETRAIN_ITERS})")
    p.add_argument("--seg-iters", type=int, default=SEG_ITERS, help=f"segmentation iterations (default {SEG_ITERS})")
    p.add_argument("--translate-iters", type=int, default=TRANSLATE_ITERS,
                   help=f"translation iterations (default {TRANSLATE_ITERS})")
    p.add_argument("--epochs", type=int, default=EPOCHS, help=f"epochs per training stage (default {EPOCHS})")
    p.add_argument("--feature-size", type=int, default=12)
    p.add_argument("--window-size", type=int, default=WINDOW,
                   help=f"Swin attention window of the demo network (default {WINDOW}; the paper's is 7)")
    p.add_argument("--compare", action="store_true",
                   help="also train SwinUNETR and DynUNet seg from scratch (same fold, budget and settings; "
                        "~15 min more on 2 cores) and choose among the three and their ensembles with "
                        "pirl_find_best_configuration")
    p.add_argument("-device", default="cpu", choices=["cpu", "cuda"])
    return p


def script_name(main: Callable) -> str:
    """The console script that runs ``main`` (``pirl_train`` for ``pirl_pipeline.cli.train:main``), from the
    installed entry points; ``python -m MODULE`` when none does."""
    target = f"{main.__module__}:{main.__name__}"
    for script in importlib.metadata.entry_points(group="console_scripts"):
        if script.value == target:
            return script.name
    return f"python -m {main.__module__}"


class Stages:
    """Runs pirl commands in order, timing each; a stage whose output exists is skipped."""

    def __init__(self) -> None:
        self.timings: list[dict] = []

    def run(self, name: str, main: Callable[[list[str]], int], argv: list[str], done: Path | None = None) -> None:
        command = f"{script_name(main)} {shlex.join(argv)}"
        if done is not None and done.exists():
            log.info("[%s] already done (%s exists), skipping", name, done)
            self.timings.append({"stage": name, "seconds": 0.0, "skipped": True, "command": command})
            return
        log.info("[%s] %s", name, command)
        start = time.perf_counter()
        if main(argv) != 0:
            raise PirlInputError(f"demo stage {name!r} failed: {command}")
        self.timings.append({"stage": name, "seconds": round(time.perf_counter() - start, 1), "skipped": False,
                             "command": command})


def run(args: argparse.Namespace) -> None:
    total = time.perf_counter()
    raw = raw_root() / DATASET
    res = results_root() / DATASET
    preds = res / "predictions"
    stages = Stages()
    stages.run("dataset", demo_brain.main, ["-d", "500", "-n", str(args.cases), "--num_test", str(args.test_cases),
                                             "--downsample", str(args.downsample)],
               raw / "dataset.json")
    stages.run("plan+preprocess", plan_and_preprocess.main, ["-d", "500", "-np", "2"])
    size = ["--patch-size", "64", "64", "64", "--batch-size", "1", "-npa", "0", "-device", args.device]
    # pre-training: 2 epochs with one validation batch each (an Algorithm-1 validation batch costs a step)
    pre_epochs = min(2, args.epochs)
    pre_iters = str(max(1, args.pretrain_iters // pre_epochs))
    fine_iters = {"seg": str(max(1, args.seg_iters // args.epochs)),
                  "translate": str(max(1, args.translate_iters // args.epochs))}
    pre_folder = FoldFolder(model_folder(DATASET, "PIRLPretrainer"), "all")
    stages.run("pretrain", train.main, ["500", "3d_fullres", "pretrain", "--iters", pre_iters, "--feature-size",
                                        str(args.feature_size), "--window-size", str(args.window_size),
                                        "--epochs", str(pre_epochs), "--val-iters", "1",
                                        *size, "--set", "lr_schedule=constant"], pre_folder.checkpoint())
    ckpt = str(pre_folder.checkpoint())
    def finetune(task, trainer: str, pretrained: list[str]) -> None:
        folder = FoldFolder(model_folder(DATASET, trainer), 0)
        npz = ["--npz"] if task is SEG else []  # seg keeps its validation probabilities for the chooser's ensembles
        argv = ["500", "3d_fullres", task.name, "-f", "0", "-tr", trainer, *pretrained, "--iters",
                fine_iters[task.name], "--epochs", str(args.epochs), "--val-iters", "2",
                "--lr", f"{FINETUNE_LR[task.name]:g}", *size, *npz, "--set", *FINETUNE_SET[task.name]]
        stages.run(f"finetune {task.name} {trainer}", train.main, argv, folder.checkpoint())

    for task in (SEG, TRANSLATE):
        finetune(task, task.default_trainer, ["--pretrained", ckpt])
    if args.compare:
        for trainer in COMPARED:  # the pre-trained network's size; DynUNet has no attention window
            window = ["--window-size", str(args.window_size)] if trainer.startswith("SwinUNETR") else []
            finetune(SEG, trainer, ["--feature-size", str(args.feature_size), *window])
        stages.run("choose seg configuration", find_best_configuration.main, ["-d", "500", "-t", "seg"])
    images_ts, labels_ts = raw / "imagesTs", raw / "labelsTs"
    common = ["-d", "500", "-device", args.device, "--disable_tta"]
    for name, task, extra in (("seg_all", "seg", []), ("seg_flair", "seg", ["--channels", "3"]),
                              ("translate_t1", "translate", ["--channels", "0"])):
        stages.run(f"predict {name}", predict.main, ["-i", str(images_ts), "-o", str(preds / name), "-t", task,
                                                     *common, *extra], preds / name / "summary.json")
    for name, task, extra in REFERENCES:
        stages.run(f"reference {name}", reference.main, ["-i", str(images_ts), "-o", str(preds / name), "-d", "500",
                                                         "-t", task, *extra], preds / name / "summary.json")
    for name, task, _ in (("seg_all", "seg", []), ("seg_flair", "seg", []), ("translate_t1", "translate", []),
                          *REFERENCES):
        truth = get_task(task).reference_folder(images_ts, labels_ts)
        stages.run(f"evaluate {name}", evaluate.main, ["-ref", str(truth), "-pred", str(preds / name),
                                                       "-d", "500", "-t", task], preds / name / "summary.json")
    for task in (SEG, TRANSLATE):
        done = FoldFolder(model_folder(DATASET, task.default_trainer), 0).subsets_summary(task)
        stages.run(f"missing modalities {task.name}", evaluate_missing.main,
                   ["-d", "500", "-f", "0", "-t", task.name, "--max_cases", "1", "--disable_tta", "-device", args.device],
                   done)
    stages.run("report", report.main, ["-d", "500"])
    elapsed = time.perf_counter() - total
    save_json({"total_seconds": round(elapsed, 1), "stages": stages.timings, "settings": vars(args)},
              res / "demo_timing.json")
    width = max(len(t["stage"]) for t in stages.timings)
    lines = [f"  {t['stage']:<{width}}  " + ("skipped" if t["skipped"] else f"{t['seconds']:7.1f} s")
             for t in stages.timings]
    log.info("demo finished in %.1f min:\n%s\nreport: %s", elapsed / 60, "\n".join(lines), res / "report" / "report.md")


main = command(build_parser, run)


if __name__ == "__main__":
    raise SystemExit(main())
