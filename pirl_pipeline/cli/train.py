"""``pirl_train DATASET CONFIGURATION TASK``: pre-train (Algorithm 1), or fine-tune for seg/translate."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from pirl_pipeline.cli.common import cli_entry
from pirl_pipeline.data.dataset_json import DatasetJson, load_dataset_json
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.paths import find_dataset_name, preprocessed_root, results_root
from pirl_pipeline.splits import load_or_create_splits
from pirl_pipeline.training import distributed
from pirl_pipeline.training.base_trainer import RunContext
from pirl_pipeline.training.checkpoint import load_checkpoint
from pirl_pipeline.training.config import ABLATIONS, TASKS, TrainerConfig
from pirl_pipeline.training.registry import TRAINERS, build_trainer, resolve_trainer
from plans.plans_manager import PLANS_FILE, Plans

log = logging.getLogger("pirl")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pirl_train",
        description="Train one fold. Pre-training uses all cases (fold 'all') by default. Multi-GPU: "
                    "torchrun --nproc_per_node N $(which pirl_train) ...",
        epilog="trainers: " + "; ".join(f"{n} ({s.task}: {s.summary})" for n, s in TRAINERS.items()))
    p.add_argument("dataset", help="dataset id or name, e.g. 501")
    p.add_argument("configuration", help="plans configuration, e.g. 3d_fullres")
    p.add_argument("task", choices=TASKS)
    p.add_argument("-f", dest="fold", default=None, help="fold index or 'all' (default: 0; pretrain: all)")
    p.add_argument("-tr", dest="trainer", default=None, help="trainer name (default: the task's PIRL trainer)")
    p.add_argument("--pretrained", type=Path, default=None, help="checkpoint of a PIRLPretrainer run")
    p.add_argument("-device", default=None, choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--c", dest="resume", action="store_true", help="continue from checkpoint_latest.pth")
    p.add_argument("--epochs", type=int)
    p.add_argument("--iters", type=int, dest="iters_per_epoch", help="training iterations per epoch")
    p.add_argument("--val-iters", type=int, dest="val_iters", help="validation batches per epoch")
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--patch-size", type=int, nargs=3, dest="patch_size", metavar=("X", "Y", "Z"))
    p.add_argument("--feature-size", type=int, dest="feature_size")
    p.add_argument("--seed", type=int)
    p.add_argument("-npa", type=int, dest="num_workers",
                   help="data augmentation worker processes per rank (default: min(8, CPUs/2) on CUDA, 0 on the CPU)")
    p.add_argument("--fp32", action="store_true", help="no autocast on CUDA (default: bf16, fp16 + grad scaler "
                                                        "where bf16 is missing)")
    p.add_argument("--grad-checkpoint", "--grad_checkpoint", dest="grad_checkpoint", action="store_true",
                   help="gradient checkpointing of the Swin blocks: less memory, ~30%% more compute")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (opt-in; the first steps "
                                                          "compile)")
    p.add_argument("--npz", dest="save_probabilities", action="store_true",
                   help="save the final validation's probabilities (CASE.npz) next to its predictions")
    p.add_argument("--disable", nargs="+", default=None, choices=ABLATIONS, metavar="TERM",
                   help=f"Table-7 ablations: switch off any of {', '.join(ABLATIONS)}")
    p.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="override any TrainerConfig field, e.g. --set w_invariance=0.5 augment=false")
    return p


def make_config(args: argparse.Namespace, pretrained_state: dict | None) -> TrainerConfig:
    fields = ("epochs", "iters_per_epoch", "val_iters", "lr", "batch_size", "patch_size", "feature_size",
              "seed", "num_workers")
    overrides = {k: getattr(args, k) for k in fields if getattr(args, k) is not None}
    if args.disable:
        overrides["disabled"] = list(args.disable)
    if args.save_probabilities:
        overrides["save_probabilities"] = True
    if args.fp32:
        overrides["amp"] = False
    for flag in ("grad_checkpoint", "compile"):
        if getattr(args, flag):
            overrides[flag] = True
    if pretrained_state is not None:  # the backbone's size comes from the pre-trained network by default
        source = pretrained_state["network_kwargs"]
        for key in ("feature_size", "patch_size"):
            if key not in overrides and key in source:
                overrides[key] = list(source[key]) if key == "patch_size" else int(source[key])
    config = TrainerConfig.from_dict({**TrainerConfig(task=args.task).to_dict(), **overrides})
    return config.with_overrides(args.set) if args.set else config


def select_device(choice: str | None, info: distributed.DistInfo) -> torch.device:
    if choice == "cuda" or (choice is None and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise PirlInputError("-device cuda: no CUDA device is available")
        torch.cuda.set_device(info.local_rank)
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


def run(args: argparse.Namespace) -> None:
    name = find_dataset_name(args.dataset, preprocessed_root())
    folder = preprocessed_root() / name
    plans = Plans.load(folder / PLANS_FILE)
    dataset_json: DatasetJson = load_dataset_json(folder)
    trainer_name = resolve_trainer(args.task, args.trainer)
    fold = args.fold if args.fold is not None else ("all" if args.task == "pretrain" else "0")
    data_folder = folder / plans.configuration(args.configuration).data_identifier
    cases = sorted(p.stem for p in data_folder.glob("*.json"))
    if not cases:
        raise PirlInputError(f"{data_folder}: no preprocessed cases (run pirl_plan_and_preprocess -d {args.dataset})")
    if fold == "all":
        train_cases, val_cases = cases, cases
    else:
        splits = load_or_create_splits(folder, cases)
        if not fold.isdigit() or int(fold) >= len(splits):
            raise PirlInputError(f"{folder / 'splits_final.json'}: no fold {fold} (folds 0..{len(splits) - 1}, or all)")
        train_cases, val_cases = splits[int(fold)]["train"], splits[int(fold)]["val"]
    pretrained_state = load_checkpoint(args.pretrained) if args.pretrained else None
    config = make_config(args, pretrained_state)
    config.trainer = trainer_name
    info = distributed.init_distributed("cuda" if args.device == "cuda" or
                                        (args.device is None and torch.cuda.is_available()) else "cpu")
    try:
        output = results_root() / name / f"{trainer_name}__{plans.plans_name}__{args.configuration}" / f"fold_{fold}"
        ctx = RunContext(plans, args.configuration, dataset_json, data_folder, output, train_cases, val_cases,
                         select_device(args.device, info), info)
        trainer = build_trainer(trainer_name, ctx, config, args.pretrained)
        latest = output / "checkpoint_latest.pth"
        if args.resume and latest.is_file():
            trainer.resume(latest)
        elif args.resume:
            log.warning("--c: no %s yet, starting from scratch", latest)
        elif latest.is_file() and info.is_main:
            log.warning("%s exists; training again from scratch (use --c to continue)", latest)
        trainer.run()
        if info.is_main:
            log.info("done: %s", output)
    finally:
        distributed.cleanup(info)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
