"""Table 11 (BraTS-2018, 4 modalities, all 15 subsets) and the representation's health, paper preset vs default.

The ``seg4`` part (``config.TABLE11``): PIRL with the representation fixes (the default variant) and with the
paper preset, PIRLNet and SwinUNETR from scratch, SwinUNETR from the PIRL weights, beside the trivial references.
Health (``pirl_pipeline.evaluation.health``) comes from every PIRLNet run's own per-epoch history; the held-out rows
(X_h' on subjects no seg4 run saw) from the representation stage. Translation on this data: ``table11_translation``.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from experiments.config import (
    PARTS,
    TABLE11,
    TABLE11_ABLATION,
    Budget,
    Model,
    model_of_run,
    representation_csv,
)
from experiments.records import has_run, run_meta
from experiments.reference_rows import REFERENCE_LABELS, SEGMENTATION_REFERENCES
from experiments.tables import (
    REGIONS,
    ablation_keys,
    case_difference,
    load_per_case,
    plot_curves,
    seed_means,
    seed_spread,
    to_markdown,
    write_csv,
)
from pirl_pipeline.data.modalities import modality
from pirl_pipeline.evaluation.health import HEALTH_KEYS
from pirl_pipeline.evaluation.missing_modalities import heatmap_png
from pirl_pipeline.evaluation.representation import BOTTLENECK

PART = "seg4"
KEYS = [m.key for m in TABLE11]
REFERENCES = SEGMENTATION_REFERENCES
LABELS = {m.key: m.label for m in TABLE11} | REFERENCE_LABELS
SHORT = {"whole tumour": "WT", "tumour core": "TC", "enhancing tumour": "ET"}


def all_modalities(rows: pd.DataFrame) -> str:
    """The subset of ``rows`` with every modality ("T1+T1ce+T2+FLAIR")."""
    return max(rows["subset"].unique(), key=lambda subset: subset.count("+"))


def row_labels(rows: pd.DataFrame) -> dict[str, str]:
    """Each model's label, marked "(fold 0 only)" (or "(folds 0, 1 only)") where it was tested on fewer folds
    than the part ran, so that a mean over 2 cases is never read beside means over 8 as their equal."""
    folds = rows.groupby("model")["fold"].agg(lambda f: sorted({int(x) for x in f}))
    every = sorted({int(f) for f in rows["fold"]})
    return {m: LABELS[m] + ("" if f == every else f" ({'fold' if len(f) == 1 else 'folds'} "
                                                   f"{', '.join(map(str, f))} only)") for m, f in folds.items()}


def table11(rows: pd.DataFrame) -> pd.DataFrame:
    """Index: subsets (enumeration order) plus "mean"; columns: (model label, WT/TC/ET) mean Dice over cases and
    seeds (labels as ``row_labels``)."""
    labels = row_labels(rows)
    regions = [r for r in REGIONS if f"Dice/{r}" in rows.columns]
    table = rows.groupby(["subset", "model"], sort=False)[[f"Dice/{r}" for r in regions]].mean().unstack("model")
    table = table.reindex(list(dict.fromkeys(rows["subset"])))
    table.columns = pd.MultiIndex.from_tuples([(labels[m], SHORT[c.removeprefix("Dice/")]) for c, m in table.columns])
    models = [labels[k] for k in [*KEYS, *REFERENCES] if k in set(rows["model"])]
    table = table.reindex(columns=[(m, SHORT[r]) for m in models for r in regions])
    table.loc["mean"] = table.mean()
    return table


def region_tables(table: pd.DataFrame, out: Path) -> list[str]:
    """``table11`` as markdown, one table per region (subsets x models) as the paper lays Table 11 out (one table
    of every (model, region) column is too wide to read), each also drawn as a heat map ``table11_{region}.png``."""
    regions = {short: name for name, short in SHORT.items()}
    lines = []
    for short in dict.fromkeys(region for _, region in table.columns):
        title = f"{regions[short].capitalize()} ({short}) Dice"
        region = table.xs(short, axis=1, level=1)
        heatmap_png(region.rename_axis(index="subset", columns="model"), out / f"table11_{short.lower()}.png",
                    f"{title}, mean over the cases")
        lines += [f"{title}, mean over the cases (a case's seeds averaged first):", "", to_markdown(region, 3), "",
                  f"![{title}](table11_{short.lower()}.png)", ""]
    return lines


def dilution(rows: pd.DataFrame) -> pd.DataFrame:
    """Per model, whole-tumour Dice: FLAIR alone, FLAIR+T1, their difference; the best single modality and all
    modalities (the issue's target: all >= best single, FLAIR -> FLAIR+T1 drop <= 0.03); labels as ``row_labels``."""
    labels = row_labels(rows)
    whole = rows.groupby(["model", "subset"], sort=False)["Dice/whole tumour"].mean()
    subsets = list(dict.fromkeys(rows["subset"]))
    singles = [s for s in subsets if "+" not in s]
    full = all_modalities(rows)
    kinds = {s: sorted(modality(n).name for n in s.split("+")) for s in subsets}
    flair = next((s for s in singles if kinds[s] == ["FLAIR"]), None)
    flair_t1 = next((s for s in subsets if kinds[s] == ["FLAIR", "T1"]), None)
    out = []
    for model in [k for k in KEYS if k in whole.index.get_level_values(0)]:
        w = whole[model]
        best = max(singles, key=lambda s: w[s])
        row = {"model": labels[model], "best single": f"{best} {w[best]:.3f}", "all": w[full],
               "all - best single": w[full] - w[best]}
        if flair and flair_t1:
            row |= {"FLAIR": w[flair], "FLAIR+T1": w[flair_t1], "FLAIR+T1 - FLAIR": w[flair_t1] - w[flair]}
        out.append(row)
    return pd.DataFrame(out).set_index("model")


def fold_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Whole-tumour Dice per model (rows) and fold (columns "fold F: all four / mean of 15"), the cases of a fold and
    the seeds (``rows``: seed means) averaged, with the fold spread (max - min of the fold means; the spread over
    which 2 test cases a fold has, seed noise included)."""
    full, folds = all_modalities(rows), sorted(set(rows["fold"]))
    whole = rows.groupby(["model", "fold", "subset"], sort=False)["Dice/whole tumour"].mean()
    out = []
    for model in [k for k in [*KEYS, *REFERENCES] if k in whole.index.get_level_values(0)]:
        w = whole[model].unstack("subset")
        every, four = w.mean(axis=1), w[full]
        row = {f"fold {int(f)}": f"{four[f]:.3f} / {every[f]:.3f}" if f in w.index else "-" for f in folds}
        row["fold spread"] = f"{four.max() - four.min():.3f} / {every.max() - every.min():.3f}" if len(w) > 1 else "-"
        out.append({"model": LABELS[model], **row})
    return pd.DataFrame(out).set_index("model")


#: (model, other): what the difference says: pre-training, the fixes, PIRL against the plain baseline, PIRL's weights
PAIRS = [("pirl", "pirl_scratch"), ("pirl", "pirl_paper"), ("pirl", "swin_scratch"), ("swin_pirl", "swin_scratch")]
CASE_BY_CASE = ("Case by case (whole-tumour Dice, seeds averaged; each case is one patient, so the cases, not the "
                "subsets, are the independent units):")


def paired_cases(rows: pd.DataFrame) -> pd.DataFrame:
    """Per pair of ``PAIRS``: the whole-tumour Dice difference model - other, case by case (``rows``: seed means;
    each case's mean over the 15 subsets, and all four modalities): mean, min, max and on how many cases the model
    is ahead, over the cases both rows were tested on."""
    full = all_modalities(rows)
    out = []
    for model, other in PAIRS:
        both = rows[rows["model"].isin([model, other])]
        for name, subset in (("mean of 15", both), ("all four", both[both["subset"] == full])):
            case = subset.groupby(["model", "fold", "case"])["Dice/whole tumour"].mean().unstack("model")
            if difference := case_difference(case, model, other):
                out.append({"model - other": f"{LABELS[model]} - {LABELS[other]}", "subsets": name, **difference})
    return pd.DataFrame(out).set_index("model - other") if out else pd.DataFrame()


def health_rows(work: Path, models: tuple[Model, ...] = TABLE11) -> pd.DataFrame:
    """One row per (model, seed, stage, epoch) of every PIRLNet run of ``models`` in the part: the logged
    ``val/health_*``."""
    from experiments.run import Experiment  # the one owner of the results-folder layout

    layout, rows = Experiment(Budget(), work), []
    results = work / "results"
    for run in sorted(p.name for p in results.iterdir()) if results.is_dir() else []:
        key, seed = model_of_run(run)
        model = next((m for m in models if m.key == key and m.network == "PIRL"), None)
        if model is None:
            continue
        for stage, trainer in (("pre-training", "PIRLPretrainer"), ("fine-tuning", model.trainer("seg"))):
            for fold in range(8):
                path = layout.fold_folder(run, PART, trainer, fold).checkpoint()
                if not has_run(path):
                    continue
                meta = run_meta(path)
                iters = (meta.get("config") or {}).get("iters_per_epoch") or 0
                for record in meta.get("history") or []:
                    values = {k: record.get(f"val/{k}") for k in HEALTH_KEYS}
                    if any(v is not None for v in values.values()):
                        rows.append({"model": key, "seed": seed, "fold": fold, "stage": stage,
                                     "epoch": record["epoch"] + 1, "steps": (record["epoch"] + 1) * iters, **values})
    return pd.DataFrame(rows)


def health_section(work: Path, out: Path) -> list[str]:
    rows = health_rows(work)
    if rows.empty:
        return []
    write_csv(rows, out / "table11_health.csv", index=False)
    last = rows.sort_values("epoch").groupby(["stage", "model", "seed", "fold"]).tail(1)
    by_fold = seed_means(last, ["stage"], list(HEALTH_KEYS))  # a fold's seeds first
    final = by_fold.groupby(["stage", "model"])[list(HEALTH_KEYS)].mean()
    final["folds"] = by_fold.groupby(["stage", "model"]).size()
    final["runs"] = last.groupby(["stage", "model"]).size()
    order = [(stage, k) for stage in ("pre-training", "fine-tuning") for k in KEYS if (stage, k) in final.index]
    final = final.reindex(order).rename(index=LABELS, level="model").rename(columns=lambda c: c.removeprefix("health_"))
    pre = rows[rows["stage"] == "pre-training"]
    columns = ["health_swap", "health_spread", "health_retrieval"]
    curve = seed_means(pre, ["steps"], columns).groupby(["model", "steps"])[columns].mean()
    curve = curve.rename(index=LABELS, level="model").rename(columns=lambda c: c.removeprefix("health_"))
    plot_curves(curve, out / "table11_health_curve.png", "Representation health on the validation subjects against "
                "pre-training steps", "pre-training steps")
    return ["### Representation health (after the last epoch; `evaluation/health.py`)", "",
            ("On the centre patches of the fold's 2 validation subjects, each modality alone (retrieval chance "
             "0.5). swap: share of the decoder output that changes when a subject's X_h' is replaced by the other's "
             "(0 = bypassed); spread: sqrt(between / within subject variance) of X_h' (and of z); prior_entropy: "
             "attention entropy / log C (1 = uniform); prior_share: the O path's share of X_h' variance. Targets "
             "(issue 23): swap >= 0.05, prior_entropy < 0.8, prior_share > 0.01, spread and retrieval above the "
             "paper preset. Mean over folds of each fold's seed mean (folds: how many; runs: seeds x folds); every "
             "epoch in `table11_health.csv`."), "",
            to_markdown(final, 3), "",
            ("Health against pre-training steps (mean over folds of each fold's seed mean; every point in "
             "`table11_health.csv`); the table gives each curve's first, middle and last point:"), "",
            to_markdown(curve_points(curve), 3), "", "![health against pre-training steps](table11_health_curve.png)",
            ""]


def curve_points(curve: pd.DataFrame) -> pd.DataFrame:
    """The first, middle and last row of each curve of ``curve`` (index: (curve, steps)): a curve of 50 points is
    drawn, not tabled."""
    def points(part: pd.DataFrame) -> pd.DataFrame:
        return part.iloc[sorted({0, (len(part) - 1) // 2, len(part) - 1})]
    return pd.concat([points(part) for _, part in curve.groupby(level=0, sort=False)])


def load_rows(work: Path) -> pd.DataFrame:
    """The part's per-case rows; the BraTS converter's "tumor" region names spelled as ``tables.REGIONS``."""
    rows = load_per_case(work, PART, KEYS + REFERENCES)
    return rows.rename(columns=lambda c: c.replace("tumor", "tumour"))


BOTTLENECK_STAGE = "after seg training, deepest encoder state"  # a SwinUNETR's rows: its counterpart of z


def representation_label(model_label: str, fold: int, seed: int, stage: str = "pre-training") -> str:
    """The row name of one seg4 run in ``representation_csv(work, "seg4")``."""
    return f"{held_out_name(model_label, fold, stage)[:-1]}, seed {seed})"


def held_out_name(model_label: str, fold: int = 0, stage: str = "pre-training") -> str:
    """A :func:`representation_label` without its seed: ``model`` of :func:`held_out_rows`."""
    return f"{model_label} {stage} (seg4 fold {fold})"


def _run_of(row_name: str) -> tuple[str, str]:
    """(model row, seed) of a :func:`representation_label` (a name without a seed: its first seed)."""
    head, sep, tail = row_name.rpartition(", seed ")
    if sep:
        return head + ")", tail.rstrip(")")
    return row_name, "first"


def held_out_rows(work: Path) -> pd.DataFrame:
    """The held-out rows of :func:`representation_csv` (X_h', and SwinUNETR's bottleneck) with ``model`` = the
    row name without its seed and ``seed``; empty when not measured."""
    path = representation_csv(work, PART)
    if not path.is_file():
        return pd.DataFrame()
    rows = pd.read_csv(path)
    rows = rows[rows["representation"].isin(["x_h", BOTTLENECK]) & (rows["dataset"] == PARTS["translation"][0])]
    named = [_run_of(name) for name in rows["model"]]
    return rows.assign(model=[m for m, _ in named], seed=[s for _, s in named])


#: held-out row name (seed removed) -> (preset, Table-7 row id) of seg4_translation's pre-training rows 1-5
TABLE7_HELD_OUT = {held_out_name(m.label): (m.variant, ablation_keys(m.variant)[m.key]) for m in TABLE11_ABLATION}


LENGTH_POINT = re.compile(r"^(?P<curve>.*) after (?P<steps>\d+) steps \(seg4 fold \d+\)$")
LENGTH_COLUMNS = {"retrieval_top1_centered": "held-out retrieval (chance 0.125)", "health_spread": "held-out spread",
                  "health_swap": "held-out swap"}


def pretraining_length_section(work: Path, out: Path) -> list[str]:
    """The pre-training-length curve (on-request ``pirl_long``, ``pirl_paper_long``): the held-out X_h' after every
    kept checkpoint, and Table 11's whole-tumour Dice fine-tuned after the budget's steps and after all of them."""
    rows = held_out_rows(work)
    points = rows["model"].str.extract(LENGTH_POINT) if not rows.empty else pd.DataFrame()
    if points.empty or points["curve"].isna().all():
        return []
    rows = rows.assign(curve=points["curve"], steps=pd.to_numeric(points["steps"])).dropna(subset=["curve"])
    rows["steps"] = rows["steps"].astype(int)
    curve = rows.groupby(["curve", "steps"], sort=False)[list(LENGTH_COLUMNS)].mean().rename(columns=LENGTH_COLUMNS)
    write_csv(curve, out / "table11_pretraining_length.csv")
    plot_curves(curve, out / "table11_pretraining_length.png", "X_h' on 8 held-out subjects against pre-training "
                "steps", "pre-training steps")
    lines = ["### Pre-training length: X_h' on the held-out subjects against pre-training steps", "",
             ("Each kept checkpoint of the long pre-trainings (first seed), measured as the rows above; the first "
              "point has the budget's pre-training steps. One seed: the seed spreads of the rows above are the "
              "yardstick for a difference."), "", to_markdown(curve, 3), "",
             "![pre-training length](table11_pretraining_length.png)", ""]
    dice = load_rows(work)
    if not dice.empty:
        dice = dice[dice["seed"] == "first"]
        every = dice.groupby(["model", "subset"])["Dice/whole tumour"].mean().groupby("model").mean()
        full = dice[dice["subset"] == all_modalities(dice)].groupby("model")["Dice/whole tumour"].mean()
        for long in [m for m in TABLE11 if m.pretrain_scale > 1 and m.key in full.index]:
            short = next(m for m in TABLE11 if m.variant == long.variant and m.pretrain_scale == 1
                         and m.pretrain_key == m.key and not m.pretrain_only and not m.sets)
            if short.key in full.index:
                lines.append(f"- Whole-tumour Dice after fine-tuning (first seed), all four modalities / mean of the "
                             f"{dice['subset'].nunique()} subsets: {short.label} {full[short.key]:.3f} / "
                             f"{every[short.key]:.3f}, {long.label} {full[long.key]:.3f} / {every[long.key]:.3f}.")
    return [*lines, ""]


def held_out_representation(work: Path) -> list[str]:
    """The seg4 pre-trainings' X_h' (and SwinUNETR's deepest encoder state) on the 8 subjects of the translation
    data, which no seg4 run saw (``representation_rows --held-out``): retrieval, spread, collapse check and
    health; mean over seeds with the seed spread (max - min) of retrieval and spread."""
    rows = held_out_rows(work)
    rows = rows[~rows["model"].isin(TABLE7_HELD_OUT)] if not rows.empty else rows  # in the Table-7 block
    if rows.empty:
        return []
    columns = ["retrieval_top1_centered", "health_spread", "between_std_relative", "cosine_other_subjects",
               "health_swap", "health_prior_entropy", "health_prior_share"]
    table = rows.groupby("model", sort=False)[columns].mean()
    for column in ("retrieval_top1_centered", "health_spread"):
        table[f"{column} seed spread"] = seed_spread(rows, column)
    table.insert(0, "seeds", rows.groupby("model", sort=False)["seed"].nunique())
    table.insert(0, "subjects", rows.groupby("model", sort=False)["subjects"].first())
    return [("### X_h' (and SwinUNETR's deepest encoder state) on 8 held-out subjects (the translation data: "
            "BraTS-2020/2023, UPENN-GBM, GLISTR)"), "",
            ("Each pre-training of this part (fold 0, every seed) and a random initialisation of the first one's "
             "architecture, on the centre patches of all 8 four-modality cases of Dataset601, none of them seen by "
             "a seg4 run; beside them SwinUNETR from scratch after its seg training and at random initialisation, "
             "measured on its deepest encoder state (`encoder10(swinViT(x)[4])`, the counterpart of z; each "
             "modality alone in its channel, the others zero; no health columns but spread); mean over seeds, "
             "seed spread = max - min. retrieval_top1_centered: chance 1/8 = 0.125; "
             "between_std_relative: between-subject std / RMS of X_h' (about 0: every subject at one point); "
             "cosine_other_subjects: mean cosine between different subjects. Every row: "
             f"`{work.name}/eval/representation_seg4/representation.csv`."), "",
            to_markdown(table, 3), ""]


def table11_section(work: Path, out: Path) -> list[str]:
    title = "## Segmentation with missing modalities (Table 11): BraTS-2018, 4 modalities, paper preset vs default"
    rows = load_rows(work)
    if rows.empty or not set(KEYS) & set(rows["model"]):
        return [title, "", "Not run yet."]
    spread = seed_spread(rows[rows["subset"] == all_modalities(rows)], "Dice/whole tumour")
    every_subset = rows.groupby(["model", "seed", "fold", "case"], as_index=False)["Dice/whole tumour"].mean()
    spread15 = seed_spread(every_subset, "Dice/whole tumour")
    per_fold = rows.groupby(["model", "fold"])["seed"].nunique().unstack(fill_value=0)  # (model, fold)
    seeds_text = {k: "/".join(str(n) for n in per_fold.loc[k]) for k in per_fold.index}  # one count per fold
    rows = seed_means(rows, ["subset"], [c for c in rows.columns if c.startswith("Dice/")])  # cases once
    table = table11(rows)
    write_csv(table, out / "table11_seg4.csv")
    folds = sorted(int(f) for f in set(rows["fold"]))
    pairs = paired_cases(rows)
    lines = [title, "",
             (f"{PARTS[PART][0]}: test cases {', '.join(sorted(set(rows['case'])))} (folds {folds}); every one of "
              "the 15 modality subsets predicted by one model per row (trained with random modality dropout); "
              f"Dice of the BraTS regions on the original grid. Seeds{' per fold' if len(folds) > 1 else ''}: "
              + ", ".join(f"{LABELS[k]} {seeds_text[k]}" for k in KEYS if k in seeds_text)
              + ". Whole-tumour seed spread (max - min of the seed means over the cases every seed was tested on), "
              "all four modalities / mean of the 15 subsets: "
              + (", ".join(f"{LABELS[k]} {spread[k]:.3f} / {spread15[k]:.3f}" for k in KEYS
                           if not math.isnan(spread.get(k, math.nan))) or "none (one seed per row)")
              + "."), "",
             *region_tables(table, out),
             *(["Whole-tumour Dice per fold, all four modalities / mean of the 15 subsets (2 test cases a fold):", "",
                to_markdown(fold_table(rows)), ""] if len(folds) > 1 else []),
             *([CASE_BY_CASE, "", to_markdown(pairs, 3), ""] if not pairs.empty else []),
             "Dilution (whole tumour): does adding a modality cost Dice?", "", to_markdown(dilution(rows), 3), ""]
    return [*lines, *health_section(work, out), *held_out_representation(work), *pretraining_length_section(work, out)]
