"""Translation on Table 11's data (``seg4_translation``): every source -> target pair, paper preset vs default,
on the part's own held-out cases and on the external Dataset601 cases, and the Table-7 pre-training rows of both
presets with each row's representation health (the seg4 part's tables are in ``table11``).
"""
from __future__ import annotations

import math
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
)
from experiments.reference_rows import TRANSLATION_REFERENCES
from experiments.table11 import LABELS, TABLE7_HELD_OUT, health_rows, held_out_name, held_out_rows
from experiments.tables import (
    PERCENTILE_SCALED,
    ablation_keys,
    ablation_table,
    ablation_verdicts,
    load_per_case,
    seed_spread,
    to_markdown,
    translation_block,
    translation_references_line,
    write_csv,
)

TRANSLATION_PART = "seg4_translation"


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
