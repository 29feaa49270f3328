"""``pirl_report``: figures and a markdown report of everything a dataset's results folder holds."""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from pirl_pipeline.cli.common import cli_entry
from pirl_pipeline.report.build import ReportOptions, build_report

log = logging.getLogger("pirl")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pirl_report",
        description="Write $PIRL_results/DatasetXXX_Name/report/: overview.png (a held-out case: inputs, synthesised vs "
                    "reference with difference maps, segmentations on FLAIR), training_curves.png (every loss "
                    "term and validation metric per epoch, one row per trainer/fold), missing_modalities.png "
                    "(Dice per modality subset), translation_matrix.png (source -> target PSNR/SSIM) and "
                    "report.md with the metric tables. Whatever is missing is listed in report.md.",
        epilog="Without --pred-dir-seg / --pred-dir-translate, every folder under $PIRL_results/DatasetXXX_Name/"
               "predictions/ that pirl_evaluate scored is reported; its summary.json gives the task and the metric "
               "tables. A translation folder named ..._<modality> marks that modality as the input.")
    p.add_argument("-d", dest="dataset", required=True, help="dataset id or name, e.g. 500")
    p.add_argument("-o", dest="output", type=Path, help="report folder (default: $PIRL_results/DatasetXXX_Name/report)")
    p.add_argument("--case", help="held-out case for overview.png (default: the case most prediction folders "
                                  "cover, first by name)")
    p.add_argument("--images", type=Path, help="input images of the held-out cases (default: $PIRL_raw/DatasetXXX_Name/"
                                               "imagesTs, else imagesTr)")
    p.add_argument("--labels", type=Path, help="reference labels (default: $PIRL_raw/DatasetXXX_Name/labelsTs, or "
                                               "labelsTr with imagesTr)")
    p.add_argument("--pred-dir-seg", dest="seg_dirs", type=Path, nargs="+", metavar="DIR",
                   help="segmentation prediction folder(s) (default: the evaluated folders under predictions/)")
    p.add_argument("--pred-dir-translate", dest="translate_dirs", type=Path, nargs="+", metavar="DIR",
                   help="translation prediction folder(s) (default: the evaluated folders under predictions/); "
                        "a name ending in _<modality> marks that modality as the input")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = "pirl_report " + " ".join(shlex.quote(str(a)) for a in (sys.argv[1:] if argv is None else argv))
    result = build_report(ReportOptions(args.dataset, args.output, args.case, args.images, args.labels,
                                        args.seg_dirs, args.translate_dirs, command))
    log.info("wrote %s: %s", result.folder, ", ".join(result.written))
    if result.missing:
        log.info("%d item(s) missing or skipped (listed in report.md)", len(result.missing))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
