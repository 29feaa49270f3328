"""Summaries and printed tables of ``benchmarks/preprocess.py`` (timings, scaling fit, phases, quality checks,
per-step profile)."""
from __future__ import annotations

import statistics

import numpy as np


def summarise(runs: list[dict], num_cases: int) -> dict:
    ok = [r for r in runs if r["rc"] == 0]
    if not ok:
        return {"failed": True}
    seconds = statistics.median(r["seconds"] for r in ok)
    return {"failed": len(ok) < len(runs), "median_seconds": seconds, "cases_per_second": num_cases / seconds,
            "min_seconds": min(r["seconds"] for r in ok), "max_seconds": max(r["seconds"] for r in ok),
            "median_cpu_seconds": statistics.median(r["cpu_seconds"] for r in ok),
            "peak_tree_pss_mb": max(r["peak_tree_pss_mb"] for r in ok),
            "peak_tree_rss_mb": max(r["peak_tree_rss_mb"] for r in ok),
            "peak_single_process_rss_mb": max(r["peak_single_process_rss_mb"] for r in ok),
            "median_phase_seconds": {k: statistics.median(r["phase_seconds"].get(k, 0.0) for r in ok)
                                     for k in ok[0]["phase_seconds"]},
            "load_average_1min": [min(r["load_average_1min_before"] for r in ok),
                                  max(r["load_average_1min_after"] for r in ok)]}


def fit_scaling(rows: list[dict]) -> dict:
    """Least-squares time = fixed + per_case * cases per tool and -np, when several dataset sizes ran."""
    out = {}
    for key in dict.fromkeys(f"{r['label']} -np {r['np']}" for r in rows):
        mine = [r for r in rows if f"{r['label']} -np {r['np']}" == key and "median_seconds" in r["summary"]]
        cases = [r["cases"] for r in mine]
        if len(set(cases)) >= 2:
            slope, intercept = np.polyfit(cases, [r["summary"]["median_seconds"] for r in mine], 1)
            cpu_slope, cpu_intercept = np.polyfit(cases, [r["summary"]["median_cpu_seconds"] for r in mine], 1)
            out[key] = {"fixed_seconds": float(intercept), "seconds_per_case": float(slope),
                        "marginal_cases_per_second": float(1 / slope) if slope > 0 else float("inf"),
                        "fixed_cpu_seconds": float(cpu_intercept), "cpu_seconds_per_case": float(cpu_slope),
                        "points": [(r["cases"], r["summary"]["median_seconds"], r["summary"]["median_cpu_seconds"])
                                   for r in mine]}
    return out


def print_table(rows: list[dict], title: str) -> None:
    head = f"{'tool':<34} {'-np':>3} {'cases':>5} {'median s':>9} {'cases/s':>8} {'cpu s':>7} {'peak MB':>8}"
    print(f"\n{title}\n{head}\n{'-' * len(head)}")
    for r in rows:
        s = r["summary"]
        if s.get("failed") and "median_seconds" not in s:
            print(f"{r['label']:<34} {r['np']:>3} {r['cases']:>5}   FAILED (see {r['runs'][-1]['log']})")
            continue
        print(f"{r['label']:<34} {r['np']:>3} {r['cases']:>5} {s['median_seconds']:>9.2f} "
              f"{s['cases_per_second']:>8.3f} {s['median_cpu_seconds']:>7.1f} {s['peak_tree_pss_mb']:>8.0f}")


def print_phases(rows: list[dict]) -> None:
    print("\nwhere the wall time goes (median seconds per phase, from time-stamped CLI output)")
    for r in rows:
        phases_ = r["summary"].get("median_phase_seconds")
        if phases_:
            print(f"  {r['label']}, {r['cases']} cases, -np {r['np']}: " + ", ".join(f"{k} {v:.1f}" for k, v in phases_.items()))
        big = max((run["largest_process_seen"] for run in r["runs"]), key=lambda x: x["rss_mb"])
        print(f"    largest process seen: {big['rss_mb']:.0f} MB RSS: {big['cmd'][:110]}")


def print_resample_check(check: dict) -> None:
    r = check["runs"]
    print(f"\nresample check, target spacing {check['spacing']} (preprocessing only, -np {check['num_processes']}): "
          f"pirl {r['pirl']['seconds']:.2f} s ({r['pirl']['cpu_seconds']:.1f} CPU s), nnU-Net "
          f"{r['nnunet']['seconds']:.2f} s ({r['nnunet']['cpu_seconds']:.1f} CPU s); ratio "
          f"{r['nnunet']['seconds'] / r['pirl']['seconds']:.2f}x wall, "
          f"{r['nnunet']['cpu_seconds'] / r['pirl']['cpu_seconds']:.2f}x CPU")
    print_quality({"arrays": check.get("arrays", {})}, arrays_only=True)


def print_quality(q: dict, arrays_only: bool = False) -> None:
    if arrays_only:
        q = {"arrays": q["arrays"]}
        _print_arrays(q)
        return
    print("\nresult quality")
    keys = ("spacing", "normalization_schemes", "use_mask_for_norm", "patch_size", "median_image_size_in_voxels")
    for k in keys:
        print(f"  {k:<28} pirl {q['pirl'][k]}" + (f"  | nnU-Net {q['nnunet'][k]}" if "nnunet" in q else ""))
    if "nnunet" not in q:
        print("  shapes (pirl):", q["pirl"]["shapes"])
        return
    print(f"  same spacing: {q['same_spacing']}, same normalisation: {q['same_normalization']}, "
          f"same mask use: {q['same_use_mask_for_norm']}; nnU-Net transpose_forward "
          f"{q['nnunet']['transpose_forward']}, resampling {q['nnunet']['resampling_fn_data']} "
          f"{q['nnunet']['resampling_fn_data_kwargs']}")
    _print_arrays(q)


def _print_arrays(q: dict) -> None:
    arrays = q.get("arrays", {})
    if "error" in arrays:
        print("  array comparison failed:", arrays["error"])
    for case, row in arrays.get("cases", {}).items():
        line = f"  {case}: shape pirl {row['pirl_shape']} nnU-Net {row['nnunet_shape']}"
        if "data_mean_abs_diff" in row:
            line += (f"; data |diff| mean {row['data_mean_abs_diff']:.2e} max {row['data_max_abs_diff']:.2e} "
                     f"({row['data_voxels_differing_gt_1e-3']} voxels > 1e-3)")
        if "seg_voxels_differing" in row:
            line += (f"; seg differs in {row['seg_voxels_differing']} voxels (pirl -1 / nnU-Net 0: "
                     f"{row['seg_minus1_pirl_0_nnunet']}, pirl 0 / nnU-Net -1: {row['seg_0_pirl_minus1_nnunet']}, "
                     f"foreground differs: {row['seg_foreground_differing']}, Dice per class "
                     + ", ".join(f"{k}: {v:.4f}" for k, v in row["seg_dice_per_class"].items()) + ")")
        if row["pirl_bbox"] != row["nnunet_bbox"]:
            line += f"; crop box pirl {row['pirl_bbox']} nnU-Net {row['nnunet_bbox']}"
        print(line)


def print_profile(profile: dict) -> None:
    print(f"\nper-case step times, median over the distinct cases (seconds; {profile['note']})")
    for tool in ("pirl", "nnunet"):
        if tool not in profile:
            continue
        if "error" in profile[tool]:
            print(f"  {tool}: {profile[tool]['error']}")
            continue
        print(f"  {tool}:")
        for step, seconds in profile[tool]["median_seconds_per_case"].items():
            print(f"    {step:<62} {seconds:8.3f}")
    print("  import time of the CLI module:",
          ", ".join(f"{k} {v:.2f} s" for k, v in profile["import_seconds"].items()))
