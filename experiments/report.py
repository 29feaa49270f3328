"""Tables (CSV + PNG) and ``RESULTS.md`` of an experiment run, written from whatever results exist.

Verdicts are computed from the numbers (pair counts, differences), never typed in, so a rerun rewrites them.
"""
from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path

import pandas as pd
import torch

from experiments import data
from experiments.config import COMPARISON, SEGMENTATION_ID, SEGMENTATION_NAME, Budget, ablation_model
from experiments.tables import (
    WHOLE_BRAIN,
    ablation_table,
    load_per_case,
    model_labels,
    pair_wins,
    plot_bars,
    plot_translation,
    segmentation_table,
    to_markdown,
    translation_summary,
    translation_table,
    whole_brain_rows,
)
from pirl_pipeline.file_io import atomic_path, load_json

COMPARISON_KEYS = [m.key for m in COMPARISON]


def _csv(table: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp)


def _doc_item(i: int) -> str:
    """Item ``i`` of the data module's bullet list, on one line."""
    return " ".join(data.__doc__.split("\n- ")[i].split())


def _timings(work: Path) -> str:
    file = work / "timings.json"
    if not file.is_file():
        return "No stage has run yet."
    timings = load_json(file)
    lines = ["| stage | minutes |", "|---|---|"]
    lines += [f"| {name} | {t['seconds'] / 60:.1f} |" for name, t in timings.items()]
    total = sum(t["seconds"] for t in timings.values())
    return "\n".join([*lines, f"| **total** | **{total / 60:.1f}** |"])


def translation_section(work: Path, out: Path) -> list[str]:
    rows = load_per_case(work, "translate", COMPARISON_KEYS)
    if rows.empty:
        return ["## Translation (Table 10 layout)", "", "Not run yet."]
    labels = model_labels(list(dict.fromkeys(k for k in COMPARISON_KEYS if k in set(rows["model"]))))
    full, summary = translation_table(rows, labels), translation_summary(rows, labels)
    _csv(full, out / "table10_translation.csv")
    _csv(summary, out / "translation_summary.csv")
    plot_translation(rows, labels, out / "table10_translation_psnr.png", "PSNR")
    plot_translation(rows, labels, out / "table10_translation_ssim.png", "SSIM")
    cases = sorted(set(rows["case"]))
    lines = ["## Translation (Table 10 layout)", "",
             (f"Held-out case(s): {', '.join(cases)} (leave-one-out folds {sorted(set(rows['fold']))}). One "
             "modality in, every other one out (12 source -> target pairs); metrics inside the reference brain "
             "mask, on the original 1 mm grid."), "", to_markdown(summary), ""]
    for other in [k for k in labels if k != "pirl"]:
        if "pirl" not in labels:
            break
        wins = {m: pair_wins(rows, "pirl", other, m) for m in ("PSNR", "NMSE", "SSIM")}
        text = ", ".join(f"{m} {w}/{n}" for m, (w, n) in wins.items())
        lines.append(f"- PIRL pre-train -> fine-tune beats **{labels[other]}** on {text} pairs.")
    lines += ["", "Per pair (PSNR / NMSE / SSIM): `table10_translation.csv`; heat maps:", "",
              "![PSNR](table10_translation_psnr.png)", "![SSIM](table10_translation_ssim.png)", ""]
    for metric in ("PSNR", "SSIM"):
        per_pair = full.xs(metric, axis=1, level=1)
        lines += [f"{metric} per source -> target pair:", "", to_markdown(per_pair, 2 if metric == "PSNR" else 3), ""]
    return lines


def segmentation_section(work: Path, out: Path) -> list[str]:
    rows = load_per_case(work, "seg", COMPARISON_KEYS)
    if rows.empty:
        return ["## Segmentation (Table 8 layout)", "", "Not run yet."]
    subsets, folds = list(dict.fromkeys(rows["subset"])), sorted(int(f) for f in set(rows["fold"]))
    raw = work / "raw" / f"Dataset{SEGMENTATION_ID}_{SEGMENTATION_NAME}"
    if (raw / "labelsTr").is_dir():
        rows = pd.concat([rows, whole_brain_rows(raw, sorted(set(rows["case"])), subsets)], ignore_index=True)
    labels = model_labels([k for k in [*COMPARISON_KEYS, WHOLE_BRAIN] if k in set(rows["model"])])
    table = segmentation_table(rows, labels)
    _csv(table, out / "table8_segmentation.csv")
    dice = table.xs("Dice", axis=1, level=1)
    plot_bars(dice["mean over regions"].unstack("model").reindex(subsets)[list(labels.values())],
              out / "table8_segmentation_dice.png", "Mean Dice over WT/TC/ET per modality subset", "Dice")
    mean = table["mean over regions"]
    lines = ["## Segmentation (Table 8 layout)", "",
             (f"Expert-labelled BraTS-2015 cases {', '.join(sorted(set(rows['case'])))}, each tested once "
             f"(folds {folds}); BraTS regions; every modality subset."), "",
             "Mean over the three regions:", "", to_markdown(mean.assign(n=table[("n cases", "")].astype(int))), "",
             "Dice per region:", "", to_markdown(dice), "", "![Dice](table8_segmentation_dice.png)", ""]
    if "pirl" in labels:
        lines += [f"- {line}" for subset in subsets for line in segmentation_verdicts(mean.loc[subset, "Dice"],
                                                                                    labels, subset)]
    return lines


def segmentation_verdicts(scores: pd.Series, labels: dict[str, str], subset: str, tie: float = 0.005) -> list[str]:
    """PIRL vs the best other model (|difference| < ``tie``: no difference), and vs the whole-brain reference."""
    pirl = scores[labels["pirl"]]
    others = scores.drop([labels["pirl"], labels.get(WHOLE_BRAIN, "")], errors="ignore")
    out = []
    if len(others):
        best, diff = others.idxmax(), pirl - others.max()
        verdict = "no difference" if abs(diff) < tie else ("PIRL wins" if diff > 0 else "PIRL does not win")
        out.append(f"{subset}: PIRL {pirl:.3f} vs best other ({best}) {others.max():.3f}: {verdict} ({diff:+.3f}).")
    if WHOLE_BRAIN in labels:
        floor = scores[labels[WHOLE_BRAIN]]
        beaten = [name for name, value in scores.drop(labels[WHOLE_BRAIN]).items() if value > floor + tie]
        out.append(f"{subset}: calling the whole brain tumour scores {floor:.3f}; "
                   + (f"beaten (by > {tie}) by: {', '.join(beaten)}." if beaten else
                      f"no model beats it by more than {tie}: segmentation has not been learned at this budget, "
                      "so this table cannot test the paper's claim."))
    return out


def ablation_section(work: Path, out: Path) -> list[str]:
    keys = ["pirl", *[ablation_model(r).key for r in range(1, 6)]]
    rows = load_per_case(work, "translate", keys)
    ablated = rows[rows["model"] != "pirl"] if not rows.empty else rows
    if ablated.empty:
        return ["## Ablation (Table 7 layout, translation task)", "", "Not run yet."]
    rows = rows[rows["fold"] == ablated["fold"].min()]  # the fold the ablation rows ran on
    table = ablation_table(rows)
    _csv(table, out / "table7_ablation.csv")
    plot_bars(table[["SSIM"]].rename(index=lambda i: f"row {i}"), out / "table7_ablation_ssim.png",
              "Table-7 rows: mean translation SSIM", "SSIM")
    lines = ["## Ablation (Table 7 layout, translation task)", "",
             (f"Pre-training variants, each followed by the same translation fine-tuning; fold "
             f"{int(rows['fold'].iloc[0])}; means over all 12 pairs."), "", to_markdown(table), "",
             "![ablation](table7_ablation_ssim.png)", ""]
    if len(table) > 1:
        scratch = load_per_case(work, "translate", ["pirl_scratch"])
        scratch = scratch[scratch["fold"] == rows["fold"].iloc[0]] if not scratch.empty else scratch
        for metric in ("PSNR", "SSIM"):
            spread = table[metric].max() - table[metric].min()
            gap = (f"; for scale, row 6 minus PIRLNet from scratch (no pre-training): "
                   f"{table.loc[6, metric] - scratch[metric].mean():+.4f}" if 6 in table.index and not scratch.empty
                   else "")
            lines.append(f"- {metric} spread across the rows (max - min): {spread:.4f}{gap}.")
    if 6 in table.index and len(table) > 1:
        for metric, tol in (("PSNR", 0.05), ("SSIM", 0.001)):
            row6, others = table.loc[6, metric], table[metric].drop(6)
            better, ties = int((others > row6 + tol).sum()), int(((others - row6).abs() <= tol).sum())
            lines.append(f"- {metric}: of the other {len(others)} rows, {better} beat the full objective (row 6) by "
                         f"more than {tol}, {ties} tie with it within {tol} (the paper: row 6 best).")
    return lines


def write_report(work: Path, out: Path, budget: Budget, quick: bool) -> Path:
    """Write every table that has results, and ``out/RESULTS.md``; returns its path."""
    tables = out / ("results" if not quick else "")
    tables.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(tables, out)
    sections = [*translation_section(work, tables), "", *segmentation_section(work, tables), "",
                *ablation_section(work, tables)]
    sections = [s.replace("](", f"]({rel}/") if rel != "." and s.startswith("![") else s for s in sections]
    b = budget
    head = [
        "# Experiments: the paper's claims on real images" + (" (QUICK smoke test: numbers meaningless)" if quick
                                                              else ""),
        "",
        (f"Generated {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC by `python -m experiments.run"
        f"{' --quick' if quick else ''}`; tables as CSV/PNG in `{os.path.relpath(tables, out)}/`. "
        "Design and how to rerun: `experiments/README.md`."),
        "",
        "## What was run",
        "",
        f"- Translation data (real images from `../shared/data`, converted by pirl's converters): {_doc_item(1)}",
        f"- Segmentation data: {_doc_item(2).split('Nothing')[0].strip()}",
        (f"- Budget (equal for every model): spacing {b.spacing:g} mm, patch {b.patch}^3, feature_size "
        f"{b.feature_size}, batch {b.batch_size}, {b.epochs} epochs; pre-training {b.pretrain_steps} steps, "
        f"every fine-tuning {b.finetune_steps} steps (the 'equal total steps' baseline "
        f"{b.pretrain_steps + b.finetune_steps}); AdamW lr 2e-4, poly schedule, nnU-Net augmentation, seed "
        "12345; prediction: sliding window, overlap 0.5, Gaussian, no TTA."),
        (f"- Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, device {b.device}."),
        ("- Scale: the paper trains 1000 epochs on 4 GPUs with hundreds of subjects; this is a few dozen steps "
        "on 2-3 training subjects, so absolute numbers are far below the paper's. One seed, 1-2 test cases per "
        "fold: a small difference between models may not survive another seed (seed variance was not "
        "measured). What it can show: the paper's protocol runs end to end on real images, and whether "
        "pre-training helps at this budget."),
        "",
    ]
    report = out / "RESULTS.md"
    with atomic_path(report) as tmp:
        tmp.write_text("\n".join([*head, *sections, "", "## Wall time per stage", "", _timings(work), ""]))
    return report
