"""``pirl_predict``: segment or translate every case of a folder, from whatever channels each case has."""
from __future__ import annotations

import argparse
import atexit
import gc
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from tqdm import tqdm

from pirl_pipeline import run_lock
from pirl_pipeline.cli.common import cli_entry, positive_int
from pirl_pipeline.data.dataset_json import check_input_channels, group_channel_files
from pirl_pipeline.data.image_io import data_problem
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.file_io import remove_stale
from pirl_pipeline.fold_folder import FINAL
from pirl_pipeline.inference.ensembling import TrainerEnsemble, load_predictor
from pirl_pipeline.inference.export import output_paths
from pirl_pipeline.inference.postprocessing import Postprocessing
from pirl_pipeline.inference.predictor import PIRLPredictor
from pirl_pipeline.paths import check_output_folder, find_dataset_name, model_folder, results_root
from pirl_pipeline.tasks import TASKS, get_task

log = logging.getLogger("pirl")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pirl_predict",
        description="Predict every case of INPUT_DIR (CASE_XXXX.nii.gz; a case may lack channels: the "
                    "model's missing-modality path is used). Outputs lie on the input's grid.")
    p.add_argument("-i", dest="input", type=Path, required=True, help="input folder (raw naming)")
    p.add_argument("-o", dest="output", type=Path, required=True, help="output folder (never the input)")
    p.add_argument("-d", dest="dataset", help="dataset id or name (with -c, -tr); or give -m")
    p.add_argument("-c", dest="configuration", default="3d_fullres")
    p.add_argument("-t", dest="task", choices=list(TASKS), help="must match the model (default: its task)")
    p.add_argument("-tr", dest="trainers", nargs="+", metavar="TRAINER",
                   help="trainer name (default: the task's PIRL trainer); several: their ensemble (averaged "
                        "probabilities or images, then the post-processing all their folds kept)")
    p.add_argument("-m", dest="model_folders", type=Path, nargs="+", metavar="MODEL_FOLDER",
                   help="model folder TRAINER__PIRLPlans__CONFIG instead of -d/-c/-tr; several: their ensemble")
    p.add_argument("-f", dest="folds", nargs="+", help="folds to ensemble (default: all trained folds)")
    p.add_argument("-chk", dest="checkpoint", default=FINAL)
    p.add_argument("-device", default=None, choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--fp32", action="store_true", help="no autocast on CUDA (default: bf16 where supported, as in "
                                                        "training; the CPU always runs fp32)")
    p.add_argument("--sw_batch_size", type=int, default=None,
                   help="windows per network call (default: 1 on the CPU, from the free memory on CUDA)")
    p.add_argument("--disable_fused_attention", action="store_true",
                   help="MONAI's explicit Swin window attention instead of scaled_dot_product_attention")
    p.add_argument("--step_size", type=float, default=0.5, help="window step as a fraction of the patch (0.5)")
    p.add_argument("--disable_tta", action="store_true", help="no mirroring test-time augmentation (8x faster)")
    p.add_argument("--disable_postprocessing", action="store_true",
                   help="seg: skip the post-processing the folds chose on their validation cases "
                        "(fold_F/postprocessing.json: keep the largest foreground component where that helped)")
    p.add_argument("--save_probabilities", action="store_true", help="also write CASE.npz (seg; never "
                                                                         "post-processed)")
    p.add_argument("--channels", help="use only these channels, e.g. 0,2 (others present are ignored)")
    p.add_argument("--missing_only", action="store_true",
                   help="translate: write only the channels a case lacks in INPUT_DIR, as CASE_XXXX files, so the "
                        "output folder plus the input is a complete case (e.g. to segment it next)")
    p.add_argument("-np", dest="num_processes", type=positive_int, default=2, help="reading/writing threads")
    p.add_argument("--continue", dest="resume", action="store_true",
                   help="skip cases whose outputs exist and read back complete")
    return p


def model_folders(folders: list[Path] | None, dataset: str | None, task: str | None, configuration: str,
                  trainers: list[str] | None) -> list[Path]:
    """The model folder(s) to predict with: ``folders`` (``-m``) as given, else one per trainer (``-tr``;
    default: the task's) of ``dataset``/``task``/``configuration``. Shared by the commands that load models."""
    if folders:
        return list(folders)
    if not dataset or not task:
        raise PirlInputError("give -m MODEL_FOLDER, or -d DATASET with -t TASK (and optionally -c, -tr)")
    name = find_dataset_name(dataset, results_root())
    trainers = trainers or [get_task(task).default_trainer]
    if len(set(trainers)) != len(trainers):
        raise PirlInputError(f"-tr {' '.join(trainers)}: a trainer is named twice")
    return [model_folder(name, trainer, configuration=configuration) for trainer in trainers]


def parse_channels(text: str | None) -> set[int] | None:
    """``--channels 0,2`` -> {0, 2}; anything but comma-separated channel numbers is an error."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() for p in parts):
        raise PirlInputError(f"--channels {text}: expected comma-separated channel numbers, e.g. 0,2")
    return {int(p) for p in parts}


def is_complete(paths: list[Path]) -> bool:
    """Every output exists and reads back complete (a stub an older version left on a full disk does not)."""
    for path in paths:
        if not path.is_file():
            return False
        if problem := data_problem(path):
            log.warning("%s: %s; predicting it again", path, problem)
            return False
    return True


def describe(postprocessing: Postprocessing | None, disabled: bool) -> str:
    """One line on what post-processing the predictions get."""
    if disabled:
        return "off (--disable_postprocessing)"
    if postprocessing is None:
        return "none (a fold has no postprocessing.json: trained before pirl chose post-processing)"
    if not postprocessing.keep_largest:
        return "none (no step raised the validation Dice)"
    return "; ".join(f"keep the largest component of labels {labels}" for labels in postprocessing.keep_largest)


def run(args: argparse.Namespace) -> None:
    check_output_folder(args.input, args.output)
    keep = parse_channels(args.channels)  # a typo fails before the model loads
    folds = None if args.folds in (None, ["all"]) else args.folds
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise PirlInputError("-device cuda: no CUDA device is available")
    folders = model_folders(args.model_folders, args.dataset, args.task, args.configuration, args.trainers)
    predictor = load_predictor(folders, folds, checkpoint=args.checkpoint, device=device,
                               fused_attention=not args.disable_fused_attention,
                               step_size=args.step_size, mirror=not args.disable_tta,
                               save_probabilities=args.save_probabilities,
                               precision="fp32" if args.fp32 else "auto",
                               sw_batch_size=args.sw_batch_size, task=args.task,
                               postprocess=not args.disable_postprocessing)
    if isinstance(predictor, TrainerEnsemble):
        log.info("ensemble of %d trainers (averaged %s): %s", len(folders),
                 "probabilities" if predictor.task.predicts_labels else "images",
                 "; ".join(f"{f.name} folds {m.model.folds}" for f, m in zip(folders, predictor.members)))
    dj = predictor.model.dataset_json
    cases, targets = select_cases(args, predictor, keep)
    outputs = {k: output_paths(args.output, k, dj.file_ending, targets[k]) for k in cases}
    todo = [k for k in cases if not (args.resume and is_complete(outputs[k]))]
    log.info("%d case(s), %d to predict (%s, folds %s, TTA %s)", len(cases), len(todo), predictor.task.name,
             predictor.model.folds, "on" if predictor.mirror else "off")
    if predictor.task.predicts_labels:
        log.info("post-processing: %s", describe(predictor.postprocessing, args.disable_postprocessing))
    run_lock.acquire(args.output)  # one run per output folder; creates it (removed again if the run writes nothing)
    remove_stale(args.output)
    with ThreadPoolExecutor(args.num_processes) as pool:  # reading ahead and writing behind
        queue = iter(todo)
        reads: deque = deque()

        def read_next() -> None:
            case = next(queue, None)
            if case is not None:
                reads.append((case, pool.submit(predictor.read_case, case, cases[case])))

        for _ in range(args.num_processes):
            read_next()
        exports = []
        with tqdm(total=len(todo), desc="predict") as bar:
            while reads:
                case, future = reads.popleft()
                images, geometry = future.result()
                del future  # the future holds the images too
                read_next()
                log.info("%s: channels %s", case, sorted(images))
                result = predictor.predict_case(images, geometry)
                del images
                exports.append(pool.submit(predictor.export, case, result, geometry, args.output, dj.file_ending,
                                           targets[case]))
                for future in exports:  # a failed write (a full disk) stops the run now, not after every case
                    if future.done():
                        future.result()
                bar.update()
        for future in exports:
            future.result()
    log.info("wrote %s", args.output)


def select_cases(args: argparse.Namespace, predictor: PIRLPredictor | TrainerEnsemble, keep: set[int] | None
                 ) -> tuple[dict[str, dict[int, Path]], dict[str, list[int] | None]]:
    """``({case: {channel: input file}}, {case: image channels to write, None for a label map})`` of the cases
    to predict: ``--channels`` picks the inputs; ``--missing_only`` the channels absent from INPUT_DIR (a
    case that has every channel is left out: nothing to write)."""
    dj = predictor.model.dataset_json
    check_input_channels(args.input, dj)
    cases = found = group_channel_files(args.input, dj)
    if keep is not None:
        unknown = sorted(keep - set(range(dj.num_channels)))
        if unknown:
            raise PirlInputError(f"--channels {args.channels}: channel(s) {unknown} do not exist (the model has "
                                 f"0..{dj.num_channels - 1}: {', '.join(dj.channel_names.values())})")
        cases = {k: {c: p for c, p in v.items() if c in keep} for k, v in cases.items()}
        cases = {k: v for k, v in cases.items() if v}
        if not cases:
            raise PirlInputError(f"{args.input}: no case has any of channels {sorted(keep)}")
    if predictor.task.predicts_labels:
        if args.missing_only:
            raise PirlInputError("--missing_only: the model is a seg model; completing cases needs -t translate")
        return cases, dict.fromkeys(cases)
    channels = range(dj.num_channels)
    targets = {k: [c for c in channels if c not in found[k]] if args.missing_only else list(channels) for k in cases}
    if complete := [k for k in cases if not targets[k]]:
        log.info("--missing_only: %d case(s) have every channel, nothing to write: %s", len(complete),
                 ", ".join(complete))
    return {k: v for k, v in cases.items() if targets[k]}, targets


@cli_entry
def main(argv: list[str] | None = None) -> int:
    atexit.unregister(gc.freeze)  # once, however often main runs in one process
    atexit.register(gc.freeze)  # exit: skip the final collection over torch's and MONAI's ~10^6 objects (1-2 s)
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
