"""Convert the AutoPET-II layout (FDG PET/CT, whole body) into a pirl raw dataset.

Usage: ``pirl_convert_autopet -i SRC -d 502 [-n AutoPET] [--resample_to PET|CT]``. SRC holds
``PATIENT/STUDY/`` folders with ``SUV.nii.gz`` (PET in SUV units), ``CTres.nii.gz`` (CT resampled to the PET
grid) and ``SEG.nii.gz`` (lesion mask, PET grid); other files there (CT.nii.gz, PET.nii.gz) are ignored.
Output: channel 0 "PET" (SUV), channel 1 "CT" (CTres), labels {0 background, 1 lesion}. ``--resample_to``
reads the original-resolution ``CT.nii.gz`` instead of CTres and resamples by pirl's rules (``resample``,
recorded in ``conversion.json``): ``CT`` puts SUV and SEG on the CT grid, ``PET`` puts CT on the PET grid.
The case name is ``PATIENT_DATE`` when the study folder starts with a date (``08-12-2005-...``), else
``PATIENT_STUDY``, sanitised; a repeated name gets ``-2``, ``-3``. Studies without SEG go to imagesTs (all to
imagesTr when none has one).
"""
from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

from dataset_conversion.common import (
    RawDatasetWriter,
    SourceCase,
    add_output_arguments,
    case_folders,
    sanitise_case_name,
    write_raw_dataset,
)
from pirl_pipeline.cli.common import cli_entry
from pirl_pipeline.errors import PirlInputError

log = logging.getLogger(__name__)

CHANNELS = (("PET", "SUV.nii.gz"), ("CT", "CTres.nii.gz"))
ORIGINAL_CT = "CT.nii.gz"  # the CT channel's file with --resample_to
LABEL_FILE = "SEG.nii.gz"
LABELS: dict[str, int | list[int]] = {"background": 0, "lesion": 1}
_DATE = re.compile(r"^\d{2}-\d{2}-\d{4}")


def find_cases(source: Path, original_ct: bool = False) -> list[SourceCase]:
    """One case per ``PATIENT/STUDY`` folder; a study lacking SUV or CTres (CT with ``original_ct``) is an
    error naming the file."""
    if not source.is_dir():
        raise PirlInputError(f"{source}: source folder not found")
    cases, used = [], set()
    for patient in case_folders(source):
        for study in case_folders(patient):
            images = tuple(study / (ORIGINAL_CT if original_ct and name == "CT" else file) for name, file in CHANNELS)
            for path in images:
                if not path.is_file():
                    raise PirlInputError(f"{path}: missing (AutoPET study folders hold SUV, CTres, CT, SEG)")
            date = _DATE.match(study.name)
            name = base = sanitise_case_name(f"{patient.name}_{date.group(0) if date else study.name}")
            suffix = 1
            while name in used:
                suffix += 1
                name = f"{base}-{suffix}"
            used.add(name)
            label = study / LABEL_FILE
            cases.append(SourceCase(name, images, label if label.is_file() else None, label_map={0: 0, 1: 1}))
    if not cases:
        raise PirlInputError(f"{source}: no AutoPET studies found (expected PATIENT/STUDY/SUV.nii.gz)")
    return cases


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pirl_convert_autopet", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("-i", "--input", type=Path, required=True, help="AutoPET folder of PATIENT/STUDY/")
    add_output_arguments(parser, default_name="AutoPET")
    parser.add_argument("--resample_to", choices=[name for name, _ in CHANNELS],
                        help="read CT.nii.gz (not CTres) and resample every file onto the PET or the CT grid")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    writer = RawDatasetWriter(args.dataset_id, args.name, [name for name, _ in CHANNELS], LABELS,
                              source=args.input, root=args.output_root, overwrite=args.overwrite,
                              resample_to=args.resample_to)
    cases = find_cases(args.input, original_ct=args.resample_to is not None)
    log.info("found %d AutoPET stud(ies) in %s (%d with SEG)", len(cases), args.input,
             sum(c.label is not None for c in cases))
    write_raw_dataset(writer, cases)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
