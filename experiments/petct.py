"""The PET/CT tables on real patients (``petct``, ``petct_translation``): the one owner of their RESULTS.md blocks.

- Table 8 layout: one row per (input, model): Dice, TPR, TNR, FNR, FPR, HD95 (mm) and CaseTPR of the lesion, mean over the
  folds (each fold's mean over its 4 held-out subjects; then over seeds), the seed spread of the Dice with two
  seeds; the references (``reference_rows.PETCT_REFERENCES``) as rows of their own, scored by the same evaluator.
  Every network was trained once, on PET + CT with random modality dropout; its "PET" row is the same model given
  PET alone, its "CT" row (beyond the paper's inputs) the same model given CT alone (``pirl_evaluate_missing``
  scores every channel subset).
- Table 7 layout: the pre-training rows 1-5 (run on request) beside row 6 (= the PIRL row), the same fine-tuning,
  and rows 1-5 minus row 6 subject by subject and training by training (the yardstick where a row ran one seed).
- PET -> CT and CT -> PET translation beside copying the source and the fitted intensity mapping, in the
  evaluator's percentile-scaled (scale-free) PSNR / NMSE / SSIM.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from experiments.config import PART_MODELS, PARTS, PETCT_TRANSLATION, table7_terms
from experiments.curves import finetune_curves_section
from experiments.reference_rows import PETCT_REFERENCES, REFERENCE_KEYS, REFERENCE_LABELS, TRANSLATION_REFERENCES
from experiments.tables import (
    PERCENTILE_SCALED,
    ablation_keys,
    case_difference,
    load_per_case,
    seed_spread,
    to_markdown,
    translation_block,
    write_csv,
)

PART, TRANSLATION_PART = "petct", "petct_translation"
INPUTS = ("PET+CT", "PET")  # the paper's Table 8 inputs
SCORED = (*INPUTS, "CT")  # the tables' inputs: the paper's, then CT alone (not in the paper)
COLUMNS = ("Dice", "TPR", "TNR", "FNR", "FPR", "HD95", "CaseTPR")  # the paper's Table 8 metrics, HD95, CaseTPR
MODEL_KEYS = [m.key for m in PART_MODELS[PART] if not m.key.startswith("ablation_row")]
ABLATION_KEYS = ablation_keys()
REFERENCES = [REFERENCE_KEYS[k] for k in PETCT_REFERENCES]
LABELS = {m.key: m.label for m in PART_MODELS[PART]} | REFERENCE_LABELS | {
    "reference_whole_brain": "(reference) every voxel of the crop called lesion",
    "reference_threshold": "(reference) PET threshold fitted on the training cases"}
TRANSLATION_LABELS = {m.key: m.label for m in PETCT_TRANSLATION} | REFERENCE_LABELS



def target_of(rows: pd.DataFrame) -> str:
    """The scored target (the dataset's one foreground label: "lesion")."""
    targets = [c.split("/", 1)[1] for c in rows.columns if c.startswith("Dice/")]
    return targets[0]


def fold_means(rows: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Per (model, subset): the mean over folds of each fold's case mean (averaged over the seeds that fold ran, so
    a fold with more seeds does not weigh more); ``seeds``, ``folds`` and ``n`` (rows) beside it, and the Dice seed
    spread (max - min of the seed means over the folds every seed ran; NaN with one seed)."""
    keys = ["model", "subset"]
    per_fold = rows.groupby([*keys, "seed", "fold"], sort=False)[columns].mean()
    table = per_fold.groupby(level=[*keys, "fold"], sort=False).mean().groupby(level=keys, sort=False).mean()
    spreads = seed_spread(per_fold.reset_index(), columns[0], keys=keys, units=["fold"])
    table["seeds"] = rows.groupby(keys, sort=False)["seed"].nunique()
    table["folds"] = rows.groupby(keys, sort=False)["fold"].nunique()
    table["n"] = rows.groupby(keys, sort=False).size()
    table[f"{columns[0].split('/')[0]} seed spread"] = spreads
    return table


def table8(rows: pd.DataFrame) -> pd.DataFrame:
    """Index (input, row label): the models on each of ``SCORED`` (in that order), then the references under
    "reference (reads X)"; columns ``COLUMNS`` (lesion), seeds, folds, n, Dice seed spread."""
    target = target_of(rows)
    means = fold_means(rows, [f"{c}/{target}" for c in COLUMNS])
    means.columns = [c.split("/")[0] if "/" in c else c for c in means.columns]
    order = []
    for subset in SCORED:
        order += [(k, subset) for k in MODEL_KEYS if (k, subset) in means.index]
    order += [(k, s) for k in REFERENCES for s in dict.fromkeys(rows["subset"]) if (k, s) in means.index]
    table = means.loc[order]
    table.index = pd.MultiIndex.from_tuples(
        [(s if k in MODEL_KEYS else f"reference (reads {s})", LABELS[k]) for k, s in order], names=["input", "row"])
    return table


def verdicts(rows: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """Per input: each model against the best reference on the paper's inputs (the references read only PET, or
    nothing that matters, so they stand beside PET + CT and PET, not beside CT alone, which never sees PET), PIRL
    against the best other model within the seed spread; and per model, what adding CT to PET, and PET to CT,
    changed."""
    from experiments.report import segmentation_verdicts  # report imports this module

    target = target_of(rows)
    lines = []
    references = table[table.index.get_level_values("input").str.startswith("reference")]["Dice"].droplevel("input")
    for subset in SCORED:
        if subset not in table.index.get_level_values("input"):
            continue
        scores = pd.concat([table.loc[subset, "Dice"], references if subset in INPUTS else None])
        spreads = seed_spread(rows[rows["subset"] == subset], f"Dice/{target}")
        lines += [f"- {line}" for line in segmentation_verdicts(
            scores, LABELS, subset, spread={LABELS[k]: v for k, v in spreads.items() if k in LABELS},
            models=MODEL_KEYS, references=REFERENCES)]
    inputs = set(table.index.get_level_values("input"))
    for alone, added in (("PET", "CT"), ("CT", "PET")):
        if {INPUTS[0], alone} <= inputs:
            both, single = table.loc[INPUTS[0], "Dice"], table.loc[alone, "Dice"]
            gains = [f"{m} {both[m] - single[m]:+.3f}" for m in both.index if m in single.index]
            lines.append(f"- Dice with {added} added to {alone} (PET+CT minus {alone}, the same model): "
                         + ", ".join(gains) + ".")
    return lines


def table7_runs(rows: pd.DataFrame) -> set[tuple[str, int]]:
    """The (seed, fold) runs of the Table-7 rows 1-5 (row 6 and the references are read on these)."""
    ablated = rows[rows["model"].isin([k for k in ABLATION_KEYS if k != "pirl"])]
    return set(zip(ablated["seed"], ablated["fold"]))


def table7_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows 1-6 of ``rows`` on the runs of ``table7_runs`` (row 6 = the PIRL row, restricted to them)."""
    in_runs = pd.Series(list(zip(rows["seed"], rows["fold"])), index=rows.index).isin(table7_runs(rows))
    return rows[rows["model"].isin(ABLATION_KEYS) & in_runs]


def table7(rows: pd.DataFrame) -> pd.DataFrame:
    """Table 7 layout on PET/CT: ID, pre-training terms, Dice / HD95 on each of ``SCORED`` (mean over folds, then seeds),
    seeds and the PET+CT Dice seed spread; only the seeds and folds the rows 1-5 ran on (row 6 = the PIRL row,
    restricted to them)."""
    target = target_of(rows)
    rows = table7_rows(rows)
    means = fold_means(rows, [f"Dice/{target}", f"HD95/{target}"])
    out = {}
    for key in dict.fromkeys(rows["model"]):
        row = {"Pretrain": table7_terms(ABLATION_KEYS[key])}
        for subset in SCORED:  # NaN where the row was not scored on the input
            scores = means.reindex([(key, subset)]).iloc[0]
            row |= {f"Dice {subset}": scores[f"Dice/{target}"], f"HD95 {subset}": scores[f"HD95/{target}"]}
        both = means.reindex([(key, INPUTS[0])]).iloc[0]
        row |= {"seeds": both["seeds"], "folds": both["folds"], f"Dice {INPUTS[0]} seed spread": both["Dice seed spread"]}
        out[ABLATION_KEYS[key]] = row
    table = pd.DataFrame.from_dict(out, orient="index").sort_index()
    table[["seeds", "folds"]] = table[["seeds", "folds"]].fillna(0).astype(int)
    table.index.name = "ID"
    return table


def petct_section(work: Path, out: Path) -> list[str]:
    title = "## PET/CT on real patients (Table 8 layout): 16 FDG PET/CT soft-tissue-sarcoma subjects"
    rows = load_per_case(work, PART, [*MODEL_KEYS, *ABLATION_KEYS, *REFERENCES])
    if rows.empty or not set(MODEL_KEYS) & set(rows["model"]):
        return [title, "", "Not run yet."]
    rows = rows.assign(seed=rows["seed"].astype(str))
    trained = set(rows.loc[rows["model"].isin(MODEL_KEYS), "fold"])  # a fold still training: no references
    main = rows[rows["model"].isin(MODEL_KEYS) | (rows["model"].isin(REFERENCES) & rows["fold"].isin(trained))]
    table = table8(main)
    write_csv(table, out / "table8_petct.csv")
    everything = table.xs(LABELS["reference_whole_brain"], level="row")["FPR"] if LABELS[
        "reference_whole_brain"] in table.index.get_level_values("row") else pd.Series(dtype=float)
    seeds = main[main["model"].isin(MODEL_KEYS)].groupby("model")["seed"].nunique()
    lines = [title, "",
             (f"{PARTS[PART][0]} (`sts_pet_ct`, TCIA): PET (SUV) and CT (HU) converted onto the PET grid "
              "(`pirl_convert_folder --resample_to PET`, label: the CT contour), planned at the planner's own "
              f"spacing; held-out subjects {', '.join(sorted(set(main['case'])))} (folds "
              f"{sorted(int(f) for f in set(main['fold']))} of 4, 4 subjects each). Each network is trained ONCE "
              "on PET + CT with random modality dropout (half the samples keep both, the rest a random non-empty "
              "subset; a plain network gets a dropped channel as zeros, PIRLNet fuses the modalities it is given) "
              "and scored on PET + CT and on PET alone (the paper's inputs), and on CT alone (not in the paper); "
              "the paper trains one model per input set, so the PET and CT rows are a cheaper stand-in for a "
              "single-modality model. Lesion metrics on the PET grid (the label's), mean over "
              "folds then seeds; TPR / TNR / FNR / FPR voxel-wise (so FNR = 1 - TPR, TNR = 1 - FPR); HD95 in mm "
              "(an empty prediction scores the evaluator's penalty); CaseTPR = share "
              "of subjects whose tumour is touched by the prediction; CaseTNR is undefined (every crop holds a "
              "tumour). Seeds: " + ", ".join(f"{LABELS[k]} {seeds[k]}" for k in MODEL_KEYS if k in seeds.index)
              + "."), "",
             to_markdown(table, 3), ""]
    if not everything.empty:
        lines += [(f"\"Every voxel\" is whole_brain on PET + CT (non-zero in either channel); its FPR "
                   f"{everything.iloc[0]:.3f} says how much of the crop that is (1.000: all of it, CT air being "
                   "-1000 HU)."), ""]
    lines += [*verdicts(main, table), "", *table7_section(rows, out)]
    return [*lines, *finetune_curves_section(work, PART)]


def table7_section(rows: pd.DataFrame, out: Path) -> list[str]:
    title = "### Table 7 layout on PET/CT: pre-training rows, each fine-tuned the same way"
    if not table7_runs(rows):
        return [title, "", ("Not run yet (on request: `--only petct --models pirl ablation_row1 ... "
                            "ablation_row5`, with the budget's seeds)."), ""]
    table = table7(rows)
    write_csv(table, out / "table7_petct.csv")
    lines = [title, "", ("Rows 1-5: PIRL pre-training with the row's terms off (`pirl_train ... pretrain --disable "
                         "...`), then the same seg fine-tuning; row 6 = the PIRL row of Table 8; the seeds and "
                         "folds the rows 1-5 ran on, mean over folds then seeds."), "", to_markdown(table, 3), ""]
    if 6 in table.index and len(table) > 1:
        lines.append(f"- {table7_verdict(table)}")
    lines += [*_references_on(rows, table7_runs(rows)), ""]
    cases = table7_cases(rows)
    if not cases.empty:
        lines += [("Subject by subject (each subject one patient, its seeds averaged): rows 1-5 minus row 6, and "
                   "on how many subjects the row is ahead; trainings ahead: on how many fine-tunings (fold, seed) "
                   "the row's mean is above row 6's. The subjects of a fold share one training per seed, so the "
                   "trainings, not the subjects, are the independent draws of the training's noise:"), "",
                  to_markdown(cases, 3), ""]
    return lines


def table7_cases(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows 1-5 against row 6 subject by subject: the PET+CT lesion Dice difference (each subject's seeds
    averaged, on the runs of ``table7_runs``): mean, min, max, on how many subjects the row is ahead, and on how
    many trainings (the fold's mean, per seed): with one seed these, not a seed spread, say whether a difference
    holds, and a fold's subjects share their training's noise."""
    target = target_of(rows)
    scored = table7_rows(rows)
    scored = scored[scored["subset"] == INPUTS[0]]
    case = scored.groupby(["model", "fold", "case"])[f"Dice/{target}"].mean().unstack("model")
    run = scored.groupby(["model", "seed", "fold"])[f"Dice/{target}"].mean().unstack("model")
    out = {}
    for key, row in sorted(ABLATION_KEYS.items(), key=lambda kv: kv[1]):
        if row != 6 and (difference := case_difference(case, key, "pirl")):
            ahead = (run[key] - run["pirl"]).dropna()
            out[f"row {row} - row 6"] = difference | {"trainings ahead": f"{int((ahead > 0).sum())}/{len(ahead)}"}
    table = pd.DataFrame.from_dict(out, orient="index")
    table.index.name = f"Dice {INPUTS[0]}"
    return table


def table7_verdict(table: pd.DataFrame) -> str:
    """Row 6 (the full objective) against rows 1-5 on PET+CT Dice: a difference counts only beyond the larger
    seed spread of the two rows; a row (or row 6) with one seed is not judged."""
    column, spread = f"Dice {INPUTS[0]}", f"Dice {INPUTS[0]} seed spread"
    six = table.loc[6]
    head = f"{column}: row 6 {six[column]:.3f}"
    if table[spread].isna().all():
        better = [f"row {i} {v:.3f}" for i, v in table[column].drop(6).items() if v > six[column] + 0.005]
        return (head + "; rows above it by more than 0.005: " + (", ".join(better) if better else "none")
                + " (the paper: row 6 best). One seed: no seed spread to judge these differences by; the subject-by-"
                "subject and training-by-training differences below are the yardstick.")
    above, below, unjudged = [], [], []
    for i, row in table.drop(6).iterrows():
        if pd.isna(row[spread]) or pd.isna(six[spread]):  # either ran one seed
            margin = math.nan
        else:
            margin = max(row[spread], six[spread])
        if pd.isna(margin):
            unjudged.append(f"row {i}")
        elif abs(row[column] - six[column]) > margin:
            (above if row[column] > six[column] else below).append(f"row {i} {row[column]:.3f}")
    return (head + (f" (seed spread {six[spread]:.3f})" if pd.notna(six[spread]) else " (one seed)")
            + "; beyond the larger seed spread of the two rows, above it: " + (", ".join(above) or "none")
            + "; below it: " + (", ".join(below) or "none")
            + (f"; one seed, not judged: {', '.join(unjudged)}" if unjudged else "") + " (the paper: row 6 best).")


def _references_on(rows: pd.DataFrame, runs: set[tuple[str, int]]) -> list[str]:
    """The references' lesion Dice on the same held-out subjects (the folds of ``runs``) as the Table-7 rows."""
    target = target_of(rows)
    refs = rows[rows["model"].isin(REFERENCES) & rows["fold"].isin({fold for _, fold in runs})]
    dice = refs.groupby(["model", "fold"])[f"Dice/{target}"].mean().groupby(level="model").mean()
    if dice.empty:
        return []
    return ["- The references on the same subjects: " + ", ".join(
        f"{LABELS[k]} {dice[k]:.3f}" for k in REFERENCES if k in dice.index) + "."]


def petct_translation_section(work: Path, out: Path) -> list[str]:
    title = "## PET/CT translation (PET -> CT, CT -> PET) on real patients"
    keys = [m.key for m in PETCT_TRANSLATION]
    rows = load_per_case(work, TRANSLATION_PART, [*keys, *TRANSLATION_REFERENCES])
    if rows.empty or not set(keys) & set(rows["model"]):
        return [title, "", "Not run yet."]
    return [title, "",
            (f"{PARTS[TRANSLATION_PART][0]}, the petct folds {sorted(int(f) for f in set(rows['fold']))}; one "
             "modality in, the other out; PSNR / NMSE / SSIM inside the reference's non-zero mask on the PET grid, "
             f"{PERCENTILE_SCALED} (scale-free: SUV and HU never meet). The PIRL "
             "row fine-tunes petct's pre-training; references: the source copied, an intensity mapping fitted on "
             "the training cases."), "",
            *translation_block(rows, keys, TRANSLATION_REFERENCES, TRANSLATION_LABELS, out, "translation_petct")]
