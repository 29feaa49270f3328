"""``pirl_evaluate``: score a folder of predictions against a folder of references (seg or translate)."""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from pirl_pipeline.cli.common import cli_entry
from pirl_pipeline.evaluation.evaluate import (
    check_folder,
    check_output,
    mean_table,
    resolve_dataset_json,
    write_summary,
)
from pirl_pipeline.evaluation.segmentation import evaluate_segmentation_folder
from pirl_pipeline.evaluation.translation import evaluate_translation_folder

log = logging.getLogger("pirl")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pirl_evaluate",
        description="Evaluate predictions against references. seg: Dice/TPR/TNR/FNR/FPR per label and per "
                    "region (CASE.nii.gz label maps); translate: PSNR/NMSE/SSIM per synthesised channel "
                    "(CASE_XXXX.nii.gz) inside the mask of the reference images. Writes summary.json "
                    "(per case, mean, std, conventions) and summary.csv (per-case rows).")
    p.add_argument("-ref", required=True, type=Path, help="reference folder (labelsTs for seg, imagesTs for "
                                                          "translate)")
    p.add_argument("-pred", required=True, type=Path, help="prediction folder (output of pirl_predict)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-d", metavar="DATASET", help="dataset id or name in $PIRL_raw (for its dataset.json)")
    src.add_argument("-dj", type=Path, metavar="DATASET_JSON", help="path to a dataset.json (or its folder)")
    p.add_argument("-t", required=True, choices=["seg", "translate"], help="task")
    p.add_argument("-o", type=Path, default=None,
                   help="summary .json path (default PRED/summary.json; summary.csv is written beside it)")
    p.add_argument("-np", type=int, default=2, dest="num_processes", help="worker processes (default 2)")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    dj = resolve_dataset_json(args.d if args.d is not None else args.dj)
    ref_dir, pred_dir = check_folder(args.ref, "reference"), check_folder(args.pred, "prediction")
    output = check_output(args.o, ref_dir, pred_dir)
    evaluate = evaluate_segmentation_folder if args.t == "seg" else evaluate_translation_folder
    table = evaluate(ref_dir, pred_dir, dj, args.num_processes)
    info = {"task": args.t, "reference": str(ref_dir.resolve()), "prediction": str(pred_dir.resolve()),
            "dataset": str(args.d if args.d is not None else args.dj)}
    write_summary(table, output, info)
    if len(table.columns):
        log.info("mean over cases:\n%s", mean_table(table).to_string(float_format="%.4f"))
    log.info("%d cases evaluated in %.1f s -> %s (+ %s)", len(table), time.perf_counter() - start, output,
             output.with_suffix(".csv").name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
