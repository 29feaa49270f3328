"""Run every benchmark, then summarise their JSON results into ``benchmarks/RESULTS.md``.

    python -m benchmarks.run_all                      # all four, settings for ~30-40 min on 2 CPU cores
    python -m benchmarks.run_all --only predict step  # some of them (the others' JSON stay as they are)
    python -m benchmarks.run_all --full               # the full versions (several hours on 2 CPU cores)
    python -m benchmarks.run_all --report-only        # no runs: RESULTS.md from the JSON already there

Benchmarks (each also runs alone, see its ``--help``):
- ``preprocess``: ``pirl_plan_and_preprocess`` vs ``nnUNetv2_plan_and_preprocess`` (nnU-Net lives in its own
  venv, created on first use: a few minutes and a download of nnunetv2 + torch-CPU from PyPI);
- ``loader``: training-loader throughput (batches/s) per augmentation setting and worker count;
- ``step``: one PIRL pre-training step vs 4 forward+backward passes of a plain SwinUNETR;
- ``predict``: per-case prediction vs MONAI's sliding window alone on the preprocessed array, TTA cost.
Each benchmark's output is copied to ``benchmarks/results/logs/NAME.txt``; the time, command, exit status
and 1-minute load average before/after of every run go to ``benchmarks/results/run_all.json``, which the
report reads with the benchmarks' own JSON files (``benchmarks/results/*.json``, git-ignored).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.machine import machine_info
from benchmarks.report_sections import SECTIONS, headline, table

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
REPORT = REPO / "benchmarks" / "RESULTS.md"
RUNS = RESULTS / "run_all.json"
KEEP_MARKER = "<!-- hand-written sections below: kept by run_all -->"

# name -> (arguments for `make bench`, arguments for --full, JSON it writes, what it measures)
BENCHMARKS = {
    "preprocess": (["-np", "2", "--repeats", "3", "--profile"],
                   ["-np", "1", "2", "--repeats", "3", "--replicate", "1", "4", "--profile", "--nnunet-integrity",
                    "both", "--resample-check", "1.5,1.5,1.5", "3.5,1,1"],
                   "preprocess.json", "plan + preprocess, pirl vs nnU-Net v2"),
    "loader": (["--workers", "0", "1", "2", "--batches", "12"],
               ["--workers", "0", "1", "2", "--batches", "50"],
               "loader.json", "training-loader throughput"),
    "step": (["--sizes", "12:64", "24:64", "--repeats", "2"],
             ["--sizes", "12:64", "24:64", "12:96", "24:96", "--repeats", "5"],
             "step.json", "one PIRL pre-training step vs plain SwinUNETR passes"),
    "predict": (["--repeats", "1"],
                ["--repeats", "3", "--tta-crop", "144", "144", "144"],
                "predict.json", "per-case prediction vs MONAI sliding window"),
}


# ------------------------------------------------------------------------------------------------ running
def run_benchmark(name: str, extra: list[str]) -> dict:
    logs = RESULTS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", f"benchmarks.{name}", *extra]
    print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
    entry = {"command": " ".join(["python", *cmd[1:]]), "started": now(), "load_1min_before": os.getloadavg()[0],
             "log": rel(logs / f"{name}.txt")}
    start = time.perf_counter()
    with open(logs / f"{name}.txt", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            log.write(line)
        rc = proc.wait()
    entry |= {"rc": rc, "seconds": time.perf_counter() - start, "load_1min_after": os.getloadavg()[0]}
    print(f"=== {name}: {'ok' if rc == 0 else f'FAILED (rc {rc})'} in {entry['seconds'] / 60:.1f} min", flush=True)
    return entry


def rel(path: Path) -> str:
    """``path`` relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------------- report
def load_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_report(runs: dict) -> Path:
    m = machine_info()
    intro = ["# Benchmark results", "",
             (f"Generated {now()} by `python -m benchmarks.run_all --report-only` (`make bench` runs the benchmarks "
             "first, then this) from the JSON files in `benchmarks/results/` (git-ignored). How to run each "
             "benchmark, and its full version: `benchmarks/README.md`."), ""]
    lines = ["## Machine", ""]
    lines += table(["", ""], [
        ["CPU", m.get("cpu")], ["CPUs (usable)", f"{m.get('host_cpus')} ({m.get('usable_cpus', '?')})"],
        ["RAM", f"{m.get('ram_gib')} GiB"], ["GPU", m.get("gpu", "?")], ["Python", m["python"]],
        ["packages", ", ".join(f"{k} {v}" for k, v in m["versions"].items())],
        ["torch threads", m.get("torch_threads")], ["platform", m["platform"]],
        ["load average at report time (1/5/15 min)", " / ".join(f"{x:.2f}" for x in os.getloadavg())]])
    session = runs.get("session")
    if session:
        lines += ["", f"Last `run_all` session ({session.get('mode')}: {', '.join(session.get('only', []))}): "
                      f"started {session['started']}, load average 1/5/15 min "
                      f"{' / '.join(f'{x:.2f}' for x in session['load_start'])}; ended {session.get('ended', '(did not end)')}"
                      + (f", load average {' / '.join(f'{x:.2f}' for x in session['load_end'])}"
                         if session.get("load_end") else "") + "."]
    lines += ["", ("**This machine is shared**: other jobs may load the CPUs while a benchmark runs (load averages "
                  "are recorded per run below and in the JSON). A load average above the CPU count inflates wall "
                  "times; the methods compared inside one benchmark are interleaved, so their ratios (and CPU-time "
                  "ratios) are the more robust numbers. Medians are over the repeats each benchmark was run with."),
              ""]

    summary_rows = []
    for name, (_, _, json_name, what) in BENCHMARKS.items():
        path = RESULTS / json_name
        run = runs.get("benchmarks", {}).get(name)
        lines += [f"## {name}: {what}", ""]
        data = load_json(path)
        if data is None:
            lines += [(f"No results (`{rel(path)}` missing or unreadable): run "
                      f"`python -m benchmarks.{name}` or `python -m benchmarks.run_all --only {name}`."), ""]
            summary_rows.append([name, "no results", "", ""])
            continue
        stamp = dt.datetime.fromtimestamp(path.stat().st_mtime).astimezone().isoformat(timespec="seconds")
        how = f"`{rel(path)}`, written {stamp}"
        if run:
            status = "ok" if run["rc"] == 0 else f"FAILED rc {run['rc']}: the JSON may be from an earlier run"
            how += (f"; last run by run_all: `{run['command']}` ({status}, {run['seconds'] / 60:.1f} min, load "
                    f"average {run['load_1min_before']:.2f} before, {run['load_1min_after']:.2f} after; log "
                    f"`{run['log']}`)")
        lines += [f"Source: {how}.", ""]
        try:
            lines += SECTIONS[name](data)
        except (KeyError, TypeError, ValueError, IndexError) as err:
            lines += [(f"(could not summarise {json_name}: {type(err).__name__}: {err}; the file's layout may be "
                      "from another version of the benchmark)")]
        lines.append("")
        summary_rows.append([name, *headline(name, data)])
    others = sorted(p.name for p in RESULTS.glob("*.json")
                    if p.name not in {b[2] for b in BENCHMARKS.values()} and p.name != RUNS.name)
    if others:
        lines += ["Other JSON files in `benchmarks/results/` (variants run by hand, not summarised): "
                  + ", ".join(f"`{o}`" for o in others) + ".", ""]
    glance = ["## At a glance", ""] + table(["benchmark", "result", "ratio", "goal"], summary_rows) + [""]
    kept = []  # dated hand-written sections (measurements outside make bench) survive a regeneration
    if REPORT.is_file() and KEEP_MARKER in REPORT.read_text():
        kept = ["", KEEP_MARKER + REPORT.read_text().split(KEEP_MARKER, 1)[1].rstrip()]
    REPORT.write_text("\n".join(intro + glance + lines).rstrip() + "\n" + "\n".join(kept) + ("\n" if kept else ""))
    return REPORT


# --------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--report-only", action="store_true", help="only write RESULTS.md from the existing JSON")
    p.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS), help="benchmarks to run")
    p.add_argument("--full", action="store_true", help="the full (slow) settings of every benchmark")
    args = p.parse_args(argv)
    runs = load_json(RUNS) or {}
    failed = []
    if not args.report_only:
        runs["session"] = {"started": now(), "load_start": list(os.getloadavg()), "mode": "full" if args.full else
                           "make bench (quick)", "only": args.only}
        runs.setdefault("benchmarks", {})
        for name in args.only:
            quick, full, _, _ = BENCHMARKS[name]
            entry = run_benchmark(name, full if args.full else quick)
            runs["benchmarks"][name] = entry
            if entry["rc"] != 0:
                failed.append(name)
            RESULTS.mkdir(parents=True, exist_ok=True)
            RUNS.write_text(json.dumps(runs, indent=2) + "\n")
        runs["session"] |= {"ended": now(), "load_end": list(os.getloadavg()), "failed": failed}
        RUNS.write_text(json.dumps(runs, indent=2) + "\n")
    path = write_report(runs)
    print(f"\nwrote {rel(path)}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
