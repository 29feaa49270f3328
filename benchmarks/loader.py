"""Loader throughput alone (no network): batches/s of ``make_train_loader`` per augmentation setting and
number of workers, on preprocessed data built in a temp folder.

    python -m benchmarks.loader [--source brats|synthetic] [--patch 96 96 96] [--batch 2] [--workers 0 1 2]

``brats`` symlinks the shared real BraTS-2020-style cases (4 modalities, 240x240x155) when present,
``synthetic`` writes 4 synthetic 4-modality cases (160x176x144). Prints a table and writes
``benchmarks/results/loader.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.machine import machine_info
from pirl_pipeline.dataloading import AugmentationConfig, make_train_loader

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "brats2020_style"
SETTINGS = {
    "off": AugmentationConfig.off(),
    "nnunet_default": AugmentationConfig(),
    "heavy": AugmentationConfig(p_rotation=1.0, p_scaling=1.0, elastic=True, p_elastic=1.0),
}


def build_dataset(work: Path, source: str) -> Path:
    """Raw dataset -> plan_and_preprocess in ``work``; returns the 3d_fullres preprocessed folder."""
    from pirl_pipeline.cli.plan_and_preprocess import main
    from plans.plans_manager import Plans

    os.environ["PIRL_raw"], os.environ["PIRL_preprocessed"] = str(work / "raw"), str(work / "pre")
    if source == "brats":
        folder = work / "raw" / "Dataset951_BenchBraTS"
        (folder / "imagesTr").mkdir(parents=True)
        (folder / "labelsTr").mkdir()
        for case in sorted(p.name for p in SHARED.iterdir()):
            for i, m in enumerate(("t1", "t1ce", "t2", "flair")):
                (folder / "imagesTr" / f"{case}_{i:04d}.nii.gz").symlink_to(SHARED / case / f"{case}_{m}.nii.gz")
            (folder / "labelsTr" / f"{case}.nii.gz").symlink_to(SHARED / case / f"{case}_seg.nii.gz")
        (folder / "dataset.json").write_text(json.dumps({
            "channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"},
            "labels": {"background": 0, "NCR": 1, "ED": 2}, "numTraining": 2, "file_ending": ".nii.gz"}))
        name = "Dataset951_BenchBraTS"
    else:
        from tests.synthetic import write_raw_dataset
        write_raw_dataset(work / "raw", 952, name="BenchSynthetic", num_cases=4, shape=(144, 176, 160))
        name = "Dataset952_BenchSynthetic"
    assert main(["-d", name, "-np", "2"]) == 0
    plans = Plans.load(work / "pre" / name / "PIRLPlans.json")
    return work / "pre" / name / plans.configuration("3d_fullres").data_identifier


def measure(folder: Path, setting: str, workers: int, patch: tuple[int, ...], batch: int, n: int) -> float:
    """Batches/s over ``n`` batches after a warm-up that also fills the workers' queues."""
    with make_train_loader(folder, None, aug_config=SETTINGS[setting], batch_size=batch, patch_size=patch,
                           num_workers=workers, seed=0) as stream:
        for _ in range(2 + 2 * workers):
            next(stream)
        if workers:
            time.sleep(2.0)  # let the queues fill: measure the steady state, not the start-up
            for _ in range(2 * workers + 1):
                next(stream)  # drain what was cached while sleeping
        start = time.perf_counter()
        for _ in range(n):
            next(stream)
        return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=("brats", "synthetic"), default="brats" if SHARED.is_dir() else
                        "synthetic")
    parser.add_argument("--patch", type=int, nargs=3, default=(96, 96, 96))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=(0, 1, 2))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--batches", type=int, default=12)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pirl-loader-bench-") as tmp:
        folder = build_dataset(Path(tmp), args.source)
        rows = []
        for setting in args.settings:
            for workers in args.workers:
                rate = measure(folder, setting, workers, tuple(args.patch), args.batch, args.batches)
                rows.append({"augmentation": setting, "num_workers": workers, "batches_per_s": round(rate, 3)})
                print(f"{setting:>15}  workers={workers}  {rate:6.2f} batches/s", flush=True)
    print(f"\npatch {tuple(args.patch)}, batch {args.batch}, 4 channels, {args.source} data, "
          f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}")
    print(f"{'augmentation':>15} | " + " | ".join(f"{w} workers" for w in args.workers))
    for setting in args.settings:
        rates = [r["batches_per_s"] for r in rows if r["augmentation"] == setting]
        print(f"{setting:>15} | " + " | ".join(f"{r:9.2f}" for r in rates))
    out = ROOT / "benchmarks" / "results" / "loader.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"patch_size": list(args.patch), "batch_size": args.batch, "channels": 4,
                               "source": args.source, "machine": machine_info(), "torch_threads": torch.get_num_threads(),
                               "batches_measured": args.batches, "results": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
