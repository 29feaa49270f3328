"""Table 11 (BraTS-2018, 4 modalities, all 15 subsets) and the representation's health, paper preset vs default.

The ``seg4`` part (``config.TABLE11``): PIRL with the representation fixes (the default variant) and with the
paper preset, PIRLNet and SwinUNETR from scratch, SwinUNETR from the PIRL weights, beside the trivial references.
Health (``pirl_pipeline.evaluation.health``) comes from every PIRLNet run's own per-epoch history.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from experiments.config import (
    EXTERNAL_TESTS,
    FULL,
    PARTS,
    TABLE11,
    TABLE11_ABLATION,
    TABLE11_ROW6,
    TABLE11_TRANSLATION,
    Budget,
    Model,
    model_of_run,
    representation_csv,
)
from experiments.reference_rows import REFERENCE_LABELS, SEGMENTATION_REFERENCES, TRANSLATION_REFERENCES
from experiments.tables import (
    PERCENTILE_SCALED,
    REGIONS,
    ablation_keys,
    ablation_table,
    ablation_verdicts,
    load_per_case,
    plot_curves,
    seed_spread,
    to_markdown,
    translation_block,
    translation_references_line,
    write_csv,
)
from pirl_pipeline.data.modalities import modality
from pirl_pipeline.evaluation.health import HEALTH_KEYS
from pirl_pipeline.evaluation.representation import BOTTLENECK
from pirl_pipeline.report.collect import load_checkpoint_meta

PART, TRANSLATION_PART = "seg4", "seg4_translation"
KEYS = [m.key for m in TABLE11]
REFERENCES = SEGMENTATION_REFERENCES
LABELS = {m.key: m.label for m in TABLE11} | REFERENCE_LABELS
SHORT = {"whole tumour": "WT", "tumour core": "TC", "enhancing tumour": "ET"}


def table11(rows: pd.DataFrame) -> pd.DataFrame:
    """Index: subsets (enumeration order) plus "mean"; columns: (model label, WT/TC/ET) mean Dice over cases and
    seeds."""
    regions = [r for r in REGIONS if f"Dice/{r}" in rows.columns]
    table = rows.groupby(["subset", "model"], sort=False)[[f"Dice/{r}" for r in regions]].mean().unstack("model")
    table = table.reindex(list(dict.fromkeys(rows["subset"])))
    table.columns = pd.MultiIndex.from_tuples([(LABELS[m], SHORT[c.removeprefix("Dice/")]) for c, m in table.columns])
    models = [LABELS[k] for k in [*KEYS, *REFERENCES] if k in set(rows["model"])]
    table = table.reindex(columns=[(m, SHORT[r]) for m in models for r in regions])
    table.loc["mean"] = table.mean()
    return table


def seed_means(rows: pd.DataFrame) -> pd.DataFrame:
    """Per-case rows averaged over seeds (one row per subset, model, fold and case), so that a fold run with more
    seeds than another does not weigh more in the means over cases."""
    dice = [c for c in rows.columns if c.startswith("Dice/")]
    return rows.groupby(["subset", "model", "fold", "case"], sort=False)[dice].mean().reset_index()


def dilution(rows: pd.DataFrame) -> pd.DataFrame:
    """Per model, whole-tumour Dice: FLAIR alone, FLAIR+T1, their difference; the best single modality and all
    modalities (the issue's target: all >= best single, FLAIR -> FLAIR+T1 drop <= 0.03)."""
    whole = rows.groupby(["model", "subset"], sort=False)["Dice/whole tumour"].mean()
    subsets = list(dict.fromkeys(rows["subset"]))
    singles = [s for s in subsets if "+" not in s]
    full = subsets[-1]
    kinds = {s: sorted(modality(n).name for n in s.split("+")) for s in subsets}
    flair = next((s for s in singles if kinds[s] == ["FLAIR"]), None)
    flair_t1 = next((s for s in subsets if kinds[s] == ["FLAIR", "T1"]), None)
    out = []
    for model in [k for k in KEYS if k in whole.index.get_level_values(0)]:
        w = whole[model]
        best = max(singles, key=lambda s: w[s])
        row = {"model": LABELS[model], "best single": f"{best} {w[best]:.3f}", "all": w[full],
               "all - best single": w[full] - w[best]}
        if flair and flair_t1:
            row |= {"FLAIR": w[flair], "FLAIR+T1": w[flair_t1], "FLAIR+T1 - FLAIR": w[flair_t1] - w[flair]}
        out.append(row)
    return pd.DataFrame(out).set_index("model")


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
                if not path.is_file():
                    continue
                meta = load_checkpoint_meta(path)
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
    final = last.groupby(["stage", "model"], sort=False)[list(HEALTH_KEYS)].mean()
    final = final.rename(index=LABELS, level="model").rename(columns=lambda c: c.removeprefix("health_"))
    pre = rows[rows["stage"] == "pre-training"]
    curve = pre.groupby(["model", "steps"])[["health_swap", "health_spread", "health_retrieval"]].mean()
    curve = curve.rename(index=LABELS, level="model").rename(columns=lambda c: c.removeprefix("health_"))
    return ["### Representation health (after the last epoch; `evaluation/health.py`)", "",
            ("On the centre patches of the fold's 2 validation subjects, each modality alone (retrieval chance "
             "0.5). swap: share of the decoder output that changes when a subject's X_h' is replaced by the other's "
             "(0 = bypassed); spread: sqrt(between / within subject variance) of X_h' (and of z); prior_entropy: "
             "attention entropy / log C (1 = uniform); prior_share: the O path's share of X_h' variance. Targets "
             "(issue 23): swap >= 0.05, prior_entropy < 0.8, prior_share > 0.01, spread and retrieval above the "
             "paper preset. Mean over seeds and folds; every epoch in `table11_health.csv`."), "",
            to_markdown(final, 3), "", "Health against pre-training steps (mean over seeds):", "",
            to_markdown(curve, 3), ""]


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
        full = dice[dice["subset"] == dice["subset"].iloc[-1]].groupby("model")["Dice/whole tumour"].mean()
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
             "`representation.csv` of `work/eval/representation_seg4/`."), "",
            to_markdown(table, 3), ""]


def table11_section(work: Path, out: Path) -> list[str]:
    title = "## Segmentation with missing modalities (Table 11): BraTS-2018, 4 modalities, paper preset vs default"
    rows = load_rows(work)
    if rows.empty or not set(KEYS) & set(rows["model"]):
        return [title, "", "Not run yet."]
    spread = seed_spread(rows[rows["subset"] == rows["subset"].iloc[-1]], "Dice/whole tumour")
    every_subset = rows.groupby(["model", "seed", "fold", "case"], as_index=False)["Dice/whole tumour"].mean()
    spread15 = seed_spread(every_subset, "Dice/whole tumour")
    per_fold = rows.groupby(["model", "fold"])["seed"].nunique().unstack(fill_value=0)  # (model, fold)
    seeds = per_fold.max(axis=1)
    seeds_text = {k: "/".join(str(n) for n in per_fold.loc[k]) for k in seeds.index}  # one count per fold
    rows = seed_means(rows)  # every case counts once, however many seeds its fold ran
    table = table11(rows)
    write_csv(table, out / "table11_seg4.csv")
    folds = sorted(int(f) for f in set(rows["fold"]))
    lines = [title, "",
             (f"{PARTS[PART][0]}: test cases {', '.join(sorted(set(rows['case'])))} (folds {folds}); every one of "
              "the 15 modality subsets predicted by one model per row (trained with random modality dropout); "
              f"Dice of the BraTS regions on the original grid. Seeds{' per fold' if len(folds) > 1 else ''}: "
              + ", ".join(f"{LABELS[k]} {seeds_text[k]}" for k in KEYS if k in seeds.index)
              + ". Whole-tumour seed spread (max - min of the seed means over the cases every seed was tested on), "
              "all four modalities / mean of the 15 subsets: "
              + ", ".join(f"{LABELS[k]} {spread[k]:.3f} / {spread15[k]:.3f}" for k in KEYS
                          if not math.isnan(spread.get(k, math.nan)))
              + "."), "",
             to_markdown(table.rename(columns=lambda c: c), 3), "",
             "Dilution (whole tumour): does adding a modality cost Dice?", "", to_markdown(dilution(rows), 3), ""]
    return [*lines, *health_section(work, out), *held_out_representation(work), *pretraining_length_section(work, out)]


def table11_translation_section(work: Path, out: Path) -> list[str]:
    """Translation (every source -> target pair) on Table 11's data and folds: fine-tunings of the seg4
    pre-trainings of both presets, beside the from-scratch networks and the references."""
    title = "## Translation on Table 11's data (BraTS-2018, 4 modalities): paper preset vs default"
    keys = [m.key for m in TABLE11_TRANSLATION]
    rows = load_per_case(work, TRANSLATION_PART, [*keys, *TRANSLATION_REFERENCES])
    if rows.empty or not set(keys) & set(rows["model"]):
        return [title, "", "Not run yet."]
    seeds = rows.groupby("model")["seed"].nunique()
    return [title, "",
            (f"{PARTS[TRANSLATION_PART][0]}: test cases {', '.join(sorted(set(rows['case'])))} (folds "
             f"{sorted(int(f) for f in set(rows['fold']))}); one modality in, each other one out (12 pairs); "
             f"PSNR / NMSE / SSIM inside the reference brain mask on the original grid, {PERCENTILE_SCALED}. "
             "The PIRL rows fine-tune the same pre-trainings as Table 11 (the same "
             "folds and seeds). Seeds: " + ", ".join(f"{LABELS[k]} {seeds[k]}" for k in keys if k in seeds.index)
             + "; seed spread = max - min of the seed means."), "",
            *translation_block(rows, keys, TRANSLATION_REFERENCES, LABELS, out, "table11_translation"),
            *external_translation_block(work, out, held_out_per_fold(rows, keys)), *table7_block(work, out, rows)]


def pretraining_health(work: Path, keys: dict[str, dict[str, int]], fold: int) -> pd.DataFrame:
    """Index (preset, Table-7 row id); columns swap, spread, retrieval: the last pre-training epoch's health of
    each row's first seed on ``fold`` (``keys``: preset -> model key -> row id); empty when none was logged."""
    columns = ["swap", "spread", "retrieval"]
    models = tuple(m for m in (*TABLE11, *TABLE11_ABLATION) if any(m.key in k for k in keys.values()))
    rows = health_rows(work, models)
    if rows.empty:
        return pd.DataFrame(columns=columns)
    rows = rows[(rows["stage"] == "pre-training") & (rows["seed"] == "first") & (rows["fold"] == fold)]
    last = rows.sort_values("epoch").groupby("model").tail(1).set_index("model")
    index = [(variant, row) for variant, k in keys.items() for key, row in k.items() if key in last.index]
    values = [last.loc[key, [f"health_{c}" for c in columns]].to_numpy(float)
              for k in keys.values() for key in k if key in last.index]
    return pd.DataFrame(values, columns=columns, index=pd.MultiIndex.from_tuples(index, names=["preset", "ID"]))


def table7_held_out(work: Path, keys: dict[str, dict[str, int]]) -> pd.DataFrame:
    """Index (preset, Table-7 row id); columns held-out retrieval / spread: each pre-training's X_h' (first seed,
    fold 0) on the 8 held-out subjects (the seg4 representation stage; rows 1-5 once their checkpoints exist)."""
    rows = held_out_rows(work)
    if rows.empty:
        return pd.DataFrame()
    rows = rows[rows["seed"] == str(FULL.seeds[0])]
    names = dict(TABLE7_HELD_OUT)
    for variant, row6 in TABLE11_ROW6.items():
        if variant in keys:
            label = next(m.label for m in TABLE11 if m.key == row6)
            names[held_out_name(label)] = (variant, 6)
    rows = rows[rows["model"].isin(names)]
    if rows.empty:
        return pd.DataFrame()
    table = rows.set_index(pd.MultiIndex.from_tuples([names[m] for m in rows["model"]], names=["preset", "ID"]))
    return table[["retrieval_top1_centered", "health_spread"]].rename(
        columns={"retrieval_top1_centered": "held-out retrieval", "health_spread": "held-out spread"})


def held_out_per_fold(rows: pd.DataFrame, keys: list[str]) -> int:
    """How many cases one fold's models of ``keys`` were tested on (the largest fold)."""
    return int(rows[rows["model"].isin(keys)].groupby("fold")["case"].nunique().max())


def external_translation_block(work: Path, out: Path, held_out: int) -> list[str]:
    """The same translation models scored on every case of the external test's dataset (``EXTERNAL_TESTS``:
    other sources, none seen in training) beside the references fitted on the same training cases; ``held_out``:
    how many of the part's own cases one fold's models were tested on."""
    external = EXTERNAL_TESTS[TRANSLATION_PART]
    title = f"### The same models on the {PARTS[external.dataset_part][0]} cases (other sources, none seen in training)"
    rows = load_per_case(work, external.name, [*external.keys, *TRANSLATION_REFERENCES])
    if rows.empty or not set(external.keys) & set(rows["model"]):
        return [title, "", "Not run yet (`--only seg4_translation` scores them once the models exist)."]
    cases = sorted(set(rows["case"]))
    return [title, "",
            (f"Every model above (trained on its fold's BraTS-2018 training cases) predicts the {len(cases)} "
             f"four-modality cases of {PARTS[external.dataset_part][0]} ({', '.join(cases)}): with its fold's "
             f"{held_out} held-out BraTS-2018 cases above, {len(cases) + held_out} cases it never trained on. The "
             "intensity mapping is fitted on the same training cases. Same metrics and scaling."), "",
            *translation_block(rows, list(external.keys), TRANSLATION_REFERENCES, LABELS, out,
                               "table11_translation_external")]


def table7_block(work: Path, out: Path, translation_rows: pd.DataFrame) -> list[str]:
    """Table 7 layout on Table 11's data, per preset: the pre-training rows 1-5 (on request, first seed) beside
    row 6 (the preset's PIRL row), each followed by the same translation fine-tuning, on the fold the rows ran
    on; the references of ``translation_rows`` on the same cases."""
    title = "### Table 7 layout on Table 11's data: pre-training rows, paper preset and default"
    keys = {variant: ablation_keys(variant, row6) for variant, row6 in TABLE11_ROW6.items()}
    rows = load_per_case(work, TRANSLATION_PART, [k for ks in keys.values() for k in ks])
    ablated = rows[rows["model"].isin([m.key for m in TABLE11_ABLATION])] if not rows.empty else rows
    if ablated.empty:
        return [title, "", "Not run yet (on request: `--only seg4_translation --models "
                + " ".join(m.key for m in TABLE11_ABLATION) + "`; first seed)."]
    fold = ablated["fold"].min()
    rows = rows[(rows["seed"] == "first") & (rows["fold"] == fold)]
    tables = {variant: ablation_table(rows, k) for variant, k in keys.items()
              if set(k) - set(TABLE11_ROW6.values()) & set(rows["model"])}
    table = pd.concat(tables, names=["preset", "ID"])
    health = pretraining_health(work, keys, fold)
    table = table.join(health) if not health.empty else table
    held_out = table7_held_out(work, keys) if fold == 0 else pd.DataFrame()
    table = table.join(held_out) if not held_out.empty else table
    write_csv(table, out / "table11_table7.csv")
    lines = [title, "", (f"Rows 1-5: pre-training with the row's terms off (`--disable ...`) in the preset, then the "
                         f"preset's translation fine-tuning; row 6 = the preset's PIRL row above; fold {fold}, first "
                         "seed, means over the 12 pairs and the held-out cases. swap / spread / retrieval: the "
                         "pre-training's representation health after its last epoch (its 2 validation subjects, "
                         "retrieval chance 0.5; as in the health table above); held-out retrieval / spread: its "
                         "X_h' on the 8 held-out subjects (chance 0.125; as in the held-out table above)."), "",
             to_markdown(table, 3), ""]
    row6_spread = seed_spread(translation_rows[translation_rows["fold"] == fold], "PSNR") \
        if not translation_rows.empty else pd.Series(dtype=float)
    for variant, part in tables.items():
        scale = row6_spread.get(TABLE11_ROW6[variant], math.nan)
        lines += [f"{variant} preset:", *ablation_verdicts(part),
                  *([f"- For scale: row 6's PSNR seed spread (its seeds above) {scale:.2f} dB."]
                    if not math.isnan(scale) else []), ""]
    references = translation_rows[translation_rows["model"].isin(TRANSLATION_REFERENCES)
                                  & (translation_rows["fold"] == fold)]
    return [*lines, *translation_references_line(references, LABELS), ""]
