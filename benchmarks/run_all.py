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
import platform
import subprocess
import sys
import time
from pathlib import Path

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


# ------------------------------------------------------------------------------------------------ machine
def machine() -> dict:
    info: dict = {"host_cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    try:
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["ram_gib"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    info.setdefault("cpu", platform.processor() or platform.machine())
    versions = {}
    for module in ("torch", "monai", "numpy", "SimpleITK", "batchgenerators", "batchgeneratorsv2"):
        try:
            from importlib.metadata import version

            versions[module] = version(module)
        except Exception:  # noqa: BLE001 - a missing package is reported as such
            versions[module] = "not installed"
    info["versions"] = versions
    import torch

    info["torch_threads"] = torch.get_num_threads()
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return info


# ------------------------------------------------------------------------------------------------- report
def load_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def f(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def section_preprocess(d: dict) -> list[str]:
    lines = [("Wall time of the whole CLI (fingerprint + planning + preprocessing) on real 4-modality BraTS cases, "
             f"median of {d.get('repeats')} runs per row (tools interleaved); peak memory = peak summed PSS of the "
             f"process tree. nnU-Net: {d.get('nnunet', {}).get('detail')}."), ""]
    rows = []
    for r in d.get("results", []):
        s = r.get("summary", {})
        loads = s.get("load_average_1min") or []
        rows.append([r.get("label"), r.get("cases"), r.get("np"), f(s.get("median_seconds")),
                     f"{f(s.get('min_seconds'))}–{f(s.get('max_seconds'))}", f(s.get("cases_per_second"), 3),
                     f(s.get("median_cpu_seconds"), 1), f(s.get("peak_tree_pss_mb"), 0),
                     f"{f(min(loads), 1)}–{f(max(loads), 1)}" if loads else "–"])
    lines += table(["tool", "cases", "-np", "median s", "min–max s", "cases/s", "CPU s", "peak MB", "load 1 min"],
                   rows)
    ratios = d.get("throughput_ratio_pirl_over_nnunet") or {}
    if ratios:
        lines += ["", "Ratios (nnU-Net time / pirl time; > 1: pirl faster; goal >= 1.5x):", ""]
        lines += [f"- {k}: **{v:.2f}x**" for k, v in ratios.items()]
    for key, fit in (d.get("scaling") or {}).items():
        lines.append(f"- scaling {key}: wall = {fit['fixed_seconds']:.1f} s + {fit['seconds_per_case']:.2f} s x cases")
    q = d.get("quality") or {}
    if "same_spacing" in q:
        cases = [c for c in q.get("arrays", {}).get("cases", {}).values() if "data_max_abs_diff" in c]
        arrays = ""
        if cases:
            arrays = (f"; preprocessed arrays of {len(cases)} cases: max |difference| "
                      f"{max(c['data_max_abs_diff'] for c in cases):.2g}, mean |difference| <= "
                      f"{max(c['data_mean_abs_diff'] for c in cases):.2g}, "
                      f"{sum(c.get('data_voxels_differing_gt_1e-3', 0) for c in cases)} voxels differ by > 1e-3, seg "
                      f"differs in {sum(c.get('seg_voxels_differing', 0) for c in cases)} voxels")
        lines += ["", (f"Same result: target spacing {q['same_spacing']}, normalisation {q['same_normalization']}, "
                      f"mask use {q['same_use_mask_for_norm']}{arrays}.")]
    return lines


def section_loader(d: dict) -> list[str]:
    lines = [(f"Batches/s of `make_train_loader` (no network), patch {d.get('patch_size')}, batch {d.get('batch_size')}, "
             f"{d.get('channels')} channels, {d.get('source')} data, torch threads {d.get('torch_threads')}; one "
             f"measurement of {d.get('batches_measured')} batches per cell after a warm-up (mean rate, no repeats)."),
             ""]
    results = d.get("results", [])
    workers = sorted({r["num_workers"] for r in results})
    settings = list(dict.fromkeys(r["augmentation"] for r in results))
    rows = []
    for s in settings:
        rate = {r["num_workers"]: r["batches_per_s"] for r in results if r["augmentation"] == s}
        rows.append([s] + [f(rate.get(w)) for w in workers])
    return lines + table(["augmentation"] + [f"workers={w}" for w in workers], rows)


def section_step(d: dict) -> list[str]:
    st = d.get("settings", {})
    lines = [(f"One AdamW step, batch {st.get('batch')}, {st.get('views')} views, device {st.get('device')}, torch "
             f"threads {st.get('torch_threads')}; median of {st.get('repeats')} timed steps per method (after a "
             "warm-up, methods alternated in one process); memory = peak RSS of a fresh process per method. Floor: "
             "4 forward+backward passes of a plain SwinUNETR (4 -> 4 channels). Ratio = PIRL / floor."), ""]
    rows = []
    for r in d.get("rows", []):
        fl, pi = r["floor"], r["pirl"]
        rows.append([r["feature_size"], f"{r['patch']}³", f(fl.get("median_s")), f(pi.get("median_s")),
                     f"**{f(r.get('time_ratio'))}**", f(r.get("cpu_time_ratio")), f(fl.get("peak_mib"), 0),
                     f(pi.get("peak_mib"), 0), f(r.get("memory_ratio"))])
    return lines + table(["fs", "patch", "floor s", "PIRL s", "time ratio", "CPU-time ratio", "floor MiB", "PIRL MiB",
                          "memory ratio"], rows)


def section_predict(d: dict) -> list[str]:
    st, case, s = d["settings"], d["case"], d["summary"]
    fl, pi, r = s["floor"], s["pirl"], s["ratios"]
    roi = "x".join(map(str, st["roi"]))
    lines = [(f"Case {case['name']} (x y z {'x'.join(map(str, case['shape'][::-1]))}, {case['channels']} channels; "
             f"preprocessed z y x {'x'.join(map(str, case['preprocessed_shape'][1:]))}), model fs {st['fs']}, roi {roi} "
             f"({fl['windows']} windows), overlap {st['overlap']:.2f}, Gaussian, sw_batch_size 1, TTA off, "
             f"{st.get('attention', 'plain (MONAI)')} attention, "
             f"{st['device']}, torch threads {d.get('torch_threads')}; median of {st['repeats']} run(s), floor and "
             f"pirl interleaved, each in a fresh process. Model weights: {d['model']['weights']}."), "",
             ("Floor = `sliding_window_inference` on the already-preprocessed array with pirl's network wrapper "
             "(`window_predictor`); pirl = `PIRLPredictor.read_case` + `predict_case` + `export`, what "
             "`pirl_predict` does per case. Peak RSS: floor during the window loop, pirl over the case."), ""]
    rows = [["floor: MONAI sliding window", f(fl["median_seconds"]), f(fl["median_cpu_seconds"]),
             f(fl["peak_rss_sliding_window_mib"], 0), "1.00"],
            ["**pirl per case**", f(pi["median_seconds"]), f(pi["median_cpu_seconds"]), f(pi["peak_rss_case_mib"], 0),
             f"**{r['pirl_per_case_over_floor']:.3f}**"]]
    for phase, row in pi["phases"].items():
        if phase != "load model":
            rows.append([f"&nbsp;&nbsp;{phase}", f(row["median_seconds"]), f(row["median_cpu_seconds"]),
                         f(row["peak_rss_mib"], 0), f(row["median_seconds"] / fl["median_seconds"], 3)])
    lm = pi["phases"]["load model"]
    rows.append(["pirl: load model folder (once per run)", f(lm["median_seconds"]), f(lm["median_cpu_seconds"]),
                 f(lm["peak_rss_mib"], 0), ""])
    cli = d.get("cli")
    if isinstance(cli, dict):  # files of the earlier layout: one CLI run
        cli = [cli]
    if cli:
        seconds = s.get("cli", {}).get("median_seconds", cli[-1]["seconds"])
        rows.append([f"`pirl_predict` end to end (median of {len(cli)})", f(seconds), f(cli[-1]["cpu_seconds"]),
                     f(cli[-1]["peak_tree_rss_mb"], 0) + " (RSS)", f(r["cli_over_floor"], 3)])
        for phase, phase_seconds in cli[-1]["phase_seconds"].items():
            rows.append([f"&nbsp;&nbsp;{phase} (last run)", f(phase_seconds), "", "", ""])
    lines += table(["", "wall s", "CPU s", "peak RSS MiB", "x floor"], rows)
    equal = (fl["median_seconds"] + r["pirl_overhead_seconds"]) / fl["median_seconds"]
    lines += ["", (f"- pirl / floor: **{r['pirl_per_case_over_floor']:.3f}x** wall, "
                   f"{r['pirl_per_case_over_floor_cpu']:.3f}x CPU time; goal <= 1.1x "
                   f"**{'met' if s['goal_met'] else 'NOT met'}**. pirl's window loop alone: "
                   f"{r['pirl_sliding_window_over_floor']:.3f}x the floor (the same MONAI call on the same array: "
                   f"differences are load noise); everything else (read, preprocess, restore, export): "
                   f"{r['pirl_overhead_seconds']:.2f} s, i.e. **{equal:.3f}x** the floor when both window loops cost "
                   f"the same. Peak memory {r['pirl_peak_rss_over_floor']:.2f}x.")]
    if "cli_over_pirl" in r:
        lines.append(f"- `pirl_predict` CLI / API per case: **{r['cli_over_pirl']:.3f}x** wall "
                     f"({r['cli_over_pirl_cpu']:.3f}x CPU time; interpreter start, imports and model loading "
                     f"included); goal <= 1.05x **{'met' if s['cli']['goal_met'] else 'NOT met'}**.")
    a = d.get("attention")
    if a:
        lines.append(f"- Fused vs MONAI's window attention, `predict_volume` on a {'x'.join(map(str, a['crop']))} crop, "
                     f"alternated {len(a['runs']['plain'])}x: {a['median']['plain']['seconds']:.1f} s -> "
                     f"{a['median']['fused']['seconds']:.1f} s = **{a['gain']:.2f}x** ({a['cpu_gain']:.2f}x CPU time); "
                     f"outputs equal to {a['max_abs_difference']:.1e}.")
    t = s.get("tta")
    if t:
        sw = pi["phases"]["sliding window"]["median_seconds"]
        cpu_estimate = pi["median_seconds"] - sw + sw * t["cpu_factor"]
        lines.append(f"- TTA (mirroring, 8 passes), measured with `predict_volume` on a centred "
                     f"{'x'.join(map(str, t['crop']))} crop: {t['no_tta']['seconds']:.1f} s -> "
                     f"{t['tta']['seconds']:.1f} s = **{t['factor']:.2f}x** wall ({t['cpu_factor']:.2f}x CPU time); "
                     f"estimated whole case with TTA: {t['estimated_full_case_seconds'] / 60:.0f} min from the wall "
                     f"factor, {cpu_estimate / 60:.0f} min from the CPU-time factor.")
    ch = d.get("checks", {})
    if "max_abs_logit_difference" in ch:
        lines.append(f"- Checks: pirl's window-loop output vs the floor's: max |difference| "
                     f"{ch['max_abs_logit_difference']:.3g}"
                     + (f"; the CLI's label map equals the API's: {ch['cli_labels_equal_api']}"
                        if "cli_labels_equal_api" in ch else "") + ".")
    la = d.get("load_average_1min", {})
    lines.append(f"- 1-minute load average {f(la.get('start'))} at start, {f(la.get('end'))} at end, max "
                 f"{f(la.get('max'))} (on {d['machine'].get('cpu_count')} CPUs).")
    return lines


SECTIONS = {"preprocess": section_preprocess, "loader": section_loader, "step": section_step,
            "predict": section_predict}


def write_report(runs: dict) -> Path:
    m = machine()
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


def headline(name: str, d: dict) -> list[str]:
    try:
        if name == "preprocess":
            rows = [r for r in d["results"] if r["tool"] == "pirl" and "median_seconds" in r["summary"]]
            pirl = max(rows, key=lambda r: r["cases"])
            ratios = {k: v for k, v in (d.get("throughput_ratio_pirl_over_nnunet") or {}).items()
                      if k.startswith(f"{pirl['cases']} cases, np{pirl['np']}:")}
            text = f"pirl {pirl['summary']['median_seconds']:.1f} s for {pirl['cases']} cases (-np {pirl['np']})"
            ratio = "; ".join(f"{v:.2f}x nnU-Net's throughput ({k.split(': ', 1)[1].split(' / ', 1)[1]})"
                              for k, v in ratios.items()) or "nnU-Net not measured"
            return [text, ratio, "pirl >= 1.5x nnU-Net's throughput"]
        if name == "loader":
            best = max(d["results"], key=lambda r: r["batches_per_s"] if r["augmentation"] == "nnunet_default" else 0)
            return [f"nnU-Net-default augmentation: {best['batches_per_s']:.2f} batches/s (workers={best['num_workers']})",
                    "–", "–"]
        if name == "step":
            return ["; ".join(f"fs {r['feature_size']} {r['patch']}³: PIRL {r['pirl']['median_s']:.1f} s"
                              for r in d["rows"]),
                    "; ".join(f"{r['time_ratio']:.2f}x time, {r['memory_ratio']:.2f}x memory" for r in d["rows"]),
                    "PIRL step vs 4 SwinUNETR passes"]
        if name == "predict":
            s = d["summary"]
            tta = s.get("tta")
            return [f"pirl {s['pirl']['median_seconds']:.0f} s per case vs floor {s['floor']['median_seconds']:.0f} s"
                    + (f"; TTA x{tta['factor']:.1f}" if tta else ""),
                    f"{s['ratios']['pirl_per_case_over_floor']:.3f}x ({'met' if s['goal_met'] else 'NOT met'})",
                    "<= 1.1x the floor (TTA off)"]
    except (KeyError, TypeError, ValueError, StopIteration):
        pass
    return ["see below", "", ""]


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
