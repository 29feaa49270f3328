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
from functools import partial
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

OVERVIEW_CAPTION = (
    "Top: the input modalities. Middle: each synthesised modality next to its reference and the difference "
    "map (red: synthesised brighter than the reference, blue: darker). Bottom: the reference label and "
    "each predicted segmentation overlaid on FLAIR. Panel titles give the case's PSNR/Dice where the "
    "prediction folder was evaluated.")


@dataclass
class ResultFigure:
    """A figure of the runs' results: ``drawer(items, path)`` draws it when ``items`` is not empty; ``absent``
    says why it is not (None: say nothing)."""
    name: str
    items: list
    drawer: Callable[[list, Path], None]
    caption: str
    absent: str | None


def _results_folder(dataset: str) -> Path:
    """RESULTS/DatasetXXX_Name of ``dataset`` (an id or a name)."""
    root = results_root()
    try:
        return root / find_dataset_name(dataset, root)
    except PirlInputError as err:
        raise PirlInputError(f"no results for dataset {dataset}: {err}") from None


def _require_results(results_dir: Path, runs: list[TrainerRun], predictions: list[PredictionFolder]) -> None:
    if not runs and not any(p.summary or p.files() for p in predictions):
        raise PirlInputError(f"{results_dir}: no results (no trained fold TRAINER__PLANS__CONFIG/fold_F and no "
                             "predictions); train and predict first")


def _run_problems(runs: list[TrainerRun], dataset: str, results_dir: Path) -> list[str]:
    """What each run lacks (with the command that makes it), or that there is no run at all."""
    missing = []
    for run in runs:
        missing += run.problems
        if run.task == SEG.name and run.missing_dice is None:
            missing.append(f"{run.name}: no {SEG.subsets_folder}/{segmentation_matrix_name('dice')}.csv "
                           f"(pirl_evaluate_missing -d {dataset} -f {run.fold} -t seg -tr {run.trainer})")
        if run.task == TRANSLATE.name and not run.translation:
            missing.append(f"{run.name}: no {TRANSLATE.subsets_folder}/{translation_matrix_name('PSNR')}.csv or "
                           f"{translation_matrix_name('SSIM')}.csv "
                           f"(pirl_evaluate_missing -d {dataset} -f {run.fold} -t translate "
                           f"-tr {run.trainer})")
        if run.validation is None and run.finished:
            missing.append(f"{run.name}: no {VALIDATION_SUMMARY}")
    if not runs:
        missing.append(f"no trained fold in `{results_dir}`: no training curves and no run table")
    return missing


def _channel_names(dj: DatasetJson | None) -> list[str]:
    return [dj.channel_names[str(c)] for c in range(dj.num_channels)] if dj else []


def _label_names(dj: DatasetJson | None) -> dict[int, str]:
    """``{value: name}`` from dataset.json's label_names, else from its integer labels."""
    label_names = {int(k): str(v) for k, v in (dj.extra.get("label_names") or {}).items()} if dj else {}
    if dj and not label_names:
        label_names = {v: k for k, v in dj.labels.items() if isinstance(v, int) and v != 0}
    return label_names


def _report_data(results_dir: Path, options: ReportOptions, runs: list[TrainerRun],
                 predictions: list[PredictionFolder], missing: list[str]) -> ReportData:
    """The report's contents so far: what was collected and the raw folders the overview reads."""
    images_dir, labels_dir = _raw_folders(results_dir.name, options)
    if not images_dir.is_dir():
        missing.append(f"images folder `{images_dir}` not found: the overview has no input or reference panels")
    return ReportData(results_dir.name, results_dir, options.command,
                      datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), runs, predictions,
                      images_dir=images_dir if images_dir.is_dir() else None,
                      labels_dir=labels_dir if labels_dir.is_dir() else None)


def _add_overview(data: ReportData, dj: DatasetJson | None, case: str | None, out: Path, written: list[str],
                  missing: list[str]) -> None:
    """Draw ``out``/overview.png into ``data``; its notes, or why it could not be drawn, go into ``missing``."""
    channel_names, label_names = _channel_names(dj), _label_names(dj)

    def overview() -> None:
        data.overview = draw_overview(
            out / "overview.png", channel_names=channel_names, label_names=label_names,
            file_ending=dj.file_ending if dj else ".nii.gz", images_dir=data.images_dir, labels_dir=data.labels_dir,
            seg_preds=[p for p in data.predictions if p.task == SEG.name],
            translate_preds=[p for p in data.predictions if p.task == TRANSLATE.name], case=case)
        missing.extend(data.overview.notes)
        if not data.overview.written:
            raise FileNotFoundError("nothing to show")

    if _draw("overview.png", overview, written, missing):
        data.figures["overview.png"] = OVERVIEW_CAPTION


def _result_figures(runs: list[TrainerRun]) -> list[ResultFigure]:
    """Training curves, the missing-modality Dice matrices and the translation matrices of ``runs``."""
    return [
        ResultFigure("training_curves.png", [r for r in runs if r.history], figures.training_curves, (
            "One row per trainer and fold: every training loss term (left; log scale when the terms span "
            "more than a factor 30), every validation metric (middle; `metric` is the one that picks "
            "checkpoint_best), the learning rate and the epoch time (right)."),
            "no run has a per-epoch history" if runs else None),
        ResultFigure("missing_modalities.png", [(r.matrix_title(SEG.name), r.missing_dice) for r in runs
                                                if r.missing_dice is not None], figures.missing_modalities, (
            "Dice of the segmentation predicted from each non-empty subset of the input modalities (rows) "
            "for each label/region (columns), mean over the evaluated cases."),
            "no missing_modalities_dice.csv in any fold"),
        ResultFigure("translation_matrix.png", [(r.matrix_title(TRANSLATE.name), r.translation) for r in runs
                                                if r.translation], figures.translation_matrices, (
            "PSNR (dB) and SSIM of each target modality synthesised from a single source modality, mean over "
            "the evaluated cases; the diagonal (source = target) is not evaluated."),
            "no translation_psnr.csv / translation_ssim.csv in any fold"),
    ]


def _add_result_figures(data: ReportData, out: Path, written: list[str], missing: list[str]) -> None:
    """Draw each result figure that has something to show into ``out``; say in ``missing`` why one is not."""
    for figure in _result_figures(data.runs):
        if not figure.items:
            if figure.absent:
                missing.append(f"{figure.name}: {figure.absent}")
        elif _draw(figure.name, partial(figure.drawer, figure.items, out / figure.name), written, missing):
            data.figures[figure.name] = figure.caption


def _write_markdown(data: ReportData, out: Path, written: list[str]) -> None:
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(render(data))
    written.append("report.md")


def build_report(options: ReportOptions) -> ReportResult:
    """Collect the dataset's results, draw every figure that has inputs and write report.md into the report
    folder; what is missing or skipped is listed in report.md and in the result."""
    results_dir = _results_folder(options.dataset)
    missing: list[str] = []
    runs = collect_runs(results_dir)
    predictions = _prediction_folders(results_dir, options, missing)
    _require_results(results_dir, runs, predictions)
    missing += _run_problems(runs, options.dataset, results_dir)
    dj = dataset_json_for(results_dir.name, runs, missing)
    data = _report_data(results_dir, options, runs, predictions, missing)
    result = ReportResult(Path(options.output) if options.output is not None else results_dir / "report")
    result.folder.mkdir(parents=True, exist_ok=True)
    _add_overview(data, dj, options.case, result.folder, result.written, missing)
    _add_result_figures(data, result.folder, result.written, missing)
    data.missing = missing
    _write_markdown(data, result.folder, result.written)
    result.missing = missing
    return result
