"""Collect a dataset's results, draw the figures, write ``report.md``; each file atomically.

Nothing missing is fatal: a figure without inputs is skipped and the report lists it. The only error is a
dataset with no results at all (no trained fold and no prediction folder).
"""
from __future__ import annotations

import datetime
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pirl_pipeline.data.dataset_json import DatasetJson, load_dataset_json, parse_dataset_json
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.file_io import atomic_path
from pirl_pipeline.fold_folder import VALIDATION_SUMMARY, segmentation_matrix_name, translation_matrix_name
from pirl_pipeline.paths import find_dataset_name, raw_root, results_root
from pirl_pipeline.report import figures
from pirl_pipeline.report.collect import PredictionFolder, TrainerRun, collect_runs, read_prediction_folder
from pirl_pipeline.report.markdown import ReportData, render
from pirl_pipeline.report.overview import draw_overview
from pirl_pipeline.tasks import SEG, TRANSLATE

log = logging.getLogger("pirl")



@dataclass
class ReportOptions:
    dataset: str
    output: Path | None = None  # default RESULTS/DatasetXXX_Name/report
    case: str | None = None  # default: the held-out case the most prediction folders cover
    images: Path | None = None  # default RAW/DatasetXXX_Name/imagesTs (imagesTr when there is no imagesTs)
    labels: Path | None = None  # default the matching labelsTs / labelsTr
    seg_dirs: list[Path] | None = None  # both None: every evaluated folder under predictions/ (task: its summary)
    translate_dirs: list[Path] | None = None
    command: str = "pirl_report"


@dataclass
class ReportResult:
    folder: Path
    written: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def dataset_json_for(name: str, runs: list[TrainerRun], missing: list[str]) -> DatasetJson | None:
    try:
        return load_dataset_json(raw_root() / name)
    except PirlInputError as err:
        for run in runs:
            if run.dataset_json:
                try:
                    dj = parse_dataset_json(dict(run.dataset_json), f"{run.folder} checkpoint")
                except PirlInputError:
                    continue
                missing.append(f"dataset.json: {err}; used the copy inside the {run.name} checkpoint")
                return dj
        missing.append(f"dataset.json: {err}; channel names are unknown")
        return None


def _prediction_folders(results_dir: Path, options: ReportOptions, missing: list[str]) -> list[PredictionFolder]:
    """The folders given (their task by option), or else every folder under predictions/ that ``pirl_evaluate``
    scored: its summary.json says the task."""
    folders: list[tuple[Path, str | None]] = [(Path(p), SEG.name) for p in options.seg_dirs or []]
    folders += [(Path(p), TRANSLATE.name) for p in options.translate_dirs or []]
    root = results_dir / "predictions"
    if options.seg_dirs is None and options.translate_dirs is None and root.is_dir():
        folders = [(p, None) for p in sorted(root.iterdir()) if p.is_dir()]
    out = []
    for folder, task in folders:
        if not folder.is_dir():
            missing.append(f"prediction folder `{folder}` ({task}) not found")
            continue
        pred = read_prediction_folder(folder.name, folder, task, missing)
        if pred.summary is None:
            missing.append(f"`{folder}` has no summary.json (run pirl_evaluate on it for its metric table"
                           + ("; until then its task is unknown and it is not shown)" if pred.task is None else ")"))
        if pred.task is not None:
            out.append(pred)
    return out


def _raw_folders(name: str, options: ReportOptions) -> tuple[Path | None, Path | None]:
    raw = raw_root() / name
    images = options.images
    if images is None:
        images = raw / "imagesTs" if (raw / "imagesTs").is_dir() else raw / "imagesTr"
    labels = options.labels
    if labels is None:
        labels = raw / ("labelsTs" if images.name == "imagesTs" else "labelsTr")
    return images, labels


def _draw(name: str, fn: Callable[[], None], written: list[str], missing: list[str]) -> bool:
    try:
        fn()
    except PirlInputError:
        raise
    except Exception as err:  # noqa: BLE001 - one figure failing must not lose the rest of the report
        log.debug("%s", traceback.format_exc())
        missing.append(f"{name} could not be drawn ({type(err).__name__}: {str(err)[:160]})")
        return False
    written.append(name)
    return True


def build_report(options: ReportOptions) -> ReportResult:
    root = results_root()
    try:
        name = find_dataset_name(options.dataset, root)
    except PirlInputError as err:
        raise PirlInputError(f"no results for dataset {options.dataset}: {err}") from None
    results_dir = root / name
    out = Path(options.output) if options.output is not None else results_dir / "report"
    missing: list[str] = []
    runs = collect_runs(results_dir)
    predictions = _prediction_folders(results_dir, options, missing)
    if not runs and not any(p.summary or p.files() for p in predictions):
        raise PirlInputError(f"{results_dir}: no results (no trained fold TRAINER__PLANS__CONFIG/fold_F and no "
                             "predictions); train and predict first")
    for run in runs:
        missing += run.problems
        if run.task == SEG.name and run.missing_dice is None:
            missing.append(f"{run.name}: no {SEG.subsets_folder}/{segmentation_matrix_name('dice')}.csv "
                           f"(pirl_evaluate_missing -d {options.dataset} -f {run.fold} -t seg -tr {run.trainer})")
        if run.task == TRANSLATE.name and not run.translation:
            missing.append(f"{run.name}: no {TRANSLATE.subsets_folder}/{translation_matrix_name('PSNR')}.csv or "
                           f"{translation_matrix_name('SSIM')}.csv "
                           f"(pirl_evaluate_missing -d {options.dataset} -f {run.fold} -t translate "
                           f"-tr {run.trainer})")
        if run.validation is None and run.finished:
            missing.append(f"{run.name}: no {VALIDATION_SUMMARY}")
    if not runs:
        missing.append(f"no trained fold in `{results_dir}`: no training curves and no run table")
    dj = dataset_json_for(name, runs, missing)
    channel_names = [dj.channel_names[str(c)] for c in range(dj.num_channels)] if dj else []
    label_names = {int(k): str(v) for k, v in (dj.extra.get("label_names") or {}).items()} if dj else {}
    if dj and not label_names:
        label_names = {v: k for k, v in dj.labels.items() if isinstance(v, int) and v != 0}
    images_dir, labels_dir = _raw_folders(name, options)
    if not images_dir.is_dir():
        missing.append(f"images folder `{images_dir}` not found: the overview has no input or reference panels")
    result = ReportResult(out)
    data = ReportData(name, results_dir, options.command,
                      datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), runs, predictions,
                      images_dir=images_dir if images_dir.is_dir() else None,
                      labels_dir=labels_dir if labels_dir.is_dir() else None)
    out.mkdir(parents=True, exist_ok=True)

    def overview() -> None:
        data.overview = draw_overview(
            out / "overview.png", channel_names=channel_names, label_names=label_names,
            file_ending=dj.file_ending if dj else ".nii.gz", images_dir=data.images_dir, labels_dir=data.labels_dir,
            seg_preds=[p for p in predictions if p.task == SEG.name],
            translate_preds=[p for p in predictions if p.task == TRANSLATE.name], case=options.case)
        missing.extend(data.overview.notes)
        if not data.overview.written:
            raise FileNotFoundError("nothing to show")

    if _draw("overview.png", overview, result.written, missing):
        data.figures["overview.png"] = (
            "Top: the input modalities. Middle: each synthesised modality next to its reference and the difference "
            "map (red: synthesised brighter than the reference, blue: darker). Bottom: the reference label and "
            "each predicted segmentation overlaid on FLAIR. Panel titles give the case's PSNR/Dice where the "
            "prediction folder was evaluated.")
    matrix_figures = (  # name, what to draw, drawer, caption, why it is absent (None: say nothing)
        ("training_curves.png", [r for r in runs if r.history], figures.training_curves, (
            "One row per trainer and fold: every training loss term (left; log scale when the terms span "
            "more than a factor 30), every validation metric (middle; `metric` is the one that picks "
            "checkpoint_best), the learning rate and the epoch time (right)."),
         "no run has a per-epoch history" if runs else None),
        ("missing_modalities.png", [(r.matrix_title(SEG.name), r.missing_dice) for r in runs
                                    if r.missing_dice is not None], figures.missing_modalities, (
            "Dice of the segmentation predicted from each non-empty subset of the input modalities (rows) "
            "for each label/region (columns), mean over the evaluated cases."),
         "no missing_modalities_dice.csv in any fold"),
        ("translation_matrix.png", [(r.matrix_title(TRANSLATE.name), r.translation) for r in runs if r.translation],
         figures.translation_matrices, (
            "PSNR (dB) and SSIM of each target modality synthesised from a single source modality, mean over "
            "the evaluated cases; the diagonal (source = target) is not evaluated."),
         "no translation_psnr.csv / translation_ssim.csv in any fold"),
    )
    for name, items, drawer, caption, absent in matrix_figures:
        if not items:
            if absent:
                missing.append(f"{name}: {absent}")
        elif _draw(name, lambda: drawer(items, out / name), result.written, missing):  # noqa: B023 - called now
            data.figures[name] = caption
    data.missing = missing
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(render(data))
    result.written.append("report.md")
    result.missing = missing
    return result
