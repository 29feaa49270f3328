"""The summary (ratios against the floor, goals) and the printed table of ``benchmarks.predict``."""
from __future__ import annotations

import os
import statistics

GOAL = 1.1  # pirl per case / MONAI's bare sliding window (TTA off)
CLI_GOAL = 1.05  # pirl_predict end to end / the per-case API


def median(values: list[float]) -> float:
    return statistics.median(values)


def summarise(args, floor_runs: list[dict], pirl_runs: list[dict], cli: dict | None, tta: dict | None) -> dict:
    floor_s = median([r["seconds"] for r in floor_runs])
    pirl_s = median([r["seconds"] for r in pirl_runs])
    phase_names = list(pirl_runs[0]["phases"])
    phases = {p: {"median_seconds": median([r["phases"][p]["seconds"] for r in pirl_runs]),
                  "median_cpu_seconds": median([r["phases"][p]["cpu_seconds"] for r in pirl_runs]),
                  "peak_rss_mib": max(r["phases"][p]["peak_rss_mib"] or 0 for r in pirl_runs)} for p in phase_names}
    out = {
        "floor": {"median_seconds": floor_s, "median_cpu_seconds": median([r["cpu_seconds"] for r in floor_runs]),
                  "peak_rss_sliding_window_mib": max(r["peak_rss_sliding_window_mib"] for r in floor_runs),
                  "ru_maxrss_mib": max(r["ru_maxrss_mib"] for r in floor_runs),
                  "windows": floor_runs[0]["windows"], "seconds_per_window": floor_s / floor_runs[0]["windows"]},
        "pirl": {"median_seconds": pirl_s, "median_cpu_seconds": median([r["cpu_seconds"] for r in pirl_runs]),
                 "peak_rss_case_mib": max(r["peak_rss_case_mib"] for r in pirl_runs),
                 "ru_maxrss_mib": max(r["ru_maxrss_mib"] for r in pirl_runs), "phases": phases},
    }
    if args.device.startswith("cuda"):
        out["floor"]["cuda_peak_mib"] = max(r["cuda_peak_mib"] for r in floor_runs)
        out["pirl"]["cuda_peak_mib"] = max(r["cuda_peak_mib"] for r in pirl_runs)
    sw = phases["sliding window"]["median_seconds"]
    ratios = {"pirl_per_case_over_floor": pirl_s / floor_s,
              "pirl_per_case_over_floor_cpu": out["pirl"]["median_cpu_seconds"] / out["floor"]["median_cpu_seconds"],
              "pirl_sliding_window_over_floor": sw / floor_s,
              "pirl_overhead_seconds": pirl_s - sw,
              "pirl_over_floor_at_equal_window_loop": (floor_s + pirl_s - sw) / floor_s,
              "pirl_peak_rss_over_floor": out["pirl"]["peak_rss_case_mib"] / out["floor"]["peak_rss_sliding_window_mib"]}
    if cli:
        cli_s = median([r["seconds"] for r in cli])
        ratios["cli_over_floor"] = cli_s / floor_s
        ratios["cli_over_pirl"] = cli_s / pirl_s
        ratios["cli_over_pirl_cpu"] = median([r["cpu_seconds"] for r in cli]) / out["pirl"]["median_cpu_seconds"]
        out["cli"] = {"median_seconds": cli_s, "runs": len(cli), "goal": f"CLI <= {CLI_GOAL}x the API per case",
                      "goal_met": ratios["cli_over_pirl"] <= CLI_GOAL}
    out["ratios"] = ratios
    out["goal"] = f"pirl per case <= {GOAL}x the floor (TTA off)"
    out["goal_met"] = ratios["pirl_per_case_over_floor"] <= GOAL
    if tta:
        out["tta"] = {**tta, "estimated_full_case_seconds": pirl_s - sw + sw * tta["factor"],
                      "estimated_full_case_seconds_cpu_factor": pirl_s - sw + sw * tta["cpu_factor"],
                      "note": "TTA repeats the sliding window only: estimate = per-case time - sliding window + "
                              "sliding window x factor measured on the crop (wall factor; with the CPU-time factor "
                              "too, more robust to other load)"}
    return out


def print_table(report: dict) -> None:
    s, case = report["summary"], report["case"]
    fl, pi, r = s["floor"], s["pirl"], s["ratios"]
    st = report["settings"]
    print(f"\nprediction of {case['name']} (x y z {'x'.join(map(str, case['shape'][::-1]))}, {case['channels']} "
          f"channels; preprocessed z y x {'x'.join(map(str, case['preprocessed_shape'][1:]))}), fs {st['fs']}, roi "
          f"{'x'.join(map(str, st['roi']))}, {fl['windows']} windows, overlap {1 - st['step_size']:.2f} Gaussian, "
          f"sw_batch 1, TTA off, {st['device']}, {st.get('attention', 'plain')} attention, "
          f"torch threads {report['torch_threads']}, median of "
          f"{st['repeats']}; untrained weights")
    head = f"{'':<58} {'wall s':>8} {'CPU s':>8} {'peak RSS MiB':>13} {'x floor':>8}"
    print(head + "\n" + "-" * len(head))
    print(f"{'floor: MONAI sliding_window_inference alone':<58} {fl['median_seconds']:8.2f} "
          f"{fl['median_cpu_seconds']:8.2f} {fl['peak_rss_sliding_window_mib']:13.0f} {1:8.2f}")
    print(f"{'pirl per case (read + predict_case + export)':<58} {pi['median_seconds']:8.2f} "
          f"{pi['median_cpu_seconds']:8.2f} {pi['peak_rss_case_mib']:13.0f} {r['pirl_per_case_over_floor']:8.2f}")
    for phase, row in pi["phases"].items():
        if phase == "load model":
            continue
        print(f"{'  ' + phase:<58} {row['median_seconds']:8.2f} {row['median_cpu_seconds']:8.2f} "
              f"{row['peak_rss_mib']:13.0f} {row['median_seconds'] / fl['median_seconds']:8.3f}")
    lm = pi["phases"]["load model"]
    print(f"{'pirl: load model folder (once per run, not per case)':<58} {lm['median_seconds']:8.2f} "
          f"{lm['median_cpu_seconds']:8.2f} {lm['peak_rss_mib']:13.0f}")
    if report.get("cli"):
        c = report["cli"][-1]
        print(f"{'pirl_predict CLI, end to end (1 case, median)':<58} {s['cli']['median_seconds']:8.2f} "
              f"{c['cpu_seconds']:8.2f} {c['peak_tree_rss_mb']:13.0f} {r['cli_over_floor']:8.2f}")
        for phase, seconds in c["phase_seconds"].items():
            print(f"{'  ' + phase + ' (last run)':<58} {seconds:8.2f}")
        print(f"CLI / API per case: {r['cli_over_pirl']:.3f}x wall, {r['cli_over_pirl_cpu']:.3f}x CPU (goal <= "
              f"{CLI_GOAL}x: {'met' if s['cli']['goal_met'] else 'NOT met'})")
    print(f"\npirl / floor: {r['pirl_per_case_over_floor']:.3f}x wall, {r['pirl_per_case_over_floor_cpu']:.3f}x CPU "
          f"(goal <= {GOAL}x: {'met' if s['goal_met'] else 'NOT met'}); pirl's sliding window alone "
          f"{r['pirl_sliding_window_over_floor']:.3f}x; overhead outside the window loop "
          f"{r['pirl_overhead_seconds']:.2f} s, i.e. {r['pirl_over_floor_at_equal_window_loop']:.3f}x the floor when "
          f"both window loops cost the same (same code, same output); peak RSS {r['pirl_peak_rss_over_floor']:.2f}x")
    if report.get("attention"):
        a = report["attention"]
        print(f"fused vs MONAI's attention on a {'x'.join(map(str, a['crop']))} crop: {a['median']['plain']['seconds']:.2f}"
              f" s -> {a['median']['fused']['seconds']:.2f} s = {a['gain']:.2f}x ({a['cpu_gain']:.2f}x CPU), outputs "
              f"equal to {a['max_abs_difference']:.1e}")
    if "tta" in s:
        t = s["tta"]
        print(f"TTA (mirroring, 8 passes) on a {'x'.join(map(str, t['crop']))} crop: {t['no_tta']['seconds']:.2f} s -> "
              f"{t['tta']['seconds']:.2f} s = {t['factor']:.2f}x wall ({t['cpu_factor']:.2f}x CPU); estimated "
              f"whole case with TTA: {t['estimated_full_case_seconds']:.0f} s "
              f"({t['estimated_full_case_seconds_cpu_factor']:.0f} s with the CPU factor)")
    ch = report["checks"]
    if "max_abs_logit_difference" in ch:
        print(f"checks: pirl vs floor sliding-window output max |diff| {ch['max_abs_logit_difference']:.3g}"
              + (f"; CLI label map == API label map: {ch['cli_labels_equal_api']}" if "cli_labels_equal_api" in ch
                 else ""))
    loads = report["load_average_1min"]
    print(f"1-min load average: {loads['start']:.2f} at start, {loads['end']:.2f} at end, max seen {loads['max']:.2f} "
          f"on {os.cpu_count()} CPUs" + (" -- other jobs competed for the CPUs: wall times are inflated, CPU times "
                                         "and ratios are the more robust numbers" if loads["max"] > (os.cpu_count() or 1)
                                         else ""))
