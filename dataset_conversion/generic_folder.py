"""Convert any one-folder-per-case layout into a pirl raw dataset.

Usage::

    pirl_convert_folder -i SRC -d 503 -n Name --channel FLAIR='Flair*.nii.gz' --channel T1c='T1c*.nii.gz'
        [--label 'OTMultiClass.nii.gz'] [--labels background=0 necrosis=1 ...] [--mask 'brainmask.nii.gz']
        [--case_name_file subject_id.txt [--case_name_key Subject_id]] [--resample_to CHANNEL]

Every sub-folder of SRC is one case (its name is the case name, unless ``--case_name_file`` names a text
file in the case folder that holds it: the file's one line, or with ``--case_name_key KEY`` the value of
its ``KEY: NAME`` line). Each glob is matched inside a case folder and must match exactly one file.
Channels are written in the order given; the channel NAME decides normalisation later (MRI names ->
z-score, CT, PET). Without ``--labels`` the label names are the values found across cases (background=0,
label_K=K). Label maps stored as floats are accepted when their values are integers. ``--mask``: voxels where the mask is 0 are set to 0 in every channel (the label is kept);
use it for images whose background is not 0 (e.g. z-scored images with a constant background), because
preprocessing crops to the non-zero region. Without ``--label`` the dataset is image-only.

Channels on different grids (PET/CT as TCIA ships them): ``--resample_to PET`` resamples every channel, the
label and the mask onto the grid of the PET channel in physical space (images linear with anti-aliasing, labels
linear per class, CT padded with -1000 HU outside its field of view; ``dataset_conversion/resample.py``), logs
each resampling and records it in ``conversion.json`` beside ``dataset.json``. Channels that do not overlap,
directions that differ, or a label whose volume would change by more than 10 % are refused.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from dataset_conversion.common import (
    RawDatasetWriter,
    SourceCase,
    add_output_arguments,
    case_folders,
    write_raw_dataset,
)
from pirl_pipeline.cli.common import cli_entry
from pirl_pipeline.errors import PirlInputError

log = logging.getLogger(__name__)


def _name_value(text: str, what: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise PirlInputError(f"{what} {text!r}: expected NAME=VALUE")
    return name, value


def parse_labels(items: list[str] | None) -> dict[str, int | list[int]] | None:
    """``["background=0", "tumour=1", "whole=1,2"]`` -> {"background": 0, "tumour": 1, "whole": [1, 2]};
    a comma list declares a region (nnU-Net style); background=0 added if absent."""
    if not items:
        return None
    labels: dict[str, int | list[int]] = {}
    for item in items:
        name, value = _name_value(item, "--labels")
        parts = value.split(",")
        if not all(v.isdigit() and int(v) <= 255 for v in parts):
            raise PirlInputError(f"--labels {item!r}: the value must be an integer 0..255 or a comma list of them")
        labels[name] = [int(v) for v in parts] if len(parts) > 1 else int(value)
    if 0 not in labels.values():
        labels = {"background": 0, **labels}
    return labels


def match_one(folder: Path, pattern: str, what: str) -> Path:
    """The single file of ``folder`` matching ``pattern``; otherwise an error naming folder and glob."""
    matches = sorted(p for p in folder.glob(pattern) if p.is_file())
    if len(matches) != 1:
        found = f": {', '.join(p.name for p in matches[:4])}" if matches else ""
        raise PirlInputError(f"{folder}: {len(matches)} files match {pattern!r} for {what}, expected exactly "
                             f"one{found}")
    return matches[0]


def read_case_name(folder: Path, pattern: str, key: str | None = None) -> str:
    """The case name held by the file of ``folder`` matching ``pattern``: its single non-empty line, or with
    ``key`` the value of its one ``KEY: NAME`` line; otherwise an error naming the file."""
    path = match_one(folder, pattern, "the case name")
    try:
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise PirlInputError(f"{path}: not a text file (--case_name_file)") from None
    if key is None:
        if len(lines) != 1:
            raise PirlInputError(f"{path}: expected one line holding the case name, found {len(lines)} "
                                 "(use --case_name_key KEY to take the value of a 'KEY: NAME' line)")
        return lines[0]
    values = [value.strip() for name, sep, value in (line.partition(":") for line in lines)
              if sep and name.strip() == key]
    if len(values) != 1 or not values[0]:
        found = [name for name, sep, _ in (line.partition(":") for line in lines) if sep]
        raise PirlInputError(f"{path}: expected one non-empty '{key}: NAME' line, found {len(values)} "
                             f"(keys in the file: {', '.join(found) or 'none'})")
    return values[0]


def find_cases(source: Path, channels: list[tuple[str, str]], label: str | None,
               mask: str | None, case_name_file: str | None = None,
               case_name_key: str | None = None) -> list[SourceCase]:
    if not source.is_dir():
        raise PirlInputError(f"{source}: source folder not found")
    folders = case_folders(source)
    if not folders:
        raise PirlInputError(f"{source}: no case folders (expected one sub-folder per case)")
    return [SourceCase(read_case_name(folder, case_name_file, case_name_key) if case_name_file else folder.name,
                       tuple(match_one(folder, pattern, f"channel {name}") for name, pattern in channels),
                       match_one(folder, label, "the label") if label else None,
                       match_one(folder, mask, "the mask") if mask else None)
            for folder in folders]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pirl_convert_folder", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("-i", "--input", type=Path, required=True, help="folder with one sub-folder per case")
    add_output_arguments(parser)
    parser.add_argument("--channel", action="append", required=True, metavar="NAME=GLOB",
                        help="one channel: modality name and file glob inside a case folder (repeat, in order)")
    parser.add_argument("--label", metavar="GLOB", help="label map glob inside a case folder")
    parser.add_argument("--labels", nargs="+", metavar="NAME=VALUE",
                        help="label names (default: background=0 and label_K for every value K found); "
                             "NAME=V1,V2 declares a region (then --regions_class_order is required)")
    parser.add_argument("--regions_class_order", type=int, nargs="+", metavar="LABEL",
                        help="with regions: the label each region paints back, in region order (nnU-Net)")
    parser.add_argument("--mask", metavar="GLOB", help="mask glob: voxels outside it are set to 0 in the images")
    parser.add_argument("--case_name_file", metavar="GLOB",
                        help="text file in each case folder holding the case name (default: the folder name)")
    parser.add_argument("--case_name_key", metavar="KEY",
                        help="with --case_name_file: take the value of its 'KEY: NAME' line")
    parser.add_argument("--resample_to", metavar="CHANNEL",
                        help="resample every channel and the label onto the grid of this channel (a --channel "
                             "NAME); default: all files of a case must already share one grid")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    channels = [_name_value(item, "--channel") for item in args.channel]
    if args.labels and not args.label:
        raise PirlInputError("--labels: needs --label GLOB (the label files to read)")
    if args.case_name_key and not args.case_name_file:
        raise PirlInputError("--case_name_key: needs --case_name_file GLOB (the file holding the name)")
    labels = parse_labels(args.labels)
    has_regions = labels is not None and any(isinstance(v, list) for v in labels.values())
    if has_regions != bool(args.regions_class_order):
        raise PirlInputError("--labels with regions (NAME=V1,V2) and --regions_class_order go together")
    writer = RawDatasetWriter(args.dataset_id, args.name, [name for name, _ in channels], labels,
                              source=args.input, root=args.output_root, overwrite=args.overwrite,
                              regions_class_order=args.regions_class_order, resample_to=args.resample_to)
    cases = find_cases(args.input, channels, args.label, args.mask, args.case_name_file, args.case_name_key)
    log.info("found %d case folder(s) in %s", len(cases), args.input)
    write_raw_dataset(writer, cases)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
