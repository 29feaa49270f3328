"""``pirl_evaluate``: score a folder of predictions against a folder of references (seg or translate)."""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from pirl_pipeline.cli.common import cli_entry, positive_int
from pirl_pipeline.data.dataset_json import DatasetJson
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.evaluation.evaluate import (
    check_folder,
    check_output,
    mean_table,
    resolve_dataset_json,
    write_summary,
)
from pirl_pipeline.evaluation.metrics import EMPTY_REFERENCE, NSD_TOLERANCE_MM
from pirl_pipeline.evaluation.segmentation import (
    SMALL_ET_CONVENTIONS,
    SMALL_ET_VOXELS,
    SegmentationOptions,
    evaluate_segmentation_folder,
)
from pirl_pipeline.evaluation.translation import BRASYN_CONVENTIONS, evaluate_translation_folder
from pirl_pipeline.tasks import TASKS, get_task

log = logging.getLogger("pirl")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pirl_evaluate",
        description="Evaluate predictions against references. seg: Dice/TPR/TNR/FNR/FPR, case-level "
                    "CaseTPR/CaseTNR, HD95/NSD (mm) and BraTS-2023 lesion-wise LesionDice/LesionHD95 per label "
                    "and per region (CASE.nii.gz label maps), optionally the RFNet/DeMoSeg small-ET post-processed ET "
                    "beside the raw one; translate: PSNR/NMSE/SSIM on per-volume "
                    "percentile-scaled intensities plus PSNR_raw/NMSE_raw/SSIM_raw on the written ones, per "
                    "synthesised channel (CASE_XXXX.nii.gz) inside the mask of the reference images, optionally "
                    "BraSyn's SSIM inside and outside the tumour (--brasyn). Writes "
                    "summary.json (per case, mean, std, conventions) and summary.csv (per-case rows).")
    p.add_argument("-ref", required=True, type=Path, help="reference folder (labelsTs for seg, imagesTs for "
                                                          "translate)")
    p.add_argument("-pred", required=True, type=Path, help="prediction folder (output of pirl_predict)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-d", metavar="DATASET", help="dataset id or name in $PIRL_raw (for its dataset.json)")
    src.add_argument("-dj", type=Path, metavar="DATASET_JSON", help="path to a dataset.json (or its folder)")
    p.add_argument("-t", required=True, choices=list(TASKS), help="task")
    p.add_argument("-o", type=Path, default=None,
                   help="summary .json path (default PRED/summary.json; summary.csv is written beside it)")
    p.add_argument("-np", type=positive_int, default=2, dest="num_processes", help="worker processes (default 2)")
    seg = p.add_argument_group("seg only")
    seg.add_argument("--no_distance_metrics", action="store_true",
                     help="skip HD95, NSD and the lesion-wise metrics (about 1-3 s of a 240x240x155 case)")
    seg.add_argument("--empty_reference", choices=EMPTY_REFERENCE, default=None,
                     help="a target absent from the reference: one_if_both_empty (Dice 1 / HD95 0 when the "
                          "prediction is empty too, BraTS) or exclude (NaN, left out of the means; see CaseTNR). "
                          "Default: exclude for datasets with a PET channel, else one_if_both_empty")
    seg.add_argument("--nsd_tolerance_mm", type=float, default=NSD_TOLERANCE_MM,
                     help=f"NSD (surface Dice) tolerance in mm (default {NSD_TOLERANCE_MM:g})")
    add_small_et_arguments(seg)
    tr = p.add_argument_group("translate only")
    tr.add_argument("--brasyn", type=Path, metavar="LABEL_FOLDER",
                    help="also score BraSyn-style: BraSyn_SSIM_tumor / BraSyn_SSIM_non_tumor, SSIM inside and outside "
                         "the tumour (label > 0 of LABEL_FOLDER/CASE.nii.gz, one per case) after BraSyn's "
                         "whole-volume 0.5/99.5 percentile scaling; beside the default scale-free metrics")
    return p


def add_small_et_arguments(parser: argparse._ActionsContainer) -> None:
    """``--small_et_voxels [N]`` / ``--small_et_mm3 V`` (also used by pirl_evaluate_missing)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--small_et_voxels", type=int, nargs="?", const=SMALL_ET_VOXELS, metavar="N",
                       help="RFNet/DeMoSeg post-processing: a predicted enhancing tumour of fewer than N voxels "
                            f"(default {SMALL_ET_VOXELS}) becomes necrosis (NCR); scored as 'ET (post-processed)' and "
                            "'enhancing tumor (post-processed)' beside the raw ET (BraTS label_names; default off)")
    group.add_argument("--small_et_mm3", type=float, metavar="V",
                       help="as --small_et_voxels with the threshold as a volume in mm^3")


def segmentation_options(args: argparse.Namespace, dj: DatasetJson, **kwargs) -> SegmentationOptions:
    """The SegmentationOptions of the command line, resolved for the dataset; a bad value: the flag's error."""
    try:
        return SegmentationOptions(small_et_voxels=args.small_et_voxels, small_et_mm3=args.small_et_mm3,
                                   **kwargs).resolved(dj)
    except ValueError as err:
        raise PirlInputError(f"--{str(err).split()[0].rstrip(':')}: {err}") from None


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    dj = resolve_dataset_json(args.d if args.d is not None else args.dj)
    ref_dir, pred_dir = check_folder(args.ref, "reference"), check_folder(args.pred, "prediction")
    output = check_output(args.o, ref_dir, pred_dir)
    info = {"task": args.t, "reference": str(ref_dir.resolve()), "prediction": str(pred_dir.resolve()),
            "dataset": str(args.d if args.d is not None else args.dj)}
    if get_task(args.t).predicts_labels:
        if args.brasyn is not None:
            raise PirlInputError("--brasyn: only with -t translate (it scores synthesised images)")
        options = segmentation_options(args, dj, distance_metrics=not args.no_distance_metrics,
                                       empty_reference=args.empty_reference, nsd_tolerance_mm=args.nsd_tolerance_mm)
        table = evaluate_segmentation_folder(ref_dir, pred_dir, dj, args.num_processes, options)
        info["segmentation_options"] = options.to_dict()
        if options.small_et:
            info["metric_conventions"] = SMALL_ET_CONVENTIONS
    else:
        if args.small_et_voxels is not None or args.small_et_mm3 is not None:
            raise PirlInputError("--small_et_voxels/--small_et_mm3: only with -t seg")
        table = evaluate_translation_folder(ref_dir, pred_dir, dj, args.num_processes, args.brasyn)
        if args.brasyn is not None:
            info["brasyn_labels"] = str(args.brasyn.resolve())
            info["metric_conventions"] = BRASYN_CONVENTIONS
        if table.attrs["not_scored"]:  # predicted channels without a reference (allow_missing_channels)
            info["not_scored"] = table.attrs["not_scored"]
    write_summary(table, output, info)
    if len(table.columns):
        log.info("mean over cases:\n%s", mean_table(table).to_string(float_format="%.4f"))
    log.info("%d cases evaluated in %.1f s -> %s (+ %s)", len(table), time.perf_counter() - start, output,
             output.with_suffix(".csv").name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
