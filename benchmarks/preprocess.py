"""Benchmark ``pirl_plan_and_preprocess`` against ``nnUNetv2_plan_and_preprocess -c 3d_fullres``.

What it does (everything it writes lies under ``--workdir``, outside the tracked tree):
1. builds an nnU-Net-v2-format raw dataset from the real 4-modality BraTS cases in ``../shared/data``
   (``brats2020_style``: ``_t1 _t1ce _t2 _flair _seg``; ``brats2023_style``: ``-t1n -t1c -t2w -t2f -seg``);
   channels 0 T1, 1 T1ce, 2 T2, 3 FLAIR; labels declared {0, 1, 2, 3}. Images are symlinks; a label is a
   symlink too when it is already an integer map within {0, 1, 2, 3}, else a converted copy (4 -> 3, uint8).
   ``--replicate K`` repeats every case K times under other case names (symlinks) to reduce timing noise;
2. runs pirl (``python -m pirl_pipeline.cli.plan_and_preprocess -d ID -np N --clean``) and, when nnU-Net v2
   is available in a separate venv (installed there on first use unless ``--no-install``),
   ``nnUNetv2_plan_and_preprocess -d ID -c 3d_fullres -np N -npfp N --clean [--verify_dataset_integrity]``
   ``--repeats`` times each (preprocessed output deleted before every run, tools interleaved), measuring
   wall time, CPU time and peak memory;
3. compares the results: target spacing, normalisation schemes, mask use, preprocessed shapes per case, and
   the voxel-wise difference of the preprocessed arrays (data and seg) per distinct case;
4. optionally (``--profile``) times each per-case step of both tools in one process (read, check,
   fingerprint, crop, normalise, resample, class locations, save) and the import time of each CLI.

Memory: the process tree (the CLI and its worker processes) is polled every ``--poll-interval`` seconds
through /proc; "peak MB" is the largest sum of PSS (proportional set size, shared pages split between the
processes that map them) over the tree; the largest sum of RSS and the peak RSS of the largest single process
(``wait4`` rusage, i.e. what ``/usr/bin/time -v`` reports) are in the JSON too.

Run: ``.venv/bin/python benchmarks/preprocess.py [-np 1 2] [--repeats 3] [--replicate 2] [--profile]``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
if str(REPO) not in sys.path:  # run as a script (python benchmarks/preprocess.py) or as a module
    sys.path.insert(0, str(REPO))
from benchmarks.bench_dataset import build_dataset
from benchmarks.preprocess_report import (
    fit_scaling,
    print_phases,
    print_profile,
    print_quality,
    print_resample_check,
    print_table,
    summarise,
)
from benchmarks.process_monitor import measure, tail

INTERNAL_SCRIPT = Path(__file__).resolve().parent / "preprocess_tools.py"  # runs in either tool's venv


def nnunet_available(venv: Path, install: bool, log_file: Path) -> tuple[bool, str]:
    """Make sure ``venv`` holds nnunetv2 (installing it when allowed); returns (ok, why not / version)."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", ("import nnunetv2, torch, importlib.metadata as m; "
                                 "print(m.version('nnunetv2'), torch.__version__)")]
    if python.is_file():
        done = subprocess.run(probe, check=False, capture_output=True, text=True)
        if done.returncode == 0:
            return True, "nnunetv2 " + done.stdout.strip().replace(" ", ", torch ")
        if not install:
            return False, f"{venv}: nnunetv2 does not import ({done.stderr.strip().splitlines()[-1:]})"
    elif not install:
        return False, f"{venv}: no venv (run without --no-install to create it)"
    constraints = venv.parent / f"{venv.name}_constraints.txt"
    torch_pin = os.environ.get("BENCH_TORCH_PIN", "torch==2.13.0")
    steps = [[sys.executable if sys.version_info[:2] == (3, 11) else "python3.11", "-m", "venv", str(venv)],
             [str(python), "-m", "pip", "install", torch_pin],
             [str(python), "-m", "pip", "install", "-c", str(constraints), "nnunetv2"]]
    print(f"installing nnunetv2 into {venv} (log: {log_file}) ...", flush=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    constraints.write_text(torch_pin + "\n")  # keeps pip from replacing the local CPU torch
    with open(log_file, "w") as log:
        for step in steps:
            if step[0] != str(python) and python.is_file():
                continue  # venv exists already
            log.write("$ " + " ".join(step) + "\n")
            log.flush()
            if subprocess.run(step, check=False, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
                return False, f"`{' '.join(step)}` failed (see {log_file}): {tail(str(log_file), 3)}"
    done = subprocess.run(probe, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        return False, f"nnunetv2 installed but does not import: {done.stderr.strip()[-300:]}"
    return True, "nnunetv2 " + done.stdout.strip().replace(" ", ", torch ")


# ---------------------------------------------------------------------- helpers run inside the tool venvs


def run_internal(python: str, mode: str, spec: dict, cwd: Path, env: dict | None = None) -> dict:
    """Run one of the INTERNAL helpers in another interpreter; returns its JSON (or an 'error')."""
    done = subprocess.run([python, str(INTERNAL_SCRIPT), mode, json.dumps(spec)],
                          check=False, capture_output=True, text=True, cwd=cwd, env=env)
    if done.returncode != 0:
        return {"error": f"{mode} failed (rc {done.returncode}): {done.stderr.strip()[-1500:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------- driver
def tool_commands(args, tool: str, dataset_id: int, n: int, verify: bool) -> list[str]:
    if tool == "pirl":
        return [args.pirl_python, "-m", "pirl_pipeline.cli.plan_and_preprocess", "-d", str(dataset_id),
                "-np", str(n), "--clean"]
    cmd = [str(args.nnunet_venv / "bin" / "nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id),
           "-c", "3d_fullres", "-np", str(n), "-npfp", str(n), "--clean"]
    return cmd + (["--verify_dataset_integrity"] if verify else [])


def phase_markers(tool: str, verify: bool) -> list[tuple[str, str]]:
    """(text of the output line that starts a phase, phase name), from each CLI's own log lines."""
    if tool == "pirl":
        return [(" training cases, channels", "integrity check + fingerprint + planning"),
                ("INFO plans:", "preprocessing (+ splits)"), ("skipped 0 (already done) in", "exit")]
    return [("Fingerprint extraction...", "integrity check" if verify else "fingerprint"),
            ("verify_dataset_integrity Done", "fingerprint"), ("Experiment planning...", "planning"),
            ("Preprocessing...", "preprocessing")]


def import_seconds(python: str, module: str, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([python, "-c", f"import {module}"], check=True, cwd=REPO)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def quality(args, work: Path, dataset: dict, nn_ok: bool) -> dict:
    name = dataset["name"]
    pirl_root = work / "pirl_preprocessed" / name
    pirl_plans = json.loads((pirl_root / "PIRLPlans.json").read_text())
    pc = pirl_plans["configurations"]["3d_fullres"]
    q: dict = {"pirl": {"spacing": pc["spacing"], "normalization_schemes": pc["normalization_schemes"],
                        "use_mask_for_norm": pc["use_mask_for_norm"], "patch_size": pc["patch_size"],
                        "median_image_size_in_voxels": pc["median_image_size_in_voxels"]}}
    pirl_folder = pirl_root / pc["data_identifier"]
    if not nn_ok:
        q["pirl"]["shapes"] = {c: list(np.load(pirl_folder / f"{c}.npy", mmap_mode="r").shape)
                               for c in dataset["cases"]}
        return q
    nn_root = work / "nnunet_preprocessed" / name
    nn_plans = json.loads((nn_root / "nnUNetPlans.json").read_text())
    nc = nn_plans["configurations"]["3d_fullres"]
    q["nnunet"] = {"spacing": nc["spacing"], "normalization_schemes": nc["normalization_schemes"],
                   "use_mask_for_norm": nc["use_mask_for_norm"], "patch_size": nc["patch_size"],
                   "median_image_size_in_voxels": nc["median_image_size_in_voxels"],
                   "transpose_forward": nn_plans["transpose_forward"],
                   "resampling_fn_data": nc.get("resampling_fn_data"),
                   "resampling_fn_data_kwargs": nc.get("resampling_fn_data_kwargs"),
                   "resampling_fn_seg_kwargs": nc.get("resampling_fn_seg_kwargs")}
    q["same_spacing"] = bool(np.allclose(pc["spacing"], nc["spacing"]))
    q["same_normalization"] = pc["normalization_schemes"] == nc["normalization_schemes"]
    q["same_use_mask_for_norm"] = pc["use_mask_for_norm"] == nc["use_mask_for_norm"]
    q["note"] = ("nnU-Net arrays are stored (C, *transposed axes) with transpose_forward "
                 f"{nn_plans['transpose_forward']}; pirl stores (C, z, y, x). They are compared as stored, "
                 "which is the same axis order only when transpose_forward is [0, 1, 2].")
    if nn_plans["transpose_forward"] != [0, 1, 2]:
        q["note"] += " transpose_forward is not the identity here: the voxel comparison is skipped."
        return q
    distinct = [c for c, m in dataset["cases"].items() if m["replica_of"] is None]
    spec = {"cases": distinct, "pirl_folder": str(pirl_folder), "nnunet_folder": str(nn_root / nc["data_identifier"])}
    q["arrays"] = run_internal(str(args.nnunet_venv / "bin" / "python"), "compare", spec, cwd=work)
    return q


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " See the module docstring for what is measured and how.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-np", type=int, nargs="+", default=[2], dest="num_processes",
                   help="process counts to measure (each tool gets the same -np; nnU-Net also -npfp)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per tool and -np (median reported)")
    p.add_argument("--replicate", type=int, nargs="+", default=[1],
                   help="each real case appears this many times (symlinks, other case names); several values run "
                        "several dataset sizes and fit time = fixed + per_case * cases (marginal throughput)")
    p.add_argument("--dataset-id", type=int, default=990, help="dataset id used in the work folder")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="shared real data")
    p.add_argument("--workdir", type=Path, default=RESULTS / "preprocess_work",
                   help="raw/preprocessed folders of both tools (deleted and rebuilt)")
    p.add_argument("--json-out", type=Path, default=RESULTS / "preprocess.json", help="results JSON")
    p.add_argument("--pirl-python", default=sys.executable, help="interpreter with pirl installed")
    p.add_argument("--nnunet-venv", type=Path, default=RESULTS / "nnunet_venv",
                   help="separate venv holding nnunetv2")
    p.add_argument("--no-install", action="store_true", help="do not try to install nnunetv2 when missing")
    p.add_argument("--no-nnunet", action="store_true", help="benchmark pirl alone")
    p.add_argument("--nnunet-integrity", choices=["on", "off", "both"], default="on",
                   help="nnU-Net's --verify_dataset_integrity (pirl checks by default, so 'on' is the fair one)")
    p.add_argument("--profile", action="store_true",
                   help="also time each per-case step of both tools in one process, and their import times")
    p.add_argument("--profile-repeats", type=int, default=2, help="calls per step in --profile (median)")
    p.add_argument("--resample-check", nargs="+", default=[], metavar="Z,Y,X",
                   help="target spacings (e.g. 1.5,1.5,1.5 3.5,1,1) at which both tools' preprocessing alone is run "
                        "and compared voxel-wise: the real cases are 1 mm isotropic, so the plain run never resamples")
    p.add_argument("--poll-interval", type=float, default=0.1, help="seconds between memory samples")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    work = args.workdir.resolve()
    args.nnunet_venv = args.nnunet_venv.resolve()
    for sub in ("raw", "pirl_preprocessed", "nnunet_preprocessed", "results", "logs", "tmp"):
        shutil.rmtree(work / sub, ignore_errors=True)
        (work / sub).mkdir(parents=True)
    nn_ok, nn_why = (False, "--no-nnunet given") if args.no_nnunet else \
        nnunet_available(args.nnunet_venv, not args.no_install, work / "logs" / "nnunet_install.log")
    print(("nnU-Net: " if nn_ok else "nnU-Net is left out: ") + nn_why, flush=True)

    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("PIRL_", "nnUNet_"))}
    env = {**base_env, "PIRL_raw": str(work / "raw"), "PIRL_preprocessed": str(work / "pirl_preprocessed"),
           "PIRL_results": str(work / "results"), "nnUNet_raw": str(work / "raw"),
           "nnUNet_preprocessed": str(work / "nnunet_preprocessed"), "nnUNet_results": str(work / "results")}
    tools = [("pirl", "pirl (integrity check on)", False)]
    if nn_ok:
        if args.nnunet_integrity in ("on", "both"):
            tools.append(("nnunet", "nnU-Net (--verify_dataset_integrity)", True))
        if args.nnunet_integrity in ("off", "both"):
            tools.append(("nnunet", "nnU-Net (no integrity check)", False))

    rows, datasets = [], []
    for replicate in args.replicate:
        dataset = build_dataset(args.data, work / "raw", args.dataset_id, replicate)
        datasets.append(dataset)
        n_cases = dataset["num_cases"]
        print(f"dataset {dataset['name']}: {n_cases} cases = {dataset['distinct_cases']} real cases x "
              f"{replicate} (replicas are symlinks under other names); labels: {dataset['labels']}", flush=True)
        for n in args.num_processes:
            group = [{"tool": t, "label": label, "verify": v, "np": n, "cases": n_cases, "replicate": replicate,
                      "runs": []} for t, label, v in tools]
            for rep in range(args.repeats):  # interleaved, so slow drift hits every tool alike
                for row in group:
                    out = work / ("pirl_preprocessed" if row["tool"] == "pirl" else "nnunet_preprocessed")
                    shutil.rmtree(out / dataset["name"], ignore_errors=True)
                    cmd = tool_commands(args, row["tool"], args.dataset_id, n, row["verify"])
                    log = work / "logs" / (f"{row['tool']}{'_verify' if row['verify'] else ''}_{n_cases}cases_"
                                           f"np{n}_run{rep}.log")
                    result = measure(cmd, env, log, args.poll_interval, REPO, phase_markers(row["tool"], row["verify"]))
                    row["runs"].append(result)
                    status = "ok" if result["rc"] == 0 else f"FAILED rc={result['rc']}:\n{tail(result['log'])}"
                    print(f"  {row['label']:<36} {n_cases} cases -np {n} run {rep + 1}/{args.repeats}: "
                          f"{result['seconds']:.2f} s, peak PSS {result['peak_tree_pss_mb']:.0f} MB  {status}",
                          flush=True)
            for row in group:
                row["summary"] = summarise(row["runs"], n_cases)
            rows.extend(group)

    print_table(rows, f"plan_and_preprocess on {dataset['distinct_cases']} real cases x {args.replicate} (replicas: "
                      f"symlinks), {os.cpu_count()} CPUs, median of {args.repeats}; peak MB = peak summed PSS of the "
                      "process tree")
    print_phases(rows)
    loads = [x for r in rows for run in r["runs"] for x in (run["load_average_1min_before"],
                                                              run["load_average_1min_after"])]
    if loads and max(loads) > (os.cpu_count() or 1):
        print(f"\nWARNING: 1-min load average reached {max(loads):.1f} on {os.cpu_count()} CPUs during the runs: other "
              "processes competed for the CPUs, so absolute times are inflated; the tools were interleaved, so "
              "their ratio is the more robust number.")
    ratios = {}
    for pirl_row in (r for r in rows if r["tool"] == "pirl" and "median_seconds" in r["summary"]):
        for r in rows:
            if r["tool"] == "nnunet" and r["np"] == pirl_row["np"] and r["cases"] == pirl_row["cases"] \
                    and "median_seconds" in r["summary"]:
                ratio = r["summary"]["median_seconds"] / pirl_row["summary"]["median_seconds"]
                ratios[f"{r['cases']} cases, np{r['np']}: pirl / {r['label']}"] = ratio
                print(f"throughput ratio pirl / {r['label']}, {r['cases']} cases, -np {r['np']}: {ratio:.2f}x "
                      "(goal >= 1.5x)")
    scaling = fit_scaling(rows)
    for key, fit in scaling.items():
        print(f"scaling {key}: wall = {fit['fixed_seconds']:.1f} s + {fit['seconds_per_case']:.2f} s x cases "
              f"(marginal {fit['marginal_cases_per_second']:.3f} cases/s); CPU = {fit['fixed_cpu_seconds']:.1f} s + "
              f"{fit['cpu_seconds_per_case']:.2f} s x cases")
    for n in args.num_processes:
        pirl_fit = scaling.get(f"pirl (integrity check on) -np {n}")
        for key, fit in scaling.items():
            if pirl_fit and key.startswith("nnU-Net") and key.endswith(f"-np {n}"):
                ratio = fit["seconds_per_case"] / pirl_fit["seconds_per_case"]
                cpu_ratio = fit["cpu_seconds_per_case"] / pirl_fit["cpu_seconds_per_case"]
                ratios[f"marginal per case, np{n}: pirl / {key}"] = ratio
                ratios[f"marginal CPU per case, np{n}: pirl / {key}"] = cpu_ratio
                print(f"marginal (per extra case) ratio pirl / {key}: wall {ratio:.2f}x, CPU {cpu_ratio:.2f}x "
                      "(nnU-Net draws 1e8 intensity samples in total whatever the case count, so its fingerprint "
                      "cost is mostly in 'fixed' and spreads better over more workers as cases grow: its wall "
                      "slope is biased low; under CPU contention trust the CPU slope)")

    q = None
    pirl_done = any(r["tool"] == "pirl" and r["runs"][-1]["rc"] == 0 for r in rows)
    nn_done = nn_ok and any(r["tool"] == "nnunet" and r["runs"][-1]["rc"] == 0 for r in rows)
    if pirl_done:
        q = quality(args, work, dataset, nn_done)
        print_quality(q)

    checks = []
    if args.resample_check and pirl_done and nn_done:
        for i, text in enumerate(args.resample_check):
            checks.append(resample_check(args, work, dataset, env, [float(v) for v in text.split(",")], i))
            print_resample_check(checks[-1])

    profile = None
    if args.profile and pirl_done:
        profile = run_profile(args, work, dataset, nn_done, env)
        print_profile(profile)

    report = {"datasets": datasets, "cpus": os.cpu_count(), "repeats": args.repeats, "scaling": scaling,
              "nnunet": {"available": nn_ok, "detail": nn_why, "venv": str(args.nnunet_venv)},
              "memory_method": f"peak over /proc polling every {args.poll_interval:.2f} s of the summed PSS (and "
                               "RSS) of the CLI process and all its descendants; single-process peak from wait4 "
                               "rusage ru_maxrss (= /usr/bin/time -v)",
              "results": rows, "throughput_ratio_pirl_over_nnunet": ratios, "quality": q, "resample_checks": checks,
              "profile": profile}
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nJSON: {args.json_out}")
    return 0 if pirl_done else 1


def resample_check(args, work: Path, dataset: dict, env: dict, spacing: list[float], index: int) -> dict:
    """Preprocessing only (no fingerprint/planning), both tools, at a forced target spacing; then compare."""
    name, n = dataset["name"], max(args.num_processes)
    ident = f"resample{index}_3d_fullres"
    nn_root = work / "nnunet_preprocessed" / name
    nn_plans = json.loads((nn_root / "nnUNetPlans.json").read_text())
    nn_plans["plans_name"] = f"nnUNetPlansResample{index}"
    cfg = nn_plans["configurations"]["3d_fullres"]
    cfg["spacing"], cfg["data_identifier"] = spacing, ident
    (nn_root / f"nnUNetPlansResample{index}.json").write_text(json.dumps(nn_plans, indent=2))
    spec = {"raw_folder": str(work / "raw" / name), "plans_file": str(work / "pirl_preprocessed" / name /
                                                                        "PIRLPlans.json"),
            "spacing": spacing, "data_identifier": ident, "out": str(work / "pirl_preprocessed" / name),
            "num_processes": n}
    runs = {}
    for tool in ("pirl", "nnunet"):
        if tool == "pirl":
            cmd = [args.pirl_python, str(INTERNAL_SCRIPT), "preprocess_pirl", json.dumps(spec)]
            markers = [("preprocess:   0%", "preprocessing")]
        else:
            cmd = [str(args.nnunet_venv / "bin" / "nnUNetv2_preprocess"), "-d", str(args.dataset_id),
                   "-plans_name", f"nnUNetPlansResample{index}", "-c", "3d_fullres", "-np", str(n)]
            markers = [("Preprocessing cases:   0%", "preprocessing")]
        shutil.rmtree(work / f"{tool}_preprocessed" / name / ident, ignore_errors=True)
        runs[tool] = measure(cmd, env, work / "logs" / f"{tool}_resample{index}.log", args.poll_interval, REPO,
                             markers)
        print(f"  resample check {spacing}: {tool} preprocessing only, -np {n}: {runs[tool]['seconds']:.2f} s "
              f"(rc {runs[tool]['rc']})", flush=True)
    out = {"spacing": spacing, "num_processes": n, "runs": runs}
    if all(r["rc"] == 0 for r in runs.values()):
        distinct = [c for c, m in dataset["cases"].items() if m["replica_of"] is None]
        out["arrays"] = run_internal(str(args.nnunet_venv / "bin" / "python"), "compare",
                                     {"cases": distinct, "pirl_folder": str(work / "pirl_preprocessed" / name / ident),
                                      "nnunet_folder": str(nn_root / ident)}, cwd=work)
    return out


def run_profile(args, work: Path, dataset: dict, nn_done: bool, env: dict) -> dict:
    distinct = [c for c, m in dataset["cases"].items() if m["replica_of"] is None]
    name = dataset["name"]
    out = {"note": f"one process, SimpleITK threads as a pirl worker at -np {max(args.num_processes)} gets"}
    threads = max(1, (os.cpu_count() or 1) // max(1, min(max(args.num_processes), dataset["num_cases"])))
    spec = {"raw_folder": str(work / "raw" / name), "cases": distinct, "repeats": args.profile_repeats,
            "num_cases": dataset["num_cases"],
            "tmp": str(work / "tmp"), "threads": threads,
            "plans_file": str(work / "pirl_preprocessed" / name / "PIRLPlans.json")}
    out["pirl"] = run_internal(args.pirl_python, "profile_pirl", spec, cwd=REPO, env=env)
    out["import_seconds"] = {"pirl": import_seconds(args.pirl_python, "pirl_pipeline.cli.plan_and_preprocess")}
    if nn_done:
        nn_python = str(args.nnunet_venv / "bin" / "python")
        spec = {**spec, "plans_file": str(work / "nnunet_preprocessed" / name / "nnUNetPlans.json")}
        out["nnunet"] = run_internal(nn_python, "profile_nnunet", spec, cwd=work, env=env)
        out["import_seconds"]["nnunet"] = import_seconds(
            nn_python, "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
