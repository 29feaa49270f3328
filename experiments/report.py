"""Tables (CSV + PNG) and ``RESULTS.md`` of an experiment run, written from whatever results exist.

Verdicts are computed from the numbers (pair counts, differences), never typed in, so a rerun rewrites them.
"""
from __future__ import annotations

import datetime as dt
import math
import os
import platform
from pathlib import Path

import pandas as pd
import torch

from experiments import data
from experiments.config import COMPARISON, PART_MODELS, PARTS, SHARED_PART, Budget, representation_csv
from experiments.curves import finetune_curves_section
from experiments.petct import petct_section, petct_translation_section
from experiments.records import has_run, run_meta
from experiments.reference_rows import SEGMENTATION_REFERENCES, TRANSLATION_REFERENCES
from experiments.stages import TIMINGS
from experiments.table11 import table11_section
from experiments.table11_translation import table11_translation_section
from experiments.tables import (
    PERCENTILE_SCALED,
    ablation_keys,
    ablation_table,
    ablation_verdicts,
    load_per_case,
    model_labels,
    pair_wins_lines,
    plot_bars,
    plot_translation,
    seed_spread,
    segmentation_table,
    to_markdown,
    translation_references_line,
    translation_summary,
    translation_table,
    write_csv,
)
from pirl_pipeline.data.dataset_json import whole_target
from pirl_pipeline.demo import FINETUNE_LR, FINETUNE_SET
from pirl_pipeline.file_io import atomic_path, load_json
from pirl_pipeline.report.markdown import table as markdown_table

COMPARISON_KEYS = [m.key for m in COMPARISON]



def _timings(work: Path) -> str:
    file = work / TIMINGS
    if not file.is_file():
        return "No stage has run yet."
    timings = load_json(file)
    total = sum(t["seconds"] for t in timings.values())
    return markdown_table(["stage", "minutes"], [*([name, f"{t['seconds'] / 60:.1f}"] for name, t in timings.items()),
                                                 ["**total**", f"**{total / 60:.1f}**"]])


def _flag(words: list[str], option: str, default: str) -> str:
    """The value after ``option`` in a command's words, or ``default`` when the command lacks it."""
    return words[words.index(option) + 1] if option in words else default


def settings_run(work: Path) -> str:
    """What each kind of training stage actually ran, from the recorded commands (timings.json): steps
    (``--iters`` x ``--epochs``), lr, Swin window and ``--set`` fields besides the seed, e.g. "train seg: 200
    steps, lr 0.001, window 4, full_modality_share=0.5 lr_schedule=poly" — the truth when runs used other
    budgets (a command without ``--lr`` / ``--window-size`` ran the defaults: 2e-4, the plans' window 7; a DynUNet
    trainer has no window)."""
    file = work / TIMINGS
    kinds: dict[str, set[str]] = {}
    for name, t in (load_json(file) if file.is_file() else {}).items():
        words = t.get("command", "").split()
        if "--iters" not in words or "--epochs" not in words:
            continue

        sets = words[words.index("--set") + 1:] if "--set" in words else []
        sets = sets[:next((i for i, w in enumerate(sets) if w.startswith("-")), len(sets))]
        fields = {}
        for pair in sets:
            if not pair.startswith("seed="):
                fields[pair.split("=")[0]] = pair  # the last one wins, as in pirl_train
        kind = " ".join(w for w in name.split() if w in ("pretrain", "train") or w in PARTS)
        steps = int(_flag(words, "--iters", "0")) * int(_flag(words, "--epochs", "0"))
        trainer = _flag(words, "-tr", "")
        window = ("no window (DynUNet)" if trainer.startswith("DynUNet")
                  else f"window {_flag(words, '--window-size', '7')}")
        kinds.setdefault(kind, set()).add(f"{steps} steps, lr {_flag(words, '--lr', '2e-4')}, {window}, "
                                          + " ".join(sorted(fields.values())))
    return "; ".join(f"{k}: {' / '.join(sorted(v))}" for k, v in sorted(kinds.items())) or "none recorded"


def translation_section(work: Path, out: Path) -> list[str]:
    rows = load_per_case(work, "translation", COMPARISON_KEYS + TRANSLATION_REFERENCES)
    models = [k for k in COMPARISON_KEYS if not rows.empty and k in set(rows["model"])]
    if rows.empty:
        return ["## Translation (Table 10 layout)", "", "Not run yet."]
    present = [k for k in [*COMPARISON_KEYS, *TRANSLATION_REFERENCES] if k in set(rows["model"])]
    labels = model_labels(present)
    full, summary = translation_table(rows, labels), translation_summary(rows, labels)
    write_csv(full, out / "table10_translation.csv")
    write_csv(summary, out / "translation_summary.csv")
    plot_translation(rows, labels, out / "table10_translation_psnr.png", "PSNR")
    plot_translation(rows, labels, out / "table10_translation_ssim.png", "SSIM")
    cases = sorted(set(rows["case"]))
    pairs = rows.groupby(["source", "target"]).ngroups
    lines = ["## Translation (Table 10 layout)", "",
             (f"Held-out cases: {', '.join(cases)} (folds {sorted(set(rows['fold']))}). One modality in, every other "
              f"one out ({pairs} source -> target pairs); PSNR / NMSE / SSIM inside the reference brain mask on the "
              f"original 1 mm grid, {PERCENTILE_SCALED} (BraSyn-style; "
              "`pirl_evaluate` also writes the raw-unit numbers). References are scored by the same evaluator on "
              "the same cases."), "", to_markdown(summary), ""]
    comparisons = [(model, other) for model in models for other in present
                   if other != model and (model == "pirl" or other in TRANSLATION_REFERENCES)]
    lines += pair_wins_lines(rows, comparisons, labels, "pairs (means over cases and seeds)")
    lines += ["", "Per pair (PSNR / NMSE / SSIM): `table10_translation.csv`; heat maps:", "",
              "![PSNR](table10_translation_psnr.png)", "![SSIM](table10_translation_ssim.png)", ""]
    for metric in ("PSNR", "SSIM"):
        per_pair = full.xs(metric, axis=1, level=1)
        lines += [f"{metric} per source -> target pair:", "", to_markdown(per_pair, 2 if metric == "PSNR" else 3), ""]
    return [*lines, *finetune_curves_section(work, "translation")]


SEG_TITLES = {"seg": "BraTS-2015 expert cases (FLAIR + T1c; WT / TC / ET)",
              "seg2": "BraTS-2018 expert cases (FLAIR + T1; whole tumour)"}


def segmentation_section(work: Path, out: Path, part: str = "seg") -> list[str]:
    title = f"## Segmentation (Table 8 layout): {SEG_TITLES[part]}"
    rows = load_per_case(work, part, COMPARISON_KEYS + SEGMENTATION_REFERENCES)
    if rows.empty or not set(COMPARISON_KEYS) & set(rows["model"]):
        return [title, "", "Not run yet."]
    subsets, folds = list(dict.fromkeys(rows["subset"])), sorted(int(f) for f in set(rows["fold"]))
    labels = model_labels([k for k in [*COMPARISON_KEYS, *SEGMENTATION_REFERENCES] if k in set(rows["model"])])
    table = segmentation_table(rows, labels)
    write_csv(table, out / f"table8_{part}.csv")
    dice = table.xs("Dice", axis=1, level=1)
    plot_bars(dice["mean over regions"].unstack("model").reindex(subsets)[list(labels.values())],
              out / f"table8_{part}_dice.png", "Mean Dice over the regions per modality subset", "Dice")
    mean = table["mean over regions"]
    spread = {m: seed_spread(rows[rows["subset"] == subsets[-1]], "Dice/whole tumour").get(m, math.nan)
              for m in COMPARISON_KEYS}
    dataset = PARTS[part][0]
    lines = [title, "",
             (f"{dataset}: cases {', '.join(sorted(set(rows['case'])))}, each tested once over folds {folds}; "
              f"every modality subset. Seeds per model: "
              f"{', '.join(f'{labels[k]} {rows[rows.model == k].seed.nunique()}' for k in COMPARISON_KEYS if k in labels)}."
              " Reference rows are scored by the same evaluator on the same cases (the threshold is fitted on the "
              "training cases, on FLAIR when the subset has it)."), "",
             "Mean over the regions:", "", to_markdown(mean.assign(n=table[("n cases", "")].astype(int))), "",
             "Dice per region:", "", to_markdown(dice), "", f"![Dice](table8_{part}_dice.png)", "",
             (f"Spread of the whole-tumour Dice across seeds ({subsets[-1]}, max - min of the seed means): "
              + ", ".join(f"{labels[k]} {v:.3f}" if not math.isnan(v) else f"{labels[k]} - (one seed)"
                          for k, v in spread.items() if k in labels) + "."), ""]
    whole = dice[whole_target(dice)] if whole_target(dice) is not None else mean["Dice"]
    for subset in subsets:
        spreads = seed_spread(rows[rows["subset"] == subset], "Dice/whole tumour")
        spreads = {labels[k]: v for k, v in spreads.items() if k in labels}
        lines += [f"- {line}" for line in segmentation_verdicts(whole.loc[subset], labels, subset, spread=spreads)]
    return [*lines, "", *finetune_curves_section(work, part)]


def segmentation_verdicts(scores: pd.Series, labels: dict[str, str], subset: str, tie: float = 0.005,
                          spread: dict[str, float] | None = None, models: list[str] | None = None,
                          references: list[str] | None = None) -> list[str]:
    """Whole-tumour Dice of each model against the best reference (|difference| < ``tie``: no difference; those
    that beat it, then those that do not), and PIRL against the best other model: a lead no larger than the seed
    spread (``spread``: model label -> max - min of its seed means; NaN: one seed) of either model is "within the
    seed spread", not a win. ``models`` / ``references``: their keys (default COMPARISON's and the BraTS parts'
    references)."""
    refs = [labels[k] for k in (references or SEGMENTATION_REFERENCES) if k in labels and labels[k] in scores]
    models = [labels[k] for k in (models or COMPARISON_KEYS) if k in labels and labels[k] in scores]
    out = []
    if refs:
        best_ref = max(refs, key=lambda r: scores[r])
        beaten = [m for m in models if scores[m] > scores[best_ref] + tie]
        named = {m: f"{m} {scores[m]:.3f}" for m in models}
        if beaten:
            kept = [named[m] for m in models if m not in beaten]
            verdict = (f"beaten (by > {tie}) by: {', '.join(named[m] for m in beaten)}"
                       + (f"; not by: {', '.join(kept)}." if kept else "."))
        else:
            verdict = (f"no model beats it by more than {tie} (best model {max(scores[m] for m in models):.3f}): "
                       "at this budget the models have not learned more than the reference.")
        out.append(f"{subset}: best reference {best_ref} {scores[best_ref]:.3f}; {verdict}")
    if "pirl" in labels and labels["pirl"] in scores:
        pirl, others = scores[labels["pirl"]], scores[[m for m in models if m != labels["pirl"]]]
        if len(others):
            best, diff = others.idxmax(), pirl - others.max()
            known = [(spread or {}).get(labels["pirl"], 0.0), (spread or {}).get(best, 0.0)]
            noise = max((v for v in known if not math.isnan(v)), default=0.0)
            verdict = "no difference" if abs(diff) < tie else (
                "one seed, so no seed spread to judge it: not evidence" if any(map(math.isnan, known)) else
                f"within the seed spread ({noise:.3f}), not evidence" if abs(diff) <= noise else
                "PIRL wins" if diff > 0 else "PIRL does not win")
            out.append(f"{subset}: PIRL {pirl:.3f} vs best other model ({best}) {others.max():.3f}: {verdict} "
                       f"({diff:+.3f}).")
    return out


def ablation_section(work: Path, out: Path) -> list[str]:
    rows = load_per_case(work, "translation", list(ablation_keys()))
    rows = rows[rows["seed"] == "first"] if not rows.empty else rows  # the ablation rows ran the first seed
    ablated = rows[rows["model"] != "pirl"] if not rows.empty else rows
    if ablated.empty:
        return ["## Ablation (Table 7 layout, translation task)", "", "Not run yet."]
    rows = rows[rows["fold"] == ablated["fold"].min()]  # the fold the ablation rows ran on
    table = ablation_table(rows)
    write_csv(table, out / "table7_ablation.csv")
    plot_bars(table[["SSIM"]].rename(index=lambda i: f"row {i}"), out / "table7_ablation_ssim.png",
              "Table-7 rows: mean translation SSIM", "SSIM")
    lines = ["## Ablation (Table 7 layout, translation task)", "",
             (f"Pre-training variants, each followed by the same translation fine-tuning; fold "
             f"{int(rows['fold'].iloc[0])}, first seed; means over all pairs and held-out cases."), "",
             to_markdown(table), "",
             "![ablation](table7_ablation_ssim.png)", ""]
    if len(table) > 1:
        scratch = load_per_case(work, "translation", ["pirl_scratch"])
        scratch = scratch[scratch["fold"] == rows["fold"].iloc[0]] if not scratch.empty else scratch
        for metric in ("PSNR", "SSIM"):
            spread = table[metric].max() - table[metric].min()
            gap = (f"; for scale, row 6 minus PIRLNet from scratch (no pre-training): "
                   f"{table.loc[6, metric] - scratch[metric].mean():+.4f}" if 6 in table.index and not scratch.empty
                   else "")
            lines.append(f"- {metric} spread across the rows (max - min): {spread:.4f}{gap}.")
        references = load_per_case(work, "translation", TRANSLATION_REFERENCES)
        references = references[references["fold"] == rows["fold"].iloc[0]] if not references.empty else references
        lines += translation_references_line(references, model_labels())  # the same evaluator, cases, pairs
    lines += ablation_verdicts(table)
    lines += pretraining_loss_shares(work, [int(i) for i in table.index], int(rows["fold"].iloc[0]))
    return lines


def pretraining_loss_shares(work: Path, table_rows: list[int], fold: int) -> list[str]:
    """One line: each row's pre-training terms in its last epoch (checkpoint history), and the share of
    L_decom in the total: what the rows differ by, seen from the loss."""
    from experiments.run import Experiment  # the one owner of the results-folder layout

    layout, parts = Experiment(Budget(), work), []
    for row in table_rows:
        key = {r: k for k, r in ablation_keys().items()}[row]
        path = layout.fold_folder(key, "translation", "PIRLPretrainer", fold).checkpoint()
        if not has_run(path):
            continue
        last = (run_meta(path).get("history") or [{}])[-1]  # the weights are never read
        terms = {k.split("/")[1]: v for k, v in last.items() if k.startswith("train/") and k != "train/loss"}
        if terms and last.get("train/loss"):
            share = terms.get("decomposition", 0.0) / last["train/loss"]
            parts.append(f"row {row}: " + ", ".join(f"{t} {v:.3g}" for t, v in sorted(terms.items()))
                         + f" (L_decom {share:.0%} of the loss)")
    if not parts:
        return []
    return ["- Pre-training loss terms in the last epoch (the terms a row switches off are absent): "
            + "; ".join(parts) + "."]


SHORT = {"retrieval_top1": "retrieval", "retrieval_top1_centered": "retrieval centred",
         "variance_ratio": "within/between", "cosine_other_subjects": "cos other"}


def representation_section(work: Path, out: Path) -> list[str]:
    title = "## The representation itself: personalised and invariant?"
    csv = representation_csv(work)
    if not csv.is_file():
        return [title, "", "Not run yet."]
    table = pd.read_csv(csv)
    write_csv(table.set_index(["model", "dataset", "representation"]), out / "representation.csv")
    lines = [title, "",
             ("Subjects no pre-training saw, each modality alone through the encoder (centre 64^3 patch): "
              "**retrieval** = top-1 accuracy of finding the same subject from another modality by cosine "
              "similarity (chance = 1/N; *centred*: after removing the mean embedding, so a shared component such "
              "as the prior O cannot dominate); **within/between** = mean within-subject variance across "
              "modalities over the between-subject variance of the subject means (0 = perfectly personalised "
              "invariant; about M = no subject structure); **cos other** = mean cosine between different "
              "subjects (about 1 = collapse)."), ""]
    for dataset, part in table.groupby("dataset", sort=False):
        n, m = int(part["subjects"].iloc[0]), int(part["modalities"].iloc[0])
        view = part.pivot_table(index="model", columns="representation", sort=False,
                                values=["retrieval_top1", "retrieval_top1_centered", "variance_ratio",
                                        "cosine_other_subjects"])
        view.columns = [f"{r} {SHORT[metric]}" for metric, r in view.columns]
        lines += [(f"{dataset}: {n} subjects x {m} modalities (retrieval chance {1 / n:.3f}, within/between "
                   f"without structure ~{m}):"), "", to_markdown(view[sorted(view.columns)]), ""]
    return lines


def curves_section(out: Path) -> list[str]:
    """The learning curves (``python -m experiments.curves``) that chose the budget, if they were run."""
    csv = out / "learning_curves.csv"
    if not csv.is_file():
        return []
    table = pd.read_csv(csv)
    lines = ["## Learning curves (how the budget was chosen)", "",
             ("`python -m experiments.curves`: training from scratch at the experiments' sizes (3 mm, 64^3, fs 12, "
              "batch 1, constant lr 2e-4), validated on WHOLE volumes after every epoch (the trainer's "
              "`val_volumes`, scored like `pirl_evaluate`). The validation cases are only used to read the curves, "
              "never to select a model for the tables."), "", "![curves](learning_curves.png)", ""]
    for curve, rows in table.groupby("curve", sort=False):
        keys = [k for k in ("val/volume_dice_whole_tumour", "val/volume_psnr", "val/dice_whole_tumour", "val/psnr")
                if k in rows and rows[k].notna().any()]
        view = rows.set_index("steps")[[*keys, "epoch_time"]].rename(columns=lambda c: c.replace("val/", ""))
        lines += [f"{curve}:", "", to_markdown(view.T, 3), ""]
    return lines


def coverage(work: Path, parts: list[str] | None = None) -> list[str]:
    """What has results, per part (of ``parts``; None: all): the models (with their number of seeds) and the
    references."""
    lines = []
    for part in [p for p in PARTS if p not in PART_MODELS and (parts is None or p in parts)]:  # seg4*: table11*.py, petct*: petct.py
        references = TRANSLATION_REFERENCES if part == "translation" else SEGMENTATION_REFERENCES
        rows = load_per_case(work, part, COMPARISON_KEYS + references)
        if rows.empty:
            lines.append(f"- {part}: nothing run yet.")
            continue
        labels = model_labels()
        present = [f"{labels[k]} ({rows[rows.model == k].seed.nunique()} seed(s), folds "
                   f"{sorted(set(rows[rows.model == k].fold))})" for k in COMPARISON_KEYS if k in set(rows["model"])]
        missing = [labels[k] for k in COMPARISON_KEYS if k not in set(rows["model"])]
        lines.append(f"- {part}: " + ("; ".join(present) or "no model yet") + "; references: "
                     + ", ".join(labels[k] for k in references if k in set(rows["model"]))
                     + (f". NOT run yet: {'; '.join(missing)}." if missing else "."))
    return lines


def write_report(work: Path, out: Path, budget: Budget, quick: bool, parts: list[str] | None = None) -> Path:
    """Write every table that has results, and ``out/RESULTS.md`` (the sections of ``parts``, None: all);
    returns its path."""
    tables = out / ("results" if not quick else "")
    tables.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(tables, out)
    writers = {"translation": lambda: [*curves_section(tables), "", *translation_section(work, tables)],
               "seg": lambda: segmentation_section(work, tables, "seg"),
               "seg2": lambda: segmentation_section(work, tables, "seg2"),
               "seg4": lambda: table11_section(work, tables),
               "seg4_translation": lambda: table11_translation_section(work, tables),
               "ablation": lambda: ablation_section(work, tables),
               "representation": lambda: representation_section(work, tables),
               "petct": lambda: petct_section(work, tables),
               "petct_translation": lambda: petct_translation_section(work, tables)}
    sections = [line for part, write in writers.items() if parts is None or part in parts for line in [*write(), ""]]
    sections = [s.replace("](", f"]({rel}/") if rel != "." and s.startswith("![") else s for s in sections]
    b = budget
    uses_petct = any(SHARED_PART.get(part, part) == "petct" for part in (PARTS if parts is None else parts))
    own = f"{b.petct_spacing:g} mm" if b.petct_spacing else "the planner's own"
    petct_spacing = f" (PET/CT: {own})" if uses_petct else ""
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
        *(f"- Data (real images from `../shared/data`, converted by pirl's converters): {line}"
          for line in data.describe_datasets(parts)),
        (f"- Budget (equal for every model): spacing {b.spacing:g} mm{petct_spacing}, patch {b.patch}^3, feature_size "
         f"{b.feature_size}, batch {b.batch_size}, {b.epochs} epochs; pre-training {b.pretrain_steps} steps, "
         f"fine-tuning {b.finetune_steps('seg')} seg / {b.finetune_steps('translate')} translation steps (the "
         f"'equal total steps' baseline adds {b.pretrain_steps}); Swin window {b.window_size}; AdamW, "
         f"pre-training lr 2e-4 {b.lr_schedule}, fine-tuning the demo's settings per task (seg lr "
         f"{FINETUNE_LR['seg']:g} {' '.join(FINETUNE_SET['seg'])}; translation lr {FINETUNE_LR['translate']:g} "
         f"{' '.join(FINETUNE_SET['translate'])}), nnU-Net augmentation (intensity on the inputs only), seeds "
         f"{', '.join(map(str, b.seeds))} for the main rows (Dataset601's ablation rows and the equal-steps baseline: "
         "the first); prediction: sliding window, overlap 0.5, Gaussian, no TTA; the final checkpoint of every run "
         "(no model selection on the test cases). Actually run (recorded commands; they win where a part was run "
         f"with another budget): {settings_run(work)}."),
        (f"- Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
         f"{torch.__version__}, device {b.device}."),
        ("- Scale: the paper trains 1000 epochs on 4 GPUs with hundreds of subjects; this is a few hundred steps "
         "on 2-12 training subjects, so absolute numbers are far below the paper's, and with 2-4 test cases per fold "
         "a small difference between models is not evidence: read the seed spreads."),
        "",
        "## What has results (computed from the result folders)",
        "",
        *(coverage(work, parts) or ["- the parts run here report their own coverage below."]),
        "",
    ]
    report = out / "RESULTS.md"
    with atomic_path(report) as tmp:
        tmp.write_text("\n".join([*head, *sections, "", "## Wall time per stage", "", _timings(work), ""]))
    return report
