"""Per-case wall time and peak memory of pirl's prediction vs the floor: MONAI's sliding window alone.

    python -m benchmarks.predict                          # CPU, fs 12, roi 96^3, 1 repeat, TTA on one window
    python -m benchmarks.predict --repeats 3 --fs 24      # medians over 3 interleaved repeats
    python -m benchmarks.predict --tta full               # TTA on the whole volume (9 more passes over the case)
    python -m benchmarks.predict --device cuda            # on a GPU (memory: torch.cuda.max_memory_allocated)

The case: ``../shared/data/brats2020_style/TCGA-DU-7294`` (240x240x155, 1 mm, 4 channels ``_t1 _t1ce _t2
_flair``), given to pirl as a raw-format input folder of symlinks ``CASE_0000..0003.nii.gz``.

The model: a real pirl model folder made cheaply with the real code path, under ``--workdir`` (git-ignored):
a raw dataset of the shared 4-modality BraTS cases (symlinks; ``benchmarks/preprocess.py``'s
``bench_dataset.build_dataset``), ``pirl_plan_and_preprocess``, then ``pirl_train ... seg -f 0`` for ONE iteration at the
chosen feature size and patch (``--epochs 1 --iters 1 --val-iters 0``). The weights are untrained (timing
only): the network's cost does not depend on its weights. Training runs with ``PIRL_raw`` pointing at an
empty folder so that the trainer's end-of-fold full-volume validation (minutes) is skipped. The model
folder is reused by later runs with the same fs and roi (``--retrain`` makes a new one).

Measured, each in a fresh child process (``--repeats`` times, floor and pirl interleaved):
- floor: the model folder loaded with pirl's loader (same network object), the case read and preprocessed
  once OUTSIDE the timer with pirl's own code, then only
  ``sliding_window_inference(volume, roi, 1, window_predictor(...), overlap=0.5, mode="gaussian")`` under
  ``torch.no_grad()`` is timed (``window_predictor`` is pirl's network wrapper: a PIRLNet sees each available
  modality alone and fuses them);
- pirl: what ``pirl_predict`` does per case: ``PIRLPredictor.read_case`` + ``predict_case`` (TTA off) +
  ``export``, broken down into read / stack channels / preprocess / sliding window / restore (probabilities,
  resampling back, uncrop, label map) / export (NIfTI write); the phases inside ``predict_case`` are timed by
  wrapping the two functions it calls (``preprocess_arrays``, ``predict_volume``). Model loading is timed
  apart (once per run, not per case);
- ``pirl_predict`` end to end (interpreter start, imports, model load, read-ahead thread, export), interleaved
  with the other two in every repeat: its ratio to the API's per-case time is the CLI's own overhead;
- TTA cost: ``predict_volume`` with and without mirroring (8 passes) on a centred crop of the preprocessed
  volume (default: one window, ``--tta-crop`` to change, ``--tta full`` for the whole volume), extrapolated
  to the whole case.
Memory: a thread samples the process's resident set (/proc/self/statm) every 10 ms and keeps the peak per
phase; ``ru_maxrss`` (the process's peak) is reported too; on CUDA ``torch.cuda.max_memory_allocated``.
CPU time (``time.process_time``, all threads) is reported next to wall time: other jobs on a shared machine
inflate wall time more than CPU time; the 1-minute load average is recorded before and after every child.
- attention: ``predict_volume`` on a centred crop (one window by default) with MONAI's explicit Swin window
  attention and with pirl's fused one (``scaled_dot_product_attention``), alternated ``--attention-rounds``
  times in one child; everything else runs with ``--attention`` (fused, pirl's default, or plain).
Checks: the pirl sliding-window output equals the floor's (max |difference|), the CLI's label map equals
the API's. Results: a table on stdout and ``benchmarks/results/predict.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.machine import machine_info
from benchmarks.predict_report import print_table, summarise
from pirl_pipeline.fold_folder import FoldFolder
from pirl_pipeline.paths import model_folder

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_CASE = REPO.parent / "shared" / "data" / "brats2020_style" / "TCGA-DU-7294"
NAMINGS = (("_t1", "_t1ce", "_t2", "_flair"), ("-t1n", "-t1c", "-t2w", "-t2f"))
DATASET_ID = 991
TRAINER = "PIRLSegTrainer"


def _bench_module(name: str):
    """``benchmarks/<name>.py`` (dataset builder, process-tree measurement), importable from a script."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import importlib

    return importlib.import_module(f"benchmarks.{name}")




def run_child(mode: str, spec: dict, log: Path, env: dict) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.predict_methods", mode, json.dumps(spec)]
    load = os.getloadavg()[0]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    log.write_text(f"$ {' '.join(cmd)}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}")
    if done.returncode != 0:
        raise SystemExit(f"{mode} child failed (rc {done.returncode}); log {log}:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["load_1min_parent"] = [load, os.getloadavg()[0]]
    return result


# ---------------------------------------------------------------------------------------------- setup
def case_files(case_dir: Path) -> dict[int, Path]:
    for suffixes in NAMINGS:
        files = {c: case_dir / f"{case_dir.name}{s}.nii.gz" for c, s in enumerate(suffixes)}
        if all(p.is_file() for p in files.values()):
            return files
    raise SystemExit(f"{case_dir}: no 4-modality BraTS case ({' '.join(NAMINGS[0])} or {' '.join(NAMINGS[1])})")


def run_logged(cmd: list[str], env: dict, log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, check=False).returncode
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise SystemExit(f"`{' '.join(cmd)}` failed (rc {rc}), log {log}:\n{tail}")
    return time.perf_counter() - start


def prepare_model(args, work: Path, env: dict) -> tuple[Path, dict]:
    """A pirl seg model folder for (fs, roi): raw dataset -> plan_and_preprocess -> 1-iteration training."""
    roi_tag = "x".join(map(str, args.roi))
    results = work / f"models_fs{args.fs}_roi{roi_tag}"
    dataset = f"Dataset{DATASET_ID:03d}_BenchBraTS"
    model = model_folder(dataset, TRAINER, root=results)
    info = {"model_folder": str(model), "trainer": TRAINER, "fold": "0",
            "weights": "untrained: 1 training iteration (timing only; the cost does not depend on the weights)"}
    raw, pre = work / "raw", work / "preprocessed"
    setup_env = {**env, "PIRL_raw": str(raw), "PIRL_preprocessed": str(pre), "PIRL_results": str(results)}
    if args.retrain:
        shutil.rmtree(model, ignore_errors=True)
    if not (pre / dataset / "PIRLPlans.json").is_file():
        shutil.rmtree(raw, ignore_errors=True)
        shutil.rmtree(pre, ignore_errors=True)
        built = _bench_module("bench_dataset").build_dataset(args.data, raw, DATASET_ID, 1)
        print(f"dataset {built['name']}: {built['num_cases']} real BraTS cases (symlinks)", flush=True)
        info["plan_and_preprocess_seconds"] = run_logged(
            [sys.executable, "-m", "pirl_pipeline.cli.plan_and_preprocess", "-d", str(DATASET_ID), "-np", "2"],
            setup_env, work / "logs" / "plan_and_preprocess.log")
    if not FoldFolder(model, 0).checkpoint().is_file():
        no_raw = work / "no_raw"  # no raw data: the trainer skips its full-volume validation
        shutil.rmtree(no_raw, ignore_errors=True)
        no_raw.mkdir()
        print(f"training a 1-iteration model (fs {args.fs}, patch {roi_tag}) ...", flush=True)
        info["train_seconds"] = run_logged(
            [sys.executable, "-m", "pirl_pipeline.cli.train", str(DATASET_ID), "3d_fullres", "seg", "-f", "0",
             "--epochs", "1", "--iters", "1", "--val-iters", "0", "--feature-size", str(args.fs),
             "--patch-size", *map(str, args.roi), "--batch-size", "1", "-npa", "0", "-device", args.device,
             "--set", "augment=false"], {**setup_env, "PIRL_raw": str(no_raw)}, work / "logs" / f"train_{roi_tag}.log")
    else:
        info["reused"] = True
    return model, info


def run_cli(args, inputs: Path, model: Path, work: Path, env: dict, rep: int) -> dict:
    """``pirl_predict`` on the one case, end to end, with its process tree measured."""
    out_cli = work / "out_cli"
    shutil.rmtree(out_cli, ignore_errors=True)
    cmd = [sys.executable, "-m", "pirl_pipeline.cli.predict", "-i", str(inputs), "-o", str(out_cli),
           "-m", str(model), "-f", "0", "--disable_tta", "-device", args.device, "-np", "2"]
    cmd += ["--disable_fused_attention"] if args.attention == "plain" else []
    markers = [("to predict", "read + predict + export"), ("wrote", "exit")]
    cli_env = env if not args.threads else {**env, "OMP_NUM_THREADS": str(args.threads)}
    # memory from statm (RSS) every 0.5 s: polling smaps_rollup (PSS) of the ~4 GB process every 0.1 s took ~25% of a
    # core from it on 2 cores and made the CLI look 1.2-1.3x slower than the API (its CPU time was equal)
    cli = _bench_module("process_monitor").measure(cmd, cli_env, work / "logs" / f"cli_{rep}.log", 0.5, REPO, markers,
                                                   pss=False)
    if cli["rc"] != 0:
        raise SystemExit(f"pirl_predict failed (rc {cli['rc']}), log {cli['log']}")
    cli["command"] = " ".join(cmd)
    cli["phase_seconds"] = {("startup (interpreter, imports, model load, case listing)" if k.startswith("startup")
                             else k): v for k, v in cli["phase_seconds"].items()}
    return cli


# ----------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", type=Path, default=DEFAULT_CASE, help="BraTS case folder (4 modalities)")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data",
                   help="shared data root (its brats20*_style cases make the 1-iteration training set)")
    p.add_argument("--fs", type=int, default=12, help="network feature size (12)")
    p.add_argument("--roi", type=int, nargs="+", default=[96], help="patch = window size: 1 or 3 ints (96)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs of floor and pirl, interleaved (median)")
    p.add_argument("--step-size", type=float, default=0.5, help="window step as a fraction of roi (0.5)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--tta", choices=["crop", "full", "off"], default="crop",
                   help="TTA cost on a centred crop (default), on the whole volume, or not measured")
    p.add_argument("--tta-crop", type=int, nargs=3, metavar=("Z", "Y", "X"),
                   help="crop size for --tta crop (default: one window, roi)")
    p.add_argument("--no-cli", action="store_true", help="skip the end-to-end pirl_predict run")
    p.add_argument("--attention", choices=["fused", "plain"], default="fused",
                   help="Swin window attention of every run: pirl's fused one (default, as pirl_predict) or MONAI's")
    p.add_argument("--attention-rounds", type=int, default=3,
                   help="plain/fused alternations of the attention comparison on one window (0: skip it)")
    p.add_argument("--retrain", action="store_true", help="make a new model folder even when one exists")
    p.add_argument("--workdir", type=Path, default=RESULTS / "predict_work", help="work folder (git-ignored)")
    p.add_argument("--json-out", type=Path, default=RESULTS / "predict.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if len(args.roi) == 1:
        args.roi = args.roi * 3
    if len(args.roi) != 3:
        raise SystemExit("--roi takes 1 or 3 integers")
    if not args.case.is_dir():
        raise SystemExit(f"{args.case}: case folder not found (shared data absent?)")
    import numpy as np
    import SimpleITK as sitk

    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    loads = [load_start]
    work = args.workdir.resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIRL_")}
    env |= {"PIRL_raw": str(work / "raw"), "PIRL_preprocessed": str(work / "preprocessed"),
            "PIRL_results": str(work / "results"), "PYTHONUNBUFFERED": "1"}
    model, setup = prepare_model(args, work, env)

    files = case_files(args.case)
    name = args.case.name
    inputs = work / "input"
    shutil.rmtree(inputs, ignore_errors=True)
    inputs.mkdir()
    for c, path in files.items():
        (inputs / f"{name}_{c:04d}.nii.gz").symlink_to(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(files[0]))
    reader.ReadImageInformation()
    shape = list(reversed(reader.GetSize()))
    spec = {"model": str(model), "fold": "0", "device": args.device, "threads": args.threads,
            "step_size": args.step_size, "case": name, "file_ending": ".nii.gz",
            "fused_attention": args.attention == "fused",
            "files": {str(c): str(inputs / f"{name}_{c:04d}.nii.gz") for c in files}}
    floor_runs, pirl_runs, cli_runs = [], [], []
    for rep in range(args.repeats):  # interleaved: slow drift in the machine's load hits all alike
        save = {"save_logits": str(work / "floor_logits.npy")} if rep == 0 else {}
        floor_runs.append(run_child("floor", {**spec, **save}, work / "logs" / f"floor_{rep}.log", env))
        print(f"  run {rep + 1}/{args.repeats} floor: {floor_runs[-1]['seconds']:.2f} s "
              f"({floor_runs[-1]['windows']} windows)", flush=True)
        save = {"save_logits": str(work / "pirl_logits.npy")} if rep == 0 else {}
        pirl_runs.append(run_child("pirl", {**spec, **save, "output": str(work / "out_api")},
                                   work / "logs" / f"pirl_{rep}.log", env))
        print(f"  run {rep + 1}/{args.repeats} pirl:  {pirl_runs[-1]['seconds']:.2f} s per case", flush=True)
        loads += [x for r in (floor_runs[-1], pirl_runs[-1]) for x in r["load_1min"] + r["load_1min_parent"]]
        if not args.no_cli:
            cli_runs.append(run_cli(args, inputs, model, work, env, rep))
            loads += [cli_runs[-1]["load_average_1min_before"], cli_runs[-1]["load_average_1min_after"]]
            print(f"  run {rep + 1}/{args.repeats} pirl_predict end to end: {cli_runs[-1]['seconds']:.2f} s", flush=True)
    cli = cli_runs or None

    attention = None
    if args.attention_rounds > 0:
        attention = run_child("attention", {**spec, "crop": args.roi, "rounds": args.attention_rounds},
                              work / "logs" / "attention.log", env)
        loads += attention["load_1min"] + [attention["load_1min_parent"][1]]
        print(f"  attention on {attention['crop']}: plain {attention['median']['plain']['seconds']:.2f} s, fused "
              f"{attention['median']['fused']['seconds']:.2f} s", flush=True)

    tta = None
    if args.tta != "off":
        crop = None if args.tta == "full" else (args.tta_crop or args.roi)
        tta = run_child("tta", {**spec, "crop": crop}, work / "logs" / "tta.log", env)
        loads += tta["load_1min"] + tta["load_1min_parent"]
        print(f"  TTA on {tta['crop']}: {tta['no_tta']['seconds']:.2f} s -> {tta['tta']['seconds']:.2f} s", flush=True)

    checks: dict = {}
    floor_logits, pirl_logits = work / "floor_logits.npy", work / "pirl_logits.npy"
    if floor_logits.is_file() and pirl_logits.is_file():
        a, b = np.load(floor_logits), np.load(pirl_logits)
        checks["max_abs_logit_difference"] = float(np.abs(a - b).max()) if a.shape == b.shape else math.inf
        checks["logit_shape"] = list(a.shape)
    api_seg = work / "out_api" / f"{name}.nii.gz"
    if cli_runs and api_seg.is_file():
        api = sitk.GetArrayFromImage(sitk.ReadImage(str(api_seg)))
        via_cli = sitk.GetArrayFromImage(sitk.ReadImage(str(work / "out_cli" / f"{name}.nii.gz")))
        checks["cli_labels_equal_api"] = bool(np.array_equal(api, via_cli))
        checks["output_shape"] = list(api.shape)

    loads.append(os.getloadavg()[0])
    report = {
        "benchmark": "predict",
        "settings": {"fs": args.fs, "roi": args.roi, "repeats": args.repeats, "step_size": args.step_size,
                     "overlap": 1 - args.step_size, "blend": "gaussian", "sw_batch_size": 1, "tta": "off (timed "
                     "runs); cost measured apart", "device": args.device, "threads": args.threads,
                     "tta_mode": args.tta, "attention": args.attention},
        "machine": machine_info(), "torch_threads": floor_runs[0]["torch_threads"],
        "case": {"name": name, "source": str(args.case), "shape": shape, "shape_order": "z y x", "channels": len(files),
                 "preprocessed_shape": floor_runs[0]["preprocessed_shape"]},
        "model": setup,
        "floor_runs": floor_runs, "pirl_runs": pirl_runs, "cli": cli, "tta_run": tta, "attention": attention,
        "summary": summarise(args, floor_runs, pirl_runs, cli, tta), "checks": checks,
        "load_average_1min": {"start": load_start, "end": loads[-1], "max": max(loads)},
        "memory_method": "RSS of the child process sampled every 10 ms (/proc/self/statm), peak per phase; "
                         "floor: peak during the sliding window (model + preprocessed array held); pirl: peak "
                         "over the per-case phases; CLI: peak summed RSS (statm) of its process tree, polled every 0.5 s",
        "total_benchmark_seconds": time.perf_counter() - t_start,
    }
    print_table(report)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nJSON: {args.json_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
