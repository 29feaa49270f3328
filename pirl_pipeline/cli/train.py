"""``pirl_train DATASET CONFIGURATION TASK``: pre-train (Algorithm 1), or fine-tune for seg/translate.

``--c`` continues the run that was started: its saved configuration (checkpoint_latest.pth, or config.json when
it was killed before the first checkpoint), its network; a flag that would change it is an error, except the
``RESUME_SAFE`` ones (``--epochs``, ...), which are logged overrides."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from pirl_pipeline import run_lock
from pirl_pipeline.checkpoint import PretrainedWeights, load_checkpoint, load_pretrained
from pirl_pipeline.cli.common import (
    checked,
    command,
    feature_size,
    non_negative_int,
    patch_side,
    positive_float,
    positive_int,
)
from pirl_pipeline.data.dataset_json import DatasetJson, load_dataset_json
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.fold_folder import LATEST, FoldFolder
from pirl_pipeline.networks.factory import canonical
from pirl_pipeline.paths import find_dataset_name, model_folder, preprocessed_root
from pirl_pipeline.splits import load_or_create_splits
from pirl_pipeline.tasks import PRETRAIN
from pirl_pipeline.trainer_config import ABLATIONS, RESUME_SAFE, TRAINING_TASKS, TrainerConfig
from pirl_pipeline.training import distributed
from pirl_pipeline.training.base_trainer import RunContext
from pirl_pipeline.training.registry import TRAINERS, build_trainer, resolve_trainer
from plans.plans_manager import PLANS_FILE, Plans, check_matches_dataset

log = logging.getLogger("pirl")
seed = checked(int, "a whole number in [0, 2**32)", lambda v: 0 <= v < 2**32)  # numpy's seed range


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pirl_train",
        description="Train one fold. Pre-training uses all cases (fold 'all') by default. Multi-GPU: "
                    "torchrun --nproc_per_node N $(which pirl_train) ...",
        epilog="trainers: " + "; ".join(f"{n} ({s.task}: {s.summary})" for n, s in TRAINERS.items()))
    p.add_argument("dataset", help="dataset id or name, e.g. 501")
    p.add_argument("configuration", help="plans configuration, e.g. 3d_fullres")
    p.add_argument("task", choices=TRAINING_TASKS)
    p.add_argument("-f", dest="fold", default=None, help="fold index or 'all' (default: 0; pretrain: all)")
    p.add_argument("-tr", dest="trainer", default=None, help="trainer name (default: the task's PIRL trainer)")
    p.add_argument("--pretrained", type=Path, default=None,
                   help="initial weights: a pirl checkpoint (any channel set and patch size: the stem, prior O and "
                        "output head are adapted, and logged) or a plain MONAI SwinUNETR state dict")
    p.add_argument("-device", default=None, choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--c", dest="resume", action="store_true",
                   help="continue from checkpoint_latest.pth with the run's saved configuration (flags may change "
                        "only " + ", ".join(RESUME_SAFE) + ")")
    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--iters", type=positive_int, dest="iters_per_epoch", help="training iterations per epoch")
    p.add_argument("--val-iters", type=non_negative_int, dest="val_iters", help="validation batches per epoch")
    p.add_argument("--lr", type=positive_float)
    p.add_argument("--batch-size", type=positive_int, dest="batch_size")
    p.add_argument("--patch-size", type=patch_side, nargs=3, dest="patch_size", metavar=("X", "Y", "Z"))
    p.add_argument("--feature-size", type=feature_size, dest="feature_size")
    p.add_argument("--window-size", type=positive_int, dest="window_size",
                   help="Swin attention window in tokens (default: the plans' 7; fine-tuning: the pre-trained one's)")
    p.add_argument("--seed", type=seed)
    p.add_argument("-npa", type=non_negative_int, dest="num_workers",
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


FLAGS = {"epochs": "--epochs", "iters_per_epoch": "--iters", "val_iters": "--val-iters", "lr": "--lr",
         "batch_size": "--batch-size", "patch_size": "--patch-size", "feature_size": "--feature-size",
         "window_size": "--window-size", "seed": "--seed",
         "num_workers": "-npa", "disabled": "--disable", "save_probabilities": "--npz", "amp": "--fp32",
         "grad_checkpoint": "--grad-checkpoint", "compile": "--compile", "pretrained": "--pretrained"}


def flag_overrides(args: argparse.Namespace) -> dict:
    """The TrainerConfig fields the command line sets explicitly (``--set`` aside)."""
    overrides = {k: getattr(args, k) for k in ("epochs", "iters_per_epoch", "val_iters", "lr", "batch_size",
                                               "patch_size", "feature_size", "window_size", "seed", "num_workers")
                 if getattr(args, k) is not None}
    if args.disable:
        overrides["disabled"] = list(args.disable)
    if args.save_probabilities:
        overrides["save_probabilities"] = True
    if args.fp32:
        overrides["amp"] = False
    for flag in ("grad_checkpoint", "compile"):
        if getattr(args, flag):
            overrides[flag] = True
    if args.pretrained is not None:
        overrides["pretrained"] = str(Path(args.pretrained).resolve())
    return overrides


def make_config(args: argparse.Namespace, pretrained: PretrainedWeights | None) -> TrainerConfig:
    """A new run's configuration: defaults, the backbone size of ``pretrained``, then the flags and ``--set``."""
    overrides = flag_overrides(args)
    if pretrained is not None:  # the backbone's size comes from the pre-trained network by default
        overrides.setdefault("feature_size", pretrained.feature_size)
        if (pretrained.network_kwargs or {}).get("window_size") is not None:
            overrides.setdefault("window_size", int(pretrained.network_kwargs["window_size"]))
        if pretrained.patch_size is not None:
            overrides.setdefault("patch_size", pretrained.patch_size)
    config = TrainerConfig.from_dict({**TrainerConfig(task=args.task).to_dict(), **overrides})
    return config.with_overrides(args.set) if args.set else config


def resumed_config(args: argparse.Namespace, saved: TrainerConfig, source: Path) -> TrainerConfig:
    """The run's saved configuration; flags that would change it are an error, the ``RESUME_SAFE`` ones a
    logged override."""
    config = TrainerConfig.from_dict({**saved.to_dict(), **flag_overrides(args)})
    config = config.with_overrides(args.set) if args.set else config
    changes = saved.changes(config)
    words = {k: f"{FLAGS.get(k, '--set ' + k)} {new}" for k, _, new in changes}
    refused = [f"{words[k]} (the run has {old})" for k, old, _ in changes if k not in RESUME_SAFE]
    if refused:
        raise PirlInputError(f"{source}: --c continues the run with its saved configuration; " + "; ".join(refused)
                             + f" would change it (a resumed run may change only {', '.join(RESUME_SAFE)}): drop "
                               "the flag, or start a new run without --c")
    for key, old, new in changes:
        log.info("--c: %s overrides the run's %s", words[key], old)
    return config


def select_run(args: argparse.Namespace,
               fold: FoldFolder) -> tuple[TrainerConfig, PretrainedWeights | None, dict | None]:
    """(configuration, pretrained weights to start from, checkpoint state to resume) of this invocation."""
    latest = fold.checkpoint(LATEST)
    if args.resume and latest.is_file():
        state = load_checkpoint(latest)
        return resumed_config(args, TrainerConfig.from_dict(state["config"]), latest), None, state
    if args.resume and (saved := fold.read_config()) is not None:
        config = resumed_config(args, saved, fold.config)
        log.warning("--c: no checkpoint in %s yet; starting the run again from its saved configuration", fold.path)
        return config, load_pretrained(config.pretrained) if config.pretrained else None, None
    if args.resume:
        log.warning("--c: nothing to continue in %s, starting from scratch", fold.path)
    elif latest.is_file():
        log.warning("%s exists; training again from scratch (use --c to continue)", latest)
    pretrained = load_pretrained(args.pretrained) if args.pretrained else None
    return make_config(args, pretrained), pretrained, None


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
    check_matches_dataset(plans, dataset_json, folder / PLANS_FILE)
    trainer_name = resolve_trainer(args.task, args.trainer)
    fold = args.fold if args.fold is not None else ("all" if args.task == PRETRAIN else "0")
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
    output = FoldFolder(model_folder(name, trainer_name, plans.plans_name, args.configuration), fold)
    info = distributed.init_distributed("cuda" if args.device == "cuda" or
                                        (args.device is None and torch.cuda.is_available()) else "cpu")
    try:
        lock_fold(output.path, info)  # before select_run: a refused run reads no checkpoint
        config, pretrained, state = select_run(args, output)
        config.trainer = trainer_name
        ctx = RunContext(plans, args.configuration, dataset_json, data_folder, output, train_cases, val_cases,
                         select_device(args.device, info), info)
        trainer = build_trainer(trainer_name, ctx, config, pretrained, state["network_kwargs"] if state else None)
        if state is not None:
            check_resumable(trainer.network_kwargs(), state["network_kwargs"], output.checkpoint(LATEST))
            trainer.resume(output.checkpoint(LATEST))
        trainer.run()
        if info.is_main:
            log.info("done: %s", output.path)
    finally:
        distributed.cleanup(info)


def lock_fold(output: Path, info: distributed.DistInfo) -> None:
    """One run per fold folder: rank 0 takes the lock for all ranks, and its refusal is every rank's
    PirlInputError (under DDP the outcome is shared, so no rank goes on into the process group alone)."""
    error: Exception | None = None
    if info.is_main:
        try:
            run_lock.acquire(output)
        except Exception as err:  # noqa: BLE001 - shared with the other ranks, then raised as it is
            error = err
    refusal = distributed.gather(None if error is None else str(error), info)[0]  # rank 0's outcome
    if error is not None:
        raise error
    if refusal is not None:
        raise PirlInputError(refusal)


def check_resumable(built: dict, saved: dict, checkpoint: Path) -> None:
    """A PirlInputError naming ``checkpoint`` when the network the plans build now is not the saved one; both
    are compared by ``factory.canonical`` (a run saved before a network argument existed had its default)."""
    built, saved = canonical(built), canonical(saved)
    if built != saved:
        differs = [k for k in {**saved, **built} if saved.get(k) != built.get(k)]
        raise PirlInputError(f"{checkpoint}: its network differs from the one the plans build now "
                             f"({', '.join(differs)}); were the plans edited?")


main = command(build_parser, run)


if __name__ == "__main__":
    raise SystemExit(main())
