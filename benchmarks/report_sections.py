"""The sections of ``benchmarks/RESULTS.md``: one markdown builder per benchmark's JSON, and the headline row
of each (``run_all`` runs the benchmarks and assembles the report)."""
from __future__ import annotations

from pirl_pipeline.report.markdown import table as markdown_table


def table(header: list[str], rows: list[list]) -> list[str]:
    """The lines of a markdown table (``report.markdown.table``) of cells written as given (``str``)."""
    return markdown_table(header, [[str(c) for c in row] for row in rows]).split("\n")


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
                 f"{f(la.get('max'))} (on {_cpus(d['machine'])} CPUs).")
    return lines


SECTIONS = {"preprocess": section_preprocess, "loader": section_loader, "step": section_step,
            "predict": section_predict}


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


def _cpus(machine: dict) -> int | None:
    """CPUs of a benchmark's ``machine`` record (``benchmarks.machine``; older results say ``cpu_count``)."""
    return machine.get("usable_cpus") or machine.get("host_cpus") or machine.get("cpu_count")
