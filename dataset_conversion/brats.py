"""Convert BraTS folders (2018-2021 and 2023+ naming, mixed freely) into one pirl raw dataset.

Usage: ``pirl_convert_brats -i SRC -d 501 [-n BraTS]``. Every ``*.nii[.gz]`` file below SRC (recursively,
symlinks followed) whose name ends in a BraTS modality suffix is grouped into cases:

- 2018-2021 naming: ``CASE_t1 CASE_t1ce CASE_t2 CASE_flair [CASE_seg]``, labels {0, 1 NCR, 2 ED, 4 ET};
- 2023+ naming: ``CASE-t1n CASE-t1c CASE-t2w CASE-t2f [CASE-seg]``, labels {0, 1 NCR, 2 ED, 3 ET}.

The suffix decides the naming ('_' or '-' before it are both accepted); one case may not mix namings.

Output: channels 0 T1, 1 T1ce, 2 T2, 3 FLAIR; labels in the BraTS-2023 convention (2018-2021 value 4
becomes 3) with nnU-Net regions (whole tumour, tumour core, enhancing tumour). Images keep their values
and geometry (float64 is stored as float32). Cases without a seg file go to imagesTs, or, when no case has
one, all cases go to imagesTr as an image-only dataset (see ``dataset_conversion.common``).
Label values are converted, not reinterpreted: AURORA-MET ``_seg`` files (1 metastasis, 2 oedema) are read
as 1 NCR, 2 ED like any 2018-2021 file.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
from pathlib import Path

from dataset_conversion.common import (
    RawDatasetWriter,
    SourceCase,
    add_output_arguments,
    write_raw_dataset,
)
from pirl_pipeline.cli.common import cli_entry
from pirl_pipeline.errors import PirlInputError

log = logging.getLogger(__name__)

CHANNEL_NAMES = ("T1", "T1ce", "T2", "FLAIR")
BRATS_LABELS: dict[str, int | list[int]] = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [1, 3],
                                            "enhancing tumor": 3}
REGIONS_CLASS_ORDER = [2, 1, 3]
LABEL_NAMES = {"1": "NCR", "2": "ED", "3": "ET"}
# naming -> (channel suffixes in output channel order, source label value -> pirl value)
NAMINGS: dict[str, tuple[tuple[str, ...], dict[int, int]]] = {
    "2018-2021": (("t1", "t1ce", "t2", "flair"), {0: 0, 1: 1, 2: 2, 4: 3}),
    "2023": (("t1n", "t1c", "t2w", "t2f"), {0: 0, 1: 1, 2: 2, 3: 3}),
}
_SUFFIXES = "|".join(sorted({s for channels, _ in NAMINGS.values() for s in channels} | {"seg"}, key=len,
                            reverse=True))
_FILE = re.compile(rf"^(?P<case>.+?)(?P<sep>[_-])(?P<suffix>{_SUFFIXES})\.nii(\.gz)?$")


def brats_dataset_json_extra() -> dict:
    """The informational keys every BraTS-convention dataset.json of pirl carries."""
    return {"label_names": LABEL_NAMES}


def _naming_of(suffix: str) -> str | None:
    return next((name for name, (channels, _) in NAMINGS.items() if suffix in channels), None)


def find_cases(source: Path) -> list[SourceCase]:
    """Group the BraTS files below ``source`` into cases (sorted by name); PirlInputError on problems."""
    if not source.is_dir():
        raise PirlInputError(f"{source}: source folder not found")
    groups: dict[tuple[Path, str], dict[str, Path]] = {}
    for folder, _, names in sorted(os.walk(source, followlinks=True)):
        for name in sorted(names):
            match = _FILE.match(name)
            if match:
                files = groups.setdefault((Path(folder), match["case"]), {})
                if match["suffix"] in files:
                    raise PirlInputError(f"{Path(folder) / name}: second {match['suffix']} file of case "
                                         f"{match['case']} (also {files[match['suffix']].name})")
                files[match["suffix"]] = Path(folder) / name
    if not groups:
        raise PirlInputError(f"{source}: no BraTS files found (expected CASE_t1.nii.gz ... CASE_seg.nii.gz "
                             "or CASE-t1n.nii.gz ... CASE-seg.nii.gz)")
    cases = [_make_case(folder, case, files) for (folder, case), files in groups.items()]
    return sorted(cases, key=lambda c: c.name)


def _make_case(folder: Path, case: str, files: dict[str, Path]) -> SourceCase:
    namings = {_naming_of(s) for s in files} - {None}
    if len(namings) != 1:
        raise PirlInputError(f"{folder / case}: " + ("mixes BraTS 2018-2021 and 2023 file names" if namings
                                                      else "has a seg file but no image"))
    naming = namings.pop()
    channels, label_map = NAMINGS[naming]
    missing = [s for s in channels if s not in files]
    if missing:
        example = next(iter(files.values())).name
        separator = example[len(case)]
        ending = ".nii.gz" if example.endswith(".gz") else ".nii"
        raise PirlInputError(f"{folder / (case + separator + missing[0] + ending)}: missing "
                             f"({naming} naming; case {case} lacks {', '.join(missing)})")
    return SourceCase(case, tuple(files[s] for s in channels), files.get("seg"),
                      label_map=label_map)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pirl_convert_brats", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("-i", "--input", type=Path, required=True, help="folder holding the BraTS cases")
    add_output_arguments(parser, default_name="BraTS")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    writer = RawDatasetWriter(args.dataset_id, args.name, CHANNEL_NAMES, BRATS_LABELS, source=args.input,
                              root=args.output_root, overwrite=args.overwrite,
                              regions_class_order=REGIONS_CLASS_ORDER, extra=brats_dataset_json_extra())
    cases = find_cases(args.input)
    log.info("found %d BraTS case(s) in %s (%d with seg)", len(cases), args.input,
             sum(c.label is not None for c in cases))
    write_raw_dataset(writer, cases)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
