"""``report.md``: the figures tied together with the metric tables and what was run."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pirl_pipeline.data.dataset_json import whole_target
from pirl_pipeline.report.collect import PredictionFolder, TrainerRun, format_value, summary_table
from pirl_pipeline.report.overview import OverviewResult
from pirl_pipeline.tasks import SEG, TRANSLATE, get_task

PAPER_FEATURE_SIZE = 48
PAPER_PATCH = 96
DEFAULT_ITERATIONS = 1000 * 250  # TrainerConfig defaults: epochs x iters_per_epoch (nnU-Net's budget)


@dataclass
class ReportData:
    dataset: str
    results_dir: Path
    command: str
    generated: str
    runs: list[TrainerRun] = field(default_factory=list)
    predictions: list[PredictionFolder] = field(default_factory=list)
    overview: OverviewResult | None = None
    figures: dict[str, str] = field(default_factory=dict)  # file name -> caption, for the figures written
    missing: list[str] = field(default_factory=list)
    images_dir: Path | None = None
    labels_dir: Path | None = None


def _cell(value) -> str:
    text = value if isinstance(value, str) else format_value(value)
    return text.replace("|", "\\|").replace("\n", " ")


def table(header: list[str], rows: list[list]) -> str:
    """A GitHub markdown table (cells formatted with :func:`format_value`)."""
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def frame_table(frame: pd.DataFrame, corner: str = "") -> str:
    return table([corner, *[str(c) for c in frame.columns]],
                 [[str(i), *row] for i, row in zip(frame.index, frame.itertuples(index=False))])


def _patch(patch) -> str:
    return "×".join(str(p) for p in patch) if patch else "?"


def _lr(lr) -> str:
    return f"{lr:.1e}" if isinstance(lr, (int, float)) else "?"


def configuration_statement(runs: list[TrainerRun]) -> str:
    """A plain sentence on how the trained configuration compares to the paper's."""
    if not runs:
        return "No trained model was found, so the configuration size is unknown."
    sizes = sorted({r.feature_size for r in runs if r.feature_size})
    patches = sorted({_patch(r.patch_size) for r in runs if r.patch_size})
    iterations = [r.iterations for r in runs if r.iterations is not None]
    devices = sorted({r.device for r in runs if r.device})
    facts = (f"feature size {', '.join(map(str, sizes)) or '?'}, patch {', '.join(patches) or '?'}, "
             f"at most {max(iterations) if iterations else '?'} optimisation steps per run"
             + (f", device {', '.join(devices)}" if devices else ""))
    small_net = any(s < PAPER_FEATURE_SIZE for s in sizes) or any(
        min(r.patch_size) < PAPER_PATCH for r in runs if r.patch_size)
    short = not iterations or max(iterations) < DEFAULT_ITERATIONS // 10
    if small_net:
        return (f"**Tiny configuration** ({facts}; the paper uses feature size {PAPER_FEATURE_SIZE} and "
                f"{PAPER_PATCH}³ patches): the numbers below are a smoke test of the pipeline, not the paper's "
                "results.")
    if short:
        return (f"**Paper-size network, short schedule** ({facts}; trainer default {DEFAULT_ITERATIONS} steps): "
                "the numbers below are indicative, not converged results.")
    return f"**Full-size configuration** ({facts})."


def postprocessing_statement(record: dict) -> str:
    """``keep the largest component of labels [1, 2, 3] (mean validation Dice 0.801 -> 0.823); ...`` from a
    postprocessing.json, every candidate with its decision."""
    parts = [f"{'keep' if d.get('accepted') else 'not kept:'} the largest component of labels {d.get('keep_largest')} "
             f"(mean validation Dice {format_value(d.get('dice_before'))} -> {format_value(d.get('dice_after'))})"
             for d in record.get("decisions", [])]
    return "; ".join(parts) or "no candidate"


def _runs_section(runs: list[TrainerRun]) -> list[str]:
    rows = []
    for r in runs:
        planned = r.config.get("epochs")
        epochs = f"{r.epochs_done if r.epochs_done is not None else len(r.history)}" + (
            f"/{planned}" if planned is not None else "")
        disabled = ", ".join(r.config.get("disabled") or []) or "–"
        rows.append([r.trainer, r.task, r.fold, "finished" if r.finished else f"unfinished ({r.source})", epochs,
                     r.config.get("iters_per_epoch", "?"), r.iterations if r.iterations is not None else "?",
                     r.batch_size or "?", _patch(r.patch_size), r.feature_size or "?",
                     r.network.get("window_size", "–"), _lr(r.config.get("lr")),
                     disabled, r.device or "?", f"{r.training_time:.0f} s"])
    out = ["## What was run", "",
           table(["trainer", "task", "fold", "status", "epochs", "iterations/epoch", "iterations", "batch",
                  "patch", "feature size", "Swin window", "lr", "ablated terms", "device", "training time"], rows),
           ""]
    finals = []
    for r in runs:
        if r.history:
            last = r.history[-1]
            values = ", ".join(f"{k} {format_value(v)}" for k, v in last.items() if "/" in k)
            finals.append(f"- {r.name} (epoch {last.get('epoch', '?')}): {values or 'no values'}")
    if finals:
        out += ["Last epoch of each run:", "", *finals, ""]
    chosen = [f"- {r.name}: {postprocessing_statement(r.postprocessing)}" for r in runs if r.postprocessing]
    if chosen:
        out += [("Post-processing chosen on each fold's validation cases (`postprocessing.json`, applied by "
                "`pirl_predict`):"), "", *chosen, ""]
    validation = [(r, r.validation) for r in runs if r.validation and r.validation.get("metrics")]
    if validation:
        keys = sorted({k for _, v in validation for k in v["metrics"]})
        out += [("Patch-level validation of the final models (`validation/summary.json`: random patches of the "
                 "validation cases, not full images):"), "",
                table(["run", "patches", *keys],
                      [[r.name, v.get("patches", "?"), *[v["metrics"].get(k) for k in keys]] for r, v in validation]),
                ""]
    return out


COMPARED = {SEG.name: ("Dice", "HD95", "CaseTPR"), TRANSLATE.name: ("PSNR", "SSIM", "NMSE")}


def comparison_rows(predictions: list[PredictionFolder], task: str) -> pd.DataFrame:
    """One row per evaluated folder of ``task``. seg: the metrics of COMPARED for the whole tumour
    (``dataset_json.whole_target``; else the mean over targets) and the Dice mean over all targets; translate:
    the mean over the synthesised targets (the input channel, named by the folder's suffix, excluded).
    Folders named ``*reference*`` are the trivial references (``pirl_reference``)."""
    rows = {}
    for p in predictions:
        if p.task != task or not p.summary:
            continue
        mean = p.summary.get("mean") or {}
        if get_task(task).predicts_labels:
            whole = whole_target(mean)
            targets = [whole] if whole is not None else list(mean)
        else:
            targets = [t for t in mean if t.lower() != p.source]
        row = {}
        for metric in COMPARED[task]:
            values = [float(mean[t][metric]) for t in targets if isinstance(mean[t].get(metric), int | float)]
            row[f"{metric} ({targets[0]})" if get_task(task).predicts_labels and len(targets) == 1 else metric] = (
                sum(values) / len(values) if values else float("nan"))
        if get_task(task).predicts_labels:
            dice = [float(m["Dice"]) for m in mean.values() if isinstance(m.get("Dice"), int | float)]
            row["Dice (mean over all targets)"] = sum(dice) / len(dice) if dice else float("nan")
        rows[p.label] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def _comparison_section(predictions: list[PredictionFolder]) -> list[str]:
    out = []
    for task, what in ((SEG.name, "Dice / HD95 (mm) / case-level detection of the whole tumour"),
                       (TRANSLATE.name, ("PSNR / SSIM / NMSE on per-volume percentile-scaled intensities, mean over "
                                     "the synthesised modalities"))):
        frame = comparison_rows(predictions, task)
        if frame.empty or not any("reference" in str(i) for i in frame.index):
            continue
        if not out:
            out = ["## Models against trivial references", "",
                   ("The same held-out cases and the same evaluator (`pirl_evaluate`); a model row means something "
                   "only where it beats the `*reference*` rows (`pirl_reference`)."), ""]
        out += [f"{task}: {what}.", "", frame_table(frame.map(format_value), "predictions"), ""]
    return out


def _predictions_section(predictions: list[PredictionFolder]) -> list[str]:
    evaluated = [p for p in predictions if p.summary]
    if not evaluated:
        return []
    out = ["## Held-out predictions (`pirl_evaluate`)", ""]
    for p in evaluated:
        s = p.summary
        out += [f"### {p.label} ({p.task}, {s.get('num_cases', '?')} case(s))", "",
                f"Predictions `{p.folder}`" + (f" against `{s['reference']}`" if s.get("reference") else "")
                + "; mean ± std over cases.", ""]
        frame = summary_table(s)
        suffix = p.label.rsplit("_", 1)[-1].lower()
        if p.task == TRANSLATE.name and "_" in p.label and suffix in [str(i).lower() for i in frame.index]:
            frame.index = [f"{i} (the input: reconstruction)" if str(i).lower() == suffix else i for i in frame.index]
        if frame.empty:
            out += ["(the summary holds no metrics)", ""]
        else:
            out += [frame_table(frame.fillna("–"), "target"), ""]
    return out


def _matrix_section(runs: list[TrainerRun], figures: dict[str, str]) -> list[str]:
    out = []
    dice = [r for r in runs if r.missing_dice is not None]
    if dice:
        out += ["## Segmentation with missing modalities (`pirl_evaluate_missing -t seg`)", ""]
        if "missing_modalities.png" in figures:
            out += ["![missing modalities](missing_modalities.png)", "", figures["missing_modalities.png"], ""]
        for r in dice:
            out += [f"Dice, {r.matrix_title('seg')} (rows: input modalities):", "", frame_table(r.missing_dice, "subset"), ""]
    trans = [r for r in runs if r.translation]
    if trans:
        out += ["## Translation matrix (`pirl_evaluate_missing -t translate`)", ""]
        if "translation_matrix.png" in figures:
            out += ["![translation matrix](translation_matrix.png)", "", figures["translation_matrix.png"], ""]
        for r in trans:
            for metric, matrix in r.translation.items():
                unit = " (dB)" if metric == "PSNR" else ""
                out += [f"{metric}{unit}, {r.matrix_title('translate')} (rows: source, columns: target):", "",
                        frame_table(matrix, "source \\ target"), ""]
    return out


def render(data: ReportData) -> str:
    lines = [f"# pirl report: {data.dataset}", "",
             f"Generated {data.generated} by `{data.command}` from `{data.results_dir}`.", "",
             configuration_statement(data.runs), ""]
    if data.runs:
        lines += _runs_section(data.runs)
    ov = data.overview
    if "overview.png" in data.figures and ov is not None:
        lines += ["## Overview of a held-out case", "", "![overview](overview.png)", "",
                  data.figures["overview.png"], "",
                  f"Case `{ov.case}`" + (f" from `{data.images_dir}`" if data.images_dir else "")
                  + (f"; slices {', '.join(f'{k} {v}' for k, v in ov.slices.items())}" if ov.slices else "")
                  + ". Shown: " + ("; ".join(ov.shown) or "nothing") + ".", ""]
    if "training_curves.png" in data.figures:
        lines += ["## Training curves", "", "![training curves](training_curves.png)", "",
                  data.figures["training_curves.png"], ""]
    lines += _comparison_section(data.predictions)
    lines += _predictions_section(data.predictions)
    lines += _matrix_section(data.runs, data.figures)
    lines += ["## Missing or skipped", ""]
    lines += [f"- {m}" for m in data.missing] if data.missing else ["Nothing: every expected input was found."]
    lines.append("")
    return "\n".join(lines)

