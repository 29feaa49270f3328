"""``pirl_reference``: trivial reference predictions, written like ``pirl_predict``'s, so that ``pirl_evaluate``
scores them exactly like a model's. A metric means something only beside them.

seg:       ``whole_brain`` (every brain voxel of the given channels is tumour: every voxel non-zero in any of
           them; with a CT channel, whose air is -1000 HU, every voxel of the image) or ``threshold`` (an
           intensity threshold on FLAIR (or T2f, T2-FLAIR), else T2, else PET, else the first given channel,
           fitted on the dataset's labelled training cases); PET, nothing fitted, on the channel named PET/SUV
           (or the one --channels C) in its raw units: ``suv_threshold --threshold 2.5`` (SUV >= 2.5) and
           ``suvmax_fraction --fraction 0.41`` (>= 41 % of the case's maximum of that channel in the image: on a
           crop, the crop's)
translate: ``identity`` (the source channel copied as every target) or ``histogram`` (a source -> target
           intensity mapping fitted on the training cases)
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pirl_pipeline.cli.common import checked, command, positive_float
from pirl_pipeline.data.dataset_json import channel_file_name, group_channel_files, load_dataset_json
from pirl_pipeline.data.image_io import read_array, write_array
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.evaluation.references.common import raw_cases
from pirl_pipeline.evaluation.references.segmentation import (
    SEGMENTATION_KINDS,
    UPTAKE_KINDS,
    UptakeThreshold,
    fit_threshold,
    lesion_channel,
    lesion_label,
    uptake_channel,
    write_segmentation_references,
)
from pirl_pipeline.evaluation.references.translation import (
    TRANSLATION_KINDS,
    fit_intensity_mappings,
    translation_reference,
)
from pirl_pipeline.file_io import save_json
from pirl_pipeline.paths import check_output_folder, find_dataset_name, raw_root
from pirl_pipeline.tasks import TASKS, get_task

log = logging.getLogger("pirl")
fraction = checked(float, "a fraction in (0, 1]", lambda v: 0 < v <= 1)
#: the value option each uptake kind needs
UPTAKE_OPTIONS = {"suv_threshold": "threshold", "suvmax_fraction": "fraction"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pirl_reference", description=__doc__.split("\n\n")[0],
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", required=True, type=Path, help="folder of CASE_XXXX images (e.g. imagesTs)")
    p.add_argument("-o", required=True, type=Path, help="output folder (pirl_predict's layout)")
    p.add_argument("-d", required=True, metavar="DATASET", help="dataset id or name in $PIRL_raw (fitted on its "
                                                                  "imagesTr / labelsTr)")
    p.add_argument("-t", required=True, choices=list(TASKS), help="task")
    p.add_argument("--kind", required=True, choices=[*SEGMENTATION_KINDS, *TRANSLATION_KINDS])
    p.add_argument("--channels", type=int, nargs="+", help="seg: the channels the reference may read (default all)")
    p.add_argument("--source", type=int, default=0, help="translate: the source channel (default 0)")
    p.add_argument("--threshold", type=positive_float,
                   help="suv_threshold: the cut-off in the channel's raw units (SUV for PET; FDG: 2.5)")
    p.add_argument("--fraction", type=fraction, help="suvmax_fraction: the share of the case's maximum (e.g. 0.41)")
    return p


def check_uptake_options(args: argparse.Namespace) -> None:
    """--threshold only with (and required by) suv_threshold, --fraction with suvmax_fraction."""
    for kind, option in UPTAKE_OPTIONS.items():
        given = getattr(args, option) is not None
        if args.kind == kind and not given:
            raise PirlInputError(f"--kind {kind} needs --{option}")
        if args.kind != kind and given:
            raise PirlInputError(f"--{option}: only with --kind {kind}")


def run(args: argparse.Namespace) -> None:
    raw = raw_root() / find_dataset_name(args.d)
    dj = load_dataset_json(raw)
    task = get_task(args.t)
    if task.predicts_labels != (args.kind in SEGMENTATION_KINDS):
        raise PirlInputError(f"--kind {args.kind} is not a {args.t} reference (seg: {SEGMENTATION_KINDS}, "
                             f"translate: {TRANSLATION_KINDS})")
    check_uptake_options(args)
    check_output_folder(args.i, args.o)
    cases = group_channel_files(args.i, dj)
    channels = sorted(args.channels or range(dj.num_channels))
    if any(not 0 <= c < dj.num_channels for c in [*channels, args.source]):
        raise PirlInputError(f"channels {channels} / source {args.source}: choose from 0..{dj.num_channels - 1}")
    train, labels = raw_cases(raw, dj)
    fitted: dict = {"kind": args.kind, "fitted_on": sorted(train)}
    if task.predicts_labels:
        cases = {c: {k: f[k] for k in channels if k in f} for c, f in cases.items()}
        model = None
        if args.kind == "threshold":
            model = fit_threshold(train, labels, dj, channel=lesion_channel(dj, channels))
            fitted |= model.to_dict()
            log.info("threshold %.2f on channel %d (training Dice %.3f, cleanup %s)", model.threshold, model.channel,
                     model.train_dice, model.cleanup)
        elif args.kind in UPTAKE_KINDS:
            channel = uptake_channel(dj, channels if args.channels else None)
            value = getattr(args, UPTAKE_OPTIONS[args.kind])
            model = UptakeThreshold(args.kind, channel, value, lesion_label(dj))
            fitted |= {**model.to_dict(), "channel_name": dj.channel_names[str(channel)], "fitted_on": []}
            log.info("%s %g on channel %d (%s), in the raw image's units%s", args.kind, value, channel,
                     dj.channel_names[str(channel)], " x the case's maximum" if args.kind == "suvmax_fraction" else "")
        written = write_segmentation_references(args.kind, cases, args.o, dj, model)
    else:
        targets = [t for t in range(dj.num_channels) if t != args.source]
        mappings = (fit_intensity_mappings(train, [(args.source, t) for t in targets])
                    if args.kind == "histogram" else None)
        if mappings:
            fitted["mappings"] = {f"{s}->{t}": m.to_dict() for (s, t), m in mappings.items()}
        written = []
        for case, files in sorted(cases.items()):
            if args.source not in files:
                raise PirlInputError(f"case {case}: no image for source channel {args.source:04d} in {args.i}")
            image, geometry = read_array(files[args.source])
            for target in targets:
                path = args.o / channel_file_name(case, target, dj.file_ending)
                write_array(translation_reference(args.kind, image, args.source, target, mappings), geometry, path)
                written.append(path)
    save_json(fitted, args.o / "reference.json")
    log.info("%s reference: %d file(s) -> %s", args.kind, len(written), args.o)


main = command(build_parser, run)


if __name__ == "__main__":
    raise SystemExit(main())
