"""``pirl_evaluate_missing``: Table-11 (segmentation, every modality subset) or Table-10 (translation,
every source -> target) matrices of a trained fold, predicted and scored on real images; for seg, with
``--complete_with``, also the "complete, then segment" route beside the model's missing-modality path."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pirl_pipeline.cli.common import DEVICE_HELP, command, positive_int, resolve_device
from pirl_pipeline.cli.evaluate import add_small_et_arguments, segmentation_options
from pirl_pipeline.cli.predict import model_folders
from pirl_pipeline.data.dataset_json import check_input_channels, group_channel_files
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.evaluation.missing_modalities import (
    segmentation_matrices,
    segmentation_table,
    translation_matrices,
    translation_table,
    write_results,
)
from pirl_pipeline.file_io import load_json
from pirl_pipeline.fold_folder import FINAL, FoldFolder
from pirl_pipeline.inference.predictor import PIRLPredictor
from pirl_pipeline.paths import find_dataset_name, preprocessed_root, raw_root
from pirl_pipeline.splits import check_splits
from pirl_pipeline.tasks import TASKS, TRANSLATE, get_task

log = logging.getLogger("pirl")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pirl_evaluate_missing",
        description="Predict the validation cases of a fold from every modality subset (seg: Dice, HD95, "
                    "sensitivity and specificity per subset) or every single source modality (translate: PSNR, "
                    "SSIM) and write each metric matrix as CSV + PNG heat map.")
    p.add_argument("-d", dest="dataset", required=True, help="dataset id or name")
    p.add_argument("-f", dest="fold", default="0", help="fold (its model and its validation cases)")
    p.add_argument("-t", dest="task", choices=list(TASKS), required=True)
    p.add_argument("-c", dest="configuration", default="3d_fullres")
    p.add_argument("-tr", dest="trainer", help="trainer name (default: the task's PIRL trainer)")
    p.add_argument("-chk", dest="checkpoint", default=FINAL)
    p.add_argument("-i", dest="images", type=Path, help="images folder (default: raw imagesTr, validation cases)")
    p.add_argument("-ref", dest="references", type=Path, help="label folder for seg (default: raw labelsTr)")
    p.add_argument("-o", dest="output", type=Path, help="output folder (default: inside the fold folder)")
    p.add_argument("--max_cases", type=positive_int, help="evaluate at most this many cases")
    p.add_argument("-device", default=None, choices=["cpu", "cuda"], help=DEVICE_HELP)
    p.add_argument("--step_size", type=float, default=0.5)
    p.add_argument("--disable_tta", action="store_true")
    p.add_argument("--complete_with", type=Path, metavar="TRANSLATE_MODEL_FOLDER",
                   help="seg: also synthesise each subset's missing channels with this translation model (same "
                        "fold) and segment the completed case; writes per_case.csv with a 'path' column "
                        "(direct / completed) and missing_modalities_<metric>_completed.csv beside each direct matrix")
    seg = p.add_argument_group("seg only")
    seg.add_argument("--no_distance_metrics", action="store_true",
                     help="skip HD95 (and NSD, lesion-wise) per subset: no missing_modalities_hd95 matrix")
    add_small_et_arguments(seg)
    return p


def select_cases(args: argparse.Namespace, predictor: PIRLPredictor) -> dict[str, dict[int, Path]]:
    dj = predictor.model.dataset_json
    name = find_dataset_name(args.dataset, raw_root())
    images = args.images or raw_root() / name / "imagesTr"
    if args.images is not None:
        check_input_channels(images, dj)
    cases = group_channel_files(images, dj)
    if args.images is None:  # the fold's validation cases, which its model never trained on
        splits_file = preprocessed_root() / name / "splits_final.json"
        if args.fold == "all" or not splits_file.is_file():
            raise PirlInputError(f"{splits_file}: no validation split for fold {args.fold}; pass -i (and -ref)")
        splits = check_splits(load_json(splits_file), sorted(cases), splits_file)
        if not 0 <= int(args.fold) < len(splits):
            raise PirlInputError(f"{splits_file}: no fold {args.fold} (it has folds 0-{len(splits) - 1})")
        val = splits[int(args.fold)]["val"]
        cases = {k: v for k, v in cases.items() if k in val}
    incomplete = [k for k, v in cases.items() if len(v) != predictor.num_modalities]
    if incomplete:
        raise PirlInputError(f"{images}: case(s) {', '.join(incomplete[:5])} lack channels; every subset needs all")
    names = sorted(cases)[: args.max_cases]
    if not names:
        raise PirlInputError(f"{images}: no cases to evaluate")
    return {k: cases[k] for k in names}


def run(args: argparse.Namespace) -> None:
    folder = model_folders(None, args.dataset, args.task, args.configuration, [args.trainer] if args.trainer else None)[0]
    task = get_task(args.task)
    if args.complete_with and not task.predicts_labels:
        raise PirlInputError("--complete_with: only with -t seg (it completes cases for the seg model)")
    small_et = args.small_et_voxels is not None or args.small_et_mm3 is not None
    if small_et and not task.predicts_labels:
        raise PirlInputError("--small_et_voxels/--small_et_mm3: only with -t seg")
    device = resolve_device(args.device)
    options = {"step_size": args.step_size, "mirror": not args.disable_tta}
    # the raw predictions: the fold's post-processing was chosen on these very validation cases
    predictor = PIRLPredictor.from_model_folder(folder, [args.fold], args.checkpoint, device, task=args.task,
                                                postprocess=False, **options)
    completer = None
    if args.complete_with:
        completer = PIRLPredictor.from_model_folder(args.complete_with, [args.fold], args.checkpoint, device,
                                                    task=TRANSLATE.name, **options)
        theirs, ours = completer.model.dataset_json.channel_names, predictor.model.dataset_json.channel_names
        if theirs != ours:
            raise PirlInputError(f"{args.complete_with}: channels {theirs} differ from the seg model's {ours}")
    cases = select_cases(args, predictor)
    name = find_dataset_name(args.dataset, raw_root())
    info = {"model": str(folder), "fold": args.fold, "cases": len(cases), "case_names": sorted(cases),
            "tta": not args.disable_tta, "step_size": args.step_size,
            "complete_with": str(args.complete_with) if completer else None}
    if task.predicts_labels:
        refs = args.references or raw_root() / name / "labelsTr"
        references = {k: refs / f"{k}{predictor.model.dataset_json.file_ending}" for k in cases}
        missing = [str(p) for p in references.values() if not p.is_file()]
        if missing:
            raise PirlInputError(f"{missing[0]}: reference label not found")
        seg_options = segmentation_options(args, predictor.model.dataset_json,
                                           distance_metrics=not args.no_distance_metrics)
        info["segmentation_options"] = seg_options.to_dict()
        table = segmentation_table(predictor, cases, references, completer, seg_options)
        if completer is None:
            matrices = segmentation_matrices(table)
        else:
            matrices = {**segmentation_matrices(table, "direct"), **segmentation_matrices(table, "completed")}
    else:
        table = translation_table(predictor, cases)
        matrices = translation_matrices(table)
    out = args.output or FoldFolder(folder, args.fold).subsets(task)
    write_results(table, matrices, out, info)
    for matrix_name, matrix in matrices.items():
        log.info("%s:\n%s", matrix_name, matrix.round(3).to_string())
    log.info("wrote %s", out)


main = command(build_parser, run)


if __name__ == "__main__":
    raise SystemExit(main())
