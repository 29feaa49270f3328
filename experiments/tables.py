"""The experiments' tables in the paper's layouts, from the per-case CSVs of ``pirl_evaluate_missing``.

- Table 10 layout (translation): one row per model; for each source -> target pair PSNR, NMSE, SSIM;
- Table 8 layout (segmentation): one row per (modality subset, model); Dice, TPR, TNR, FNR, FPR per region;
- Table 7 layout (ablation): one row per pre-training variant (its terms); translation metrics averaged
  over all pairs.
Every value is a mean over the evaluated cases, folds and seeds; ``n`` says over how many rows. The trivial
references (``reference_rows``) are rows like the models'. ``seed_spread`` gives the spread across seeds.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from experiments.config import COMPARISON, ablation_model, eval_folder, model_of_run, table7_terms
from experiments.reference_rows import REFERENCE_LABELS
from pirl_pipeline.evaluation.image_similarity import SCALE_PERCENTILES
from pirl_pipeline.file_io import atomic_path
from pirl_pipeline.fold_folder import PER_CASE
from pirl_pipeline.plots import heatmap, save_figure
from pirl_pipeline.report.markdown import table as markdown_table

OVERLAP = ("Dice", "TPR", "TNR", "FNR", "FPR")
IMAGE = ("PSNR", "NMSE", "SSIM")
#: how every translation table's PSNR / NMSE / SSIM see intensities (the evaluator's ``percentile_scale``)
PERCENTILE_SCALED = (f"each volume scaled to [0, 1] by its own {SCALE_PERCENTILES[0]:g}-{SCALE_PERCENTILES[1]:g} "
                     "percentiles inside the mask")
REGIONS = ("whole tumour", "tumour core", "enhancing tumour")


def load_per_case(work: Path, part: str, model_keys: list[str]) -> pd.DataFrame:
    """All per-case rows of an experiment part ("translation", "seg", "seg2") for the given models, every
    seed (columns ``model`` = the model key, ``seed``, ``fold`` added)."""
    frames = []
    for folder in sorted((work / "eval").glob("*")):
        model, seed = model_of_run(folder.name)
        if model not in model_keys:
            continue
        for csv in sorted(folder.glob(f"{eval_folder(work, folder.name, part, '*').name}/{PER_CASE}")):
            frame = pd.read_csv(csv)
            frames.append(frame.assign(model=model, seed=seed, fold=int(csv.parent.name.rsplit("fold", 1)[1])))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def write_csv(table: pd.DataFrame, path: Path, index: bool = True) -> None:
    """A results table as CSV, written atomically (temp file, then rename)."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=index)


def seed_spread(rows: pd.DataFrame, metric: str, keys: list[str] | None = None,
                units: list[str] | None = None) -> pd.Series:
    """Per ``keys`` (default: model): max - min over seeds of the seed's mean ``metric`` (NaN with one seed: no
    spread known). Each seed's mean covers only the ``units`` (default: the (fold, case) pairs, whichever columns
    exist) that every seed of the group ran, so folds run with fewer seeds cannot pass for seed variation."""
    keys = keys or ["model"]
    units = [u for u in (units or ["fold", "case"]) if u in rows.columns]
    spreads = {}
    for key, group in rows.groupby(keys if len(keys) > 1 else keys[0], sort=False):
        if units:
            unit = pd.MultiIndex.from_frame(group[units])
            common = set(unit).intersection(*(set(unit[(group["seed"] == s).to_numpy()])
                                              for s in group["seed"].dropna().unique()))
            group = group[unit.isin(list(common))]
        per_seed = group.groupby("seed")[metric].mean()
        spreads[key] = float(per_seed.max() - per_seed.min()) if len(per_seed) > 1 else math.nan
    return pd.Series(spreads, dtype=float)


def seed_means(rows: pd.DataFrame, by: list[str], metrics: list[str]) -> pd.DataFrame:
    """Per-case rows averaged over seeds: one row per model, fold, case (the columns that exist) and ``by``, so that
    a fold run with more seeds than another weighs no more in a mean over cases."""
    keys = ["model", *[c for c in ("fold", "case") if c in rows.columns], *by]
    return rows.groupby(keys, sort=False, dropna=False)[list(metrics)].mean().reset_index()


def translation_table(rows: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """Table 10 layout: index model label, columns (``SRC->TGT``, metric), means over cases (each case's seeds
    averaged first)."""
    rows = seed_means(rows, ["source", "target"], list(IMAGE))
    rows = rows.assign(pair=rows["source"] + "->" + rows["target"])
    pairs = list(dict.fromkeys(rows["pair"]))
    table = rows.groupby(["model", "pair"], sort=False)[list(IMAGE)].mean().unstack("pair")
    table = table.swaplevel(axis=1)[[(p, m) for p in pairs for m in IMAGE]]
    return table.rename(index=labels)


def translation_summary(rows: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """Per model: each metric's mean over (pair, case) rows (each case's seeds averaged first) and std over all
    (pair, case, seed) rows, the spread of the PSNR/SSIM means across seeds, the number of seeds and of rows."""
    means = seed_means(rows, ["source", "target"], list(IMAGE)).groupby("model", sort=False)[list(IMAGE)].mean()
    stds = rows.groupby("model", sort=False)[list(IMAGE)].std()
    stats = pd.concat({f"{m} {stat}": frame[m] for m in IMAGE for stat, frame in (("mean", means), ("std", stds))},
                      axis=1)
    for metric in ("PSNR", "SSIM"):
        stats[f"{metric} seed spread"] = seed_spread(rows, metric)
    stats["seeds"] = rows.groupby("model", sort=False)["seed"].nunique()
    stats["n (pairs x cases x seeds)"] = rows.groupby("model", sort=False).size()
    return stats.rename(index=labels)


def pair_wins(rows: pd.DataFrame, model: str, other: str, metric: str) -> tuple[int, int]:
    """On how many source -> target pairs ``model`` beats ``other`` (mean over cases, each case's seeds averaged
    first); NMSE: lower wins."""
    rows = seed_means(rows, ["source", "target"], [metric])
    means = rows.groupby(["model", "source", "target"])[metric].mean()
    if model not in means.index.get_level_values(0) or other not in means.index.get_level_values(0):
        return 0, 0
    a, b = means[model], means[other].reindex(means[model].index)
    better = (a < b) if metric == "NMSE" else (a > b)
    return int(better.sum()), int(b.notna().sum())


def translation_block(rows: pd.DataFrame, keys: list[str], references: list[str], labels: dict[str, str],
                      out: Path, stem: str) -> list[str]:
    """The summary and per-direction tables of a translation part (``rows``: its per-case rows) with every
    model's pair wins against the references; writes ``STEM_summary.csv`` and ``STEM.csv`` to ``out``."""
    present = [k for k in [*keys, *references] if k in set(rows["model"])]
    shown = {k: labels[k] for k in present}
    summary, full = translation_summary(rows, shown), translation_table(rows, shown)
    write_csv(summary, out / f"{stem}_summary.csv")
    write_csv(full, out / f"{stem}.csv")
    lines = [to_markdown(summary), ""]
    if full.columns.get_level_values(0).nunique() <= 2:  # e.g. PET -> CT, CT -> PET: one table
        lines += ["Per direction:", "", to_markdown(full, 3), ""]
    else:  # one table per metric stays readable (the CSV has all three)
        for metric in ("PSNR", "SSIM"):
            lines += [f"{metric} per direction (NMSE: `{stem}.csv`):", "",
                      to_markdown(full.xs(metric, axis=1, level=1), 2 if metric == "PSNR" else 3), ""]
    comparisons = [(m, r) for m in keys if m in present for r in references if r in present]
    return [*lines, *pair_wins_lines(rows, comparisons, shown, "directions"), ""]


def pair_wins_lines(rows: pd.DataFrame, comparisons: list[tuple[str, str]], labels: dict[str, str],
                    unit: str) -> list[str]:
    """One bullet per (model, other) in ``comparisons``: on how many ``unit`` it wins, per image metric."""
    lines = []
    for model, other in comparisons:
        wins = {m: pair_wins(rows, model, other, m) for m in IMAGE}
        lines.append(f"- {labels[model]} beats **{labels[other]}** on "
                     + ", ".join(f"{m} {w}/{n}" for m, (w, n) in wins.items()) + f" {unit}.")
    return lines


def segmentation_table(rows: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """Table 8 layout: index (subset, model label); columns (region, metric) plus the mean over regions."""
    regions = [r for r in REGIONS if f"Dice/{r}" in rows.columns]
    columns = [f"{m}/{r}" for r in regions for m in OVERLAP]
    table = rows.groupby(["subset", "model"], sort=False)[columns].mean()
    order = pd.MultiIndex.from_product([list(dict.fromkeys(rows["subset"])), list(dict.fromkeys(rows["model"]))])
    table = table.reindex([i for i in order if i in table.index])
    table.columns = pd.MultiIndex.from_tuples([tuple(reversed(c.split("/"))) for c in columns])
    for metric in OVERLAP:
        table[("mean over regions", metric)] = table.xs(metric, axis=1, level=1).mean(axis=1)
    table[("n cases", "")] = rows.groupby(["subset", "model"]).size().reindex(table.index)
    return table.rename(index=labels, level="model")


def case_difference(case: pd.DataFrame, model: str, other: str) -> dict | None:
    """``case``: one score per case (rows) and model (columns). The difference ``model - other`` over the cases
    both were scored on: mean, min, max and on how many cases ``model`` is ahead; None where either is missing.
    Each case is one patient (its subsets and seeds are not independent of each other), but the cases of one fold
    share that fold's training: they are independent draws of the patients, not of the training's noise."""
    if model not in case or other not in case:
        return None
    diff = (case[model] - case[other]).dropna()
    return {"mean": diff.mean(), "min": diff.min(), "max": diff.max(),
            "cases ahead": f"{int((diff > 0).sum())}/{len(diff)}"}


def ablation_keys(variant: str = "default", row6: str = "pirl") -> dict[str, int]:
    """Model key -> Table-7 row id: rows 1-5 of ``variant`` and ``row6`` (the full objective)."""
    return {ablation_model(r, variant).key: r for r in range(1, 6)} | {row6: 6}


def ablation_table(rows: pd.DataFrame, keys: dict[str, int] | None = None) -> pd.DataFrame:
    """Table 7 layout on translation: ID, pre-training terms, mean metrics over all pairs and cases (``keys``:
    model key -> row id, default :func:`ablation_keys`)."""
    keys = keys or ablation_keys()
    rows = rows[rows["model"].isin(keys)]
    table = rows.groupby("model")[list(IMAGE)].mean()
    table.insert(0, "Pretrain", [table7_terms(keys[k]) for k in table.index])
    table.index = [keys[k] for k in table.index]
    table.index.name = "ID"
    table["n (pairs x cases)"] = rows.groupby("model").size().to_numpy()
    return table.sort_index()


def ablation_verdicts(table: pd.DataFrame) -> list[str]:
    """Per translation metric: how many Table-7 rows beat row 6 (the full objective) or tie with it."""
    if 6 not in table.index or len(table) < 2:
        return []
    lines = []
    for metric, tol in (("PSNR", 0.05), ("SSIM", 0.001)):
        row6, others = table.loc[6, metric], table[metric].drop(6)
        better, ties = int((others > row6 + tol).sum()), int(((others - row6).abs() <= tol).sum())
        lines.append(f"- {metric}: of the other {len(others)} rows, {better} beat the full objective (row 6) by "
                     f"more than {tol}, {ties} tie with it within {tol} (the paper: row 6 best).")
    return lines


def translation_references_line(references: pd.DataFrame, labels: dict[str, str]) -> list[str]:
    """One line: each reference's mean PSNR / SSIM over ``references`` (per-case rows of the same cases and
    pairs as the rows it stands beside); none when empty."""
    if references.empty:
        return []
    return ["- The references on the same cases and pairs: " + "; ".join(
        f"{labels[k]} {g['PSNR'].mean():.3f} dB / SSIM {g['SSIM'].mean():.3f}"
        for k, g in references.groupby("model")) + "."]


def model_labels(keys: list[str] | None = None) -> dict[str, str]:
    labels = {m.key: m.label for m in COMPARISON} | REFERENCE_LABELS
    labels.update({ablation_model(r).key: ablation_model(r).label for r in range(1, 6)})
    return labels if keys is None else {k: labels[k] for k in keys}


# ------------------------------------------------------------------------------------------------ figures
def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    save_figure(fig, path)


def plot_translation(rows: pd.DataFrame, labels: dict[str, str], path: Path, metric: str = "PSNR") -> None:
    """Source x target heat maps of ``metric``, one panel per model (shared colour scale)."""
    models = [k for k in labels if k in set(rows["model"])]
    order = list(dict.fromkeys(rows["source"]))  # channel order, so the empty diagonal is the diagonal
    mats = {k: rows[rows["model"] == k].pivot_table(index="source", columns="target", values=metric,
                                                    aggfunc="mean").reindex(index=order, columns=order)
            for k in models}
    values = np.concatenate([m.to_numpy(float).ravel() for m in mats.values()])
    vmin, vmax = np.nanmin(values), np.nanmax(values)
    fig, axes = plt.subplots(1, len(models), figsize=(3.6 * len(models), 3.4), squeeze=False)
    for ax, key in zip(axes[0], models, strict=True):
        mat = mats[key].rename_axis(index="source (the only input)", columns="target")
        heatmap(ax, fig, mat, labels[key], "{:.2f}", vmin, vmax)
    fig.suptitle(f"Translation {metric} (mean over held-out cases)")
    fig.tight_layout()
    save_figure(fig, path)


def plot_bars(table: pd.DataFrame, path: Path, title: str, ylabel: str) -> None:
    """Grouped bars: one group per index entry, one bar per column."""
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(table) + 2), 3.8))
    width = 0.8 / max(1, table.shape[1])
    for j, column in enumerate(table.columns):
        ax.bar(np.arange(len(table)) + j * width, table[column].to_numpy(float), width, label=str(column))
    ax.set_xticks(np.arange(len(table)) + 0.4 - width / 2, [str(i) for i in table.index], fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    _save(fig, path)


def plot_curves(table: pd.DataFrame, path: Path, title: str, xlabel: str) -> None:
    """One panel per column of ``table`` (index: (curve, x)), one line per curve, legend below the panels."""
    fig, axes = plt.subplots(1, table.shape[1], figsize=(3.6 * table.shape[1], 3.4), squeeze=False)
    for ax, column in zip(axes[0], table.columns, strict=True):
        for curve, part in table[column].groupby(level=0, sort=False):
            ax.plot(part.index.get_level_values(1), part.to_numpy(float), marker="o", label=str(curve))
        ax.set_title(str(column), fontsize=9)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=7, loc="lower center", ncol=2, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    save_figure(fig, path)


def to_markdown(table: pd.DataFrame, digits: int = 3) -> str:
    """A pandas table as GitHub markdown (no extra dependency: tabulate is not installed); NaN reads "-"."""
    frame = table.copy()
    if isinstance(frame.columns, pd.MultiIndex):
        frame.columns = [" ".join(str(c) for c in col if str(c)) for col in frame.columns]
    index_names = [n or "" for n in (frame.index.names if frame.index.nlevels > 1 else [frame.index.name])]
    header = [*index_names, *map(str, frame.columns)]
    rows = []
    for index, *row in frame.itertuples(name=None):
        keys = index if isinstance(index, tuple) else (index,)
        rows.append([*map(str, keys), *(("-" if np.isnan(v) else f"{v:.{digits}f}")
                                         if isinstance(v, float | np.floating) else str(v) for v in row)])
    return markdown_table(header, rows)
