"""Convert BraTS-style folders (BraTS 2018-2021, 2023+, UPENN-GBM, GLISTR; mixed freely) into one raw dataset.

Usage: ``pirl_convert_brats -i SRC -d 501 [-n BraTS] [--no-labels]``. Every ``*.nii[.gz]`` file below SRC
(recursively, symlinks followed) whose name ends in a modality suffix of one of these namings is grouped
into cases (suffixes and ``.nii.gz`` match ignoring upper/lower case, '_' or '-' before the suffix):

- BraTS 2018-2021: ``CASE_t1 CASE_t1ce CASE_t2 CASE_flair [CASE_seg]``, labels {0, 1 NCR, 2 ED, 4 ET};
- BraTS 2023+: ``CASE-t1n CASE-t1c CASE-t2w CASE-t2f [CASE-seg]``, labels {0, 1 NCR, 2 ED, 3 ET};
- UPENN-GBM: ``CASE_T1 CASE_T1GD CASE_T2 CASE_FLAIR [CASE_SEG]``, labels as 2018-2021 (T1GD is T1ce);
- GLISTR (CBICA pre-processed): ``CASE_t1_sus_n3_r_strip_hist ... CASE_t1ce_sus_n3_strip_hist`` (the
  modality followed by ``_sus_n3[_r]_strip_hist``), no label.

The suffixes decide the naming; one case may not mix namings, and two files of one case with the same
suffix (``-t2w`` and ``-t2W``) are an error naming both.

Output: channels 0 T1, 1 T1ce, 2 T2, 3 FLAIR; labels in the BraTS-2023 convention (2018-2021 value 4
becomes 3) with nnU-Net regions (whole tumour, tumour core, enhancing tumour). Label maps stored as
integer-valued floats are accepted; other values are an error naming the file. Images keep their values
and geometry (float64 is stored as float32). Cases without a seg file go to imagesTs, or, when no case has
one, all cases go to imagesTr as an image-only dataset (see ``dataset_conversion.common``); ``--no-labels``
ignores every seg file and writes all cases to imagesTr (pre-training and translation need no labels).
Label values are converted, not reinterpreted: AURORA-MET ``_seg`` files (1 metastasis, 2 oedema) are read
as 1 NCR, 2 ED like any 2018-2021 file.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from dataset_conversion.common import (
    RawDatasetWriter,
    SourceCase,
    add_output_arguments,
    reachable,
    write_raw_dataset,
)
from pirl_pipeline.cli.common import cli_entry
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.file_io import os_reason

log = logging.getLogger(__name__)

CHANNEL_NAMES = ("T1", "T1ce", "T2", "FLAIR")
BRATS_LABELS: dict[str, int | list[int]] = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [1, 3],
                                            "enhancing tumor": 3}
REGIONS_CLASS_ORDER = [2, 1, 3]
LABEL_NAMES = {"1": "NCR", "2": "ED", "3": "ET"}
LABELS_2018 = {0: 0, 1: 1, 2: 2, 4: 3}


@dataclass(frozen=True)
class Naming:
    """One file-naming convention: modality suffixes (lower case) in output channel order, source label
    value -> pirl value, and whether the GLISTR pre-processing tail follows the suffix."""

    channels: tuple[str, ...]
    label_map: dict[int, int]
    glistr_tail: bool = False


NAMINGS: dict[str, Naming] = {
    "2018-2021": Naming(("t1", "t1ce", "t2", "flair"), LABELS_2018),
    "2023": Naming(("t1n", "t1c", "t2w", "t2f"), {0: 0, 1: 1, 2: 2, 3: 3}),
    "UPENN-GBM": Naming(("t1", "t1gd", "t2", "flair"), LABELS_2018),
    "GLISTR": Naming(("t1", "t1ce", "t2", "flair"), LABELS_2018, glistr_tail=True),
}
SEG = "seg"
_SUFFIXES = "|".join(sorted({s for n in NAMINGS.values() for s in n.channels} | {SEG}, key=len, reverse=True))
_FILE = re.compile(rf"^(?P<case>.+?)(?P<sep>[_-])(?P<suffix>{_SUFFIXES})(?P<tail>_sus_n3(?:_r)?_strip_hist)?"
                   r"(?P<ending>\.nii(?:\.gz)?)$", re.IGNORECASE)


def brats_dataset_json_extra() -> dict:
    """The informational keys every BraTS-convention dataset.json of pirl carries."""
    return {"label_names": LABEL_NAMES}


def find_cases(source: Path) -> list[SourceCase]:
    """Group the BraTS files below ``source`` into cases (sorted by name); PirlInputError on problems."""
    if not source.is_dir():
        raise PirlInputError(f"{source}: source folder not found")
    groups: dict[tuple[Path, str], dict[tuple[str, bool], Path]] = {}
    for folder, names in _walk(source):
        for name in names:
            match = _FILE.match(name)
            if match:
                files = groups.setdefault((Path(folder), match["case"]), {})
                key = (match["suffix"].lower(), bool(match["tail"]))
                if key in files:
                    raise PirlInputError(f"{Path(folder) / name}: second {key[0]} file of case {match['case']} "
                                         f"(also {files[key].name}; suffixes match ignoring upper/lower case, "
                                         "so keep only one)")
                files[key] = Path(folder) / name
    if not groups:
        raise PirlInputError(f"{source}: no BraTS files found (expected CASE_t1.nii.gz ... CASE_seg.nii.gz, "
                             "CASE-t1n.nii.gz ... CASE-seg.nii.gz, CASE_T1GD.nii.gz or "
                             "CASE_t1_sus_n3_r_strip_hist.nii.gz)")
    cases = [_make_case(folder, case, files) for (folder, case), files in groups.items()]
    return sorted(cases, key=lambda c: c.name)


def _walk(source: Path) -> list[tuple[str, list[str]]]:
    """(folder, sorted file names) of every folder below ``source``, links followed; a visible entry that cannot
    be followed or read, or a folder reached twice (a link loop), is an error naming it."""
    def fail(err: OSError) -> None:
        raise PirlInputError(f"{err.filename}: cannot be read ({os_reason(err)})")

    seen: dict[str, str] = {}
    found = []
    for folder, dirs, names in os.walk(source, onerror=fail, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            raise PirlInputError(f"{folder}: the folder {seen[real]} again (a link loop, or a second link to it)")
        seen[real] = folder
        for name in dirs + names:
            if not name.startswith("."):
                reachable(Path(folder) / name)
        found.append((folder, sorted(names)))
    return sorted(found)


def _namings_of(files: dict[tuple[str, bool], Path]) -> list[str]:
    """The namings holding every suffix found, in ``NAMINGS`` order (several when a channel is missing)."""
    channels = {suffix for suffix, _ in files if suffix != SEG}
    tails = {tail for _, tail in files}
    return [name for name, n in NAMINGS.items() if tails == {n.glistr_tail} and channels <= set(n.channels)]


def _make_case(folder: Path, case: str, files: dict[tuple[str, bool], Path]) -> SourceCase:
    if all(suffix == SEG for suffix, _ in files):
        raise PirlInputError(f"{folder / case}: has a seg file but no image")
    namings = _namings_of(files)
    if not namings:
        raise PirlInputError(f"{folder / case}: its files {', '.join(sorted(p.name for p in files.values()))} "
                             f"mix namings (one case uses one of: {', '.join(NAMINGS)})")
    by_suffix = {suffix: path for (suffix, _), path in files.items()}
    missing = {name: [s for s in NAMINGS[name].channels if s not in by_suffix] for name in namings}
    if all(missing.values()):
        example = _FILE.match(next(iter(files.values())).name)  # spell the missing files like their neighbours
        spell = str.upper if example["suffix"].isupper() else str.lower
        raise PirlInputError(" or ".join(
            f"{folder / (case + example['sep'] + spell(lacks[0]) + (example['tail'] or '') + example['ending'])}"
            f" ({name} naming)" for name, lacks in missing.items())
            + f": missing (case {case} lacks {' or '.join(', '.join(lacks) for lacks in missing.values())})")
    naming = next(name for name in namings if not missing[name])
    return SourceCase(case, tuple(by_suffix[s] for s in NAMINGS[naming].channels), by_suffix.get(SEG),
                      label_map=NAMINGS[naming].label_map)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pirl_convert_brats", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("-i", "--input", type=Path, required=True, help="folder holding the BraTS cases")
    add_output_arguments(parser, default_name="BraTS")
    parser.add_argument("--no-labels", dest="no_labels", action="store_true",
                        help="ignore every seg file: an image-only dataset of all cases (pre-training, translation)")
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
    write_raw_dataset(writer, cases, skip_labels=args.no_labels)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
