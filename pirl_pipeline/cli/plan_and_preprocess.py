"""``pirl_plan_and_preprocess``: integrity check + fingerprint -> plans -> preprocessed data -> splits."""
from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

from pirl_pipeline import run_lock
from pirl_pipeline.cli.common import cli_entry, positive_float, positive_int
from pirl_pipeline.data.dataset_json import DatasetJson, check_num_training, list_cases, load_dataset_json
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.file_io import remove_stale, save_json
from pirl_pipeline.paths import find_dataset_name, preprocessed_root, raw_root
from pirl_pipeline.preprocessing.preprocessor import preprocess_dataset
from pirl_pipeline.splits import install_splits, load_or_create_splits, read_split_file
from plans.fingerprint import extract_fingerprint, fingerprint_path
from plans.planner import plan
from plans.plans_manager import PLANS_FILE, Plans, as_json, keep_or_write_plans

log = logging.getLogger("pirl")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pirl_plan_and_preprocess",
        description="Check a raw dataset, extract its fingerprint, write PIRLPlans.json and preprocess "
                    "every training case (resumable: finished cases are skipped).")
    p.add_argument("-d", nargs="+", required=True, metavar="DATASET",
                   help="dataset id(s) or name(s), e.g. 501 or Dataset501_BraTS")
    p.add_argument("-c", default="3d_fullres", choices=["3d_fullres"], help="configuration (default 3d_fullres)")
    p.add_argument("-np", type=positive_int, default=2, dest="num_processes", help="worker processes (default 2)")
    p.add_argument("--clean", action="store_true", help="delete existing preprocessed data of this dataset first")
    p.add_argument("--overwrite_plans", action="store_true",
                   help="replace an existing PIRLPlans.json (default: keep it, hand edits included)")
    p.add_argument("--no_integrity_check", action="store_true",
                   help="skip the grid/label/NaN checks (they run by default; only for data you trust)")
    p.add_argument("--plan_only", action="store_true", help="stop after writing the plans")
    p.add_argument("--spacing", type=positive_float, nargs=3, metavar="S",
                   help="override the target spacing (mm, in the plans' axis order; like nnU-Net's "
                        "-overwrite_target_spacing), e.g. 2 2 2 for a coarser CPU-sized grid")
    p.add_argument("--split_file", type=Path, metavar="FILE",
                   help="use a published split: FILE holds nnU-Net's splits_final.json layout [{\"train\": [...], "
                        "\"val\": [...]}, ...] or one such fold; checked (known cases, no case twice or in train "
                        "and val, no empty list) and written as splits_final.json, which pirl_train -f F and "
                        "pirl_evaluate_missing use (default: 5 seeded folds, kept once written)")
    return p


def run_one(dataset: str, args: argparse.Namespace) -> None:
    start = time.perf_counter()
    name = find_dataset_name(dataset, raw_root())
    raw = raw_root() / name
    out = preprocessed_root() / name
    dj = load_dataset_json(raw)
    cases = list_cases(raw, dj, "imagesTr")
    if not args.no_integrity_check:
        check_num_training(dj, cases, raw / "dataset.json")
    if args.split_file is not None and len(args.d) > 1:
        raise PirlInputError(f"--split_file {args.split_file}: one dataset at a time (got -d {' '.join(args.d)})")
    # checked before any work, written once the dataset's folder exists
    splits = read_split_file(args.split_file, [c.name for c in cases]) if args.split_file is not None else None
    lock = run_lock.acquire(out)  # one run per preprocessed dataset folder
    if args.clean:
        for entry in (e for e in out.iterdir() if e != lock):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    log.info("%s: %d training cases, channels %s", name, len(cases), dj.channel_names)
    incomplete = [f"{c.name} {list(c.channels)}" for c in cases if len(c.channels) < dj.num_channels]
    if incomplete:
        log.info("%d case(s) lack channels (allow_missing_channels; present channels shown): %s", len(incomplete),
                 ", ".join(incomplete[:8]) + (f" (+{len(incomplete) - 8} more)" if len(incomplete) > 8 else ""))
    fingerprint = extract_fingerprint(cases, dj, args.num_processes, check=not args.no_integrity_check)
    remove_stale(out)
    save_json(fingerprint, fingerprint_path(out))
    save_json(dj.to_dict(), out / "dataset.json")
    planned = plan(fingerprint, dj, name, args.c, spacing_override=args.spacing)
    replace = args.overwrite_plans or args.clean or spacing_replans(out / PLANS_FILE, fingerprint, dj, name, args)
    plans = keep_or_write_plans(out / PLANS_FILE, planned, replace)
    config = plans.configuration(args.c)
    log.info("plans: spacing %s, patch %s, normalisation %s", config.spacing, config.patch_size,
             config.normalization_schemes)
    if splits is not None:
        install_splits(out, splits, args.split_file)
    if args.plan_only:
        return
    counts = preprocess_dataset(cases, plans, args.c, out, dj.label_values, args.num_processes)
    load_or_create_splits(out, [c.name for c in cases])
    log.info("%s: preprocessed %d, skipped %d (already done) in %.1f s -> %s", name, counts["done"],
             counts["skipped"], time.perf_counter() - start, out / config.data_identifier)
    log.info("next: pirl_train %s %s pretrain", name, args.c)


def spacing_replans(path: Path, fingerprint: dict, dj: DatasetJson, name: str, args: argparse.Namespace) -> bool:
    """Whether ``--spacing`` replaces existing plans: yes when they hold another spacing and nobody edited them
    (they equal the planner's own output for this data); edited plans need --overwrite_plans."""
    if not args.spacing or args.overwrite_plans or not path.is_file():
        return False
    kept = Plans.load(path)
    spacing = kept.configuration(args.c).spacing
    if [float(v) for v in spacing] == [float(v) for v in args.spacing]:
        return False
    as_planned = [as_json(plan(fingerprint, dj, name, args.c, spacing_override=s).to_dict()) for s in (None, spacing)]
    if as_json(kept.to_dict()) in as_planned:
        return True
    raise PirlInputError(f"{path}: edited plans with spacing {spacing}; --spacing {' '.join(map(str, args.spacing))} "
                         "needs --overwrite_plans (which replaces the file, hand edits included)")


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for dataset in args.d:
        run_one(dataset, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
