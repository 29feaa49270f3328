"""``pirl_evaluate``: score a folder of predictions against a folder of references (seg or translate)."""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from pirl_pipeline.cli.common import cli_entry
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.evaluation.evaluate import (
    check_folder,
    check_output,
    mean_table,
    resolve_dataset_json,
    write_summary,
)
from pirl_pipeline.evaluation.metrics import EMPTY_REFERENCE, NSD_TOLERANCE_MM
from pirl_pipeline.evaluation.segmentation import SegmentationOptions, evaluate_segmentation_folder
from pirl_pipeline.evaluation.translation import evaluate_translation_folder
from pirl_pipeline.tasks import TASKS, get_task

log = logging.getLogger("pirl")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pirl_evaluate",
        description="Evaluate predictions against references. seg: Dice/TPR/TNR/FNR/FPR, case-level "
                    "CaseTPR/CaseTNR, HD95/NSD (mm) and BraTS-2023 lesion-wise LesionDice/LesionHD95 per label "
                    "and per region (CASE.nii.gz label maps); translate: PSNR/NMSE/SSIM on per-volume "
                    "percentile-scaled intensities plus PSNR_raw/NMSE_raw/SSIM_raw on the written ones, per "
                    "synthesised channel (CASE_XXXX.nii.gz) inside the mask of the reference images. Writes "
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
    p.add_argument("-np", type=int, default=2, dest="num_processes", help="worker processes (default 2)")
    seg = p.add_argument_group("seg only")
    seg.add_argument("--no_distance_metrics", action="store_true",
                     help="skip HD95, NSD and the lesion-wise metrics (about 1-3 s of a 240x240x155 case)")
    seg.add_argument("--empty_reference", choices=EMPTY_REFERENCE, default=None,
                     help="a target absent from the reference: one_if_both_empty (Dice 1 / HD95 0 when the "
                          "prediction is empty too, BraTS) or exclude (NaN, left out of the means; see CaseTNR). "
                          "Default: exclude for datasets with a PET channel, else one_if_both_empty")
    seg.add_argument("--nsd_tolerance_mm", type=float, default=NSD_TOLERANCE_MM,
                     help=f"NSD (surface Dice) tolerance in mm (default {NSD_TOLERANCE_MM:g})")
    return p


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
        try:
            options = SegmentationOptions(distance_metrics=not args.no_distance_metrics,
                                          empty_reference=args.empty_reference,
                                          nsd_tolerance_mm=args.nsd_tolerance_mm).resolved(dj)
        except ValueError as err:
            raise PirlInputError(f"--nsd_tolerance_mm: {err}") from None
        table = evaluate_segmentation_folder(ref_dir, pred_dir, dj, args.num_processes, options)
        info["segmentation_options"] = options.to_dict()
    else:
        table = evaluate_translation_folder(ref_dir, pred_dir, dj, args.num_processes)
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
