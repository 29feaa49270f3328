"""The paper's missing-modality tables, measured on real predictions.

- segmentation (Table 11): Dice per region/label for each of the 2^M - 1 non-empty modality subsets, with
  HD95 (mm), sensitivity (TPR) and specificity (TNR) beside it as RFNet and DeMoSeg report them
  (:func:`pirl_pipeline.evaluation.segmentation.segmentation_metrics`, the numbers of ``pirl_evaluate``);
- translation (Table 10): PSNR/SSIM for every source -> target pair (one source modality in).
Each case is read once; every subset is predicted from the same arrays with the model's own
missing-modality path ("direct") and, given a translation model, also "completed": the absent channels
synthesised first, then every channel segmented (``pirl_predict -t translate --missing_only``, then
``-t seg``). Results: per-case CSV, matrix CSV, heat-map PNG and summary JSON.
"""
from __future__ import annotations

import functools
import itertools
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from tqdm import tqdm

from pirl_pipeline.data.dataset_json import DatasetJson
from pirl_pipeline.data.image_io import read_array
from pirl_pipeline.evaluation.segmentation import SegmentationOptions, segmentation_metrics
from pirl_pipeline.evaluation.translation import channel_targets, reference_mask, translation_metrics
from pirl_pipeline.file_io import atomic_path, save_json
from pirl_pipeline.fold_folder import PER_CASE, SUMMARY, segmentation_matrix_name, translation_matrix_name
from pirl_pipeline.inference.predictor import PIRLPredictor
from pirl_pipeline.plots import heatmap, save_figure


def modality_subsets(num: int) -> list[tuple[int, ...]]:
    """All non-empty subsets, smallest first (4 modalities -> 15)."""
    return [s for r in range(1, num + 1) for s in itertools.combinations(range(num), r)]


def subset_name(subset: tuple[int, ...], dj: DatasetJson) -> str:
    return "+".join(dj.channel_names[str(c)] for c in subset)


SEGMENTATION_MATRICES = {"dice": "Dice", "hd95": "HD95", "sensitivity": "TPR", "specificity": "TNR"}


def segmentation_table(predictor: PIRLPredictor, cases: dict[str, dict[int, Path]], references: dict[str, Path],
                       completer: PIRLPredictor | None = None,
                       options: SegmentationOptions | None = None) -> pd.DataFrame:
    """One row per (subset, case) with every segmentation metric (``options``: default every metric, distances
    in mm from the reference's spacing). With ``completer`` (a translation model of the same channels) a
    ``path`` column tells the rows of the two routes apart: "direct" (the seg model on the subset) and
    "completed" (``completer.complete`` fills in the absent channels, the seg model sees all; the full subset
    is one prediction, scored for both)."""
    dj = predictor.model.dataset_json
    rows = []
    for case, files in tqdm(cases.items(), desc="cases"):
        images, geometry = predictor.read_case(case, files)
        reference, grid = read_array(references[case], dtype=np.int16)
        metrics = functools.partial(segmentation_metrics, ref_labels=reference, dataset_json=dj,
                                    spacing=grid.spacing, options=options)

        for subset in modality_subsets(predictor.num_modalities):
            if not set(subset) <= set(images):  # a case lacking modalities: only the subsets it has
                continue
            given = {c: images[c] for c in subset}
            direct = predictor.predict_case(given, geometry).segmentation
            row = {"subset": subset_name(subset, dj), "case": case}
            if completer is None:
                rows.append({**row, **metrics(direct)})
                continue
            completed = direct
            if len(subset) < predictor.num_modalities:
                completed = predictor.predict_case(completer.complete(given, geometry), geometry).segmentation
            for path, labels in (("direct", direct), ("completed", completed)):
                rows.append({"path": path, **row, **metrics(labels)})
    return pd.DataFrame(rows)


def translation_table(predictor: PIRLPredictor, cases: dict[str, dict[int, Path]]) -> pd.DataFrame:
    """One row per (source, target, case): the source modality alone in, every other one out; a case that
    lacks modalities (``allow_missing_channels``) gives the pairs among those it has."""
    dj = predictor.model.dataset_json
    names = channel_targets(dj)
    rows = []
    for case, files in tqdm(cases.items(), desc="cases"):
        images, geometry = predictor.read_case(case, files)
        present = sorted(images)
        mask = reference_mask(np.stack([images[c] for c in present]))  # from the reference images only
        for source in present:
            result = predictor.predict_case({source: images[source]}, geometry)
            for target in present:
                if target == source:
                    continue
                metrics = translation_metrics(result.images[target], images[target], mask, ["x"])
                rows.append({"source": names[source], "target": names[target], "case": case,
                             **{k.split("/")[0]: v for k, v in metrics.items()}})
    return pd.DataFrame(rows)


def heatmap_png(matrix: pd.DataFrame, path: Path, title: str, fmt: str = "{:.2f}") -> None:
    """One matrix as an annotated heat map PNG (``plots.heatmap``)."""
    fig, ax = plt.subplots(figsize=(1.2 * matrix.shape[1] + 3, 0.45 * matrix.shape[0] + 1.8))
    heatmap(ax, fig, matrix, title, fmt, None, None)
    fig.tight_layout()
    save_figure(fig, path)


def write_results(table: pd.DataFrame, matrices: dict[str, pd.DataFrame], out: Path, info: dict) -> None:
    """``per_case.csv`` (``table``), ``NAME.csv`` + ``NAME.png`` per matrix, ``summary.json``."""
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / PER_CASE) as tmp:
        table.to_csv(tmp, index=False)
    for name, matrix in matrices.items():
        with atomic_path(out / f"{name}.csv") as tmp:
            matrix.to_csv(tmp)
        heatmap_png(matrix, out / f"{name}.png", f"{name} ({info['cases']} case(s))")
    save_json({**info, **{name: m.to_dict() for name, m in matrices.items()}}, out / SUMMARY)


def segmentation_matrices(table: pd.DataFrame, path: str | None = None) -> dict[str, pd.DataFrame]:
    """``{"missing_modalities_<name>[_<path>]": matrix}`` for every :data:`SEGMENTATION_MATRICES` metric the
    table holds (HD95: not without distance metrics); ``path`` "completed" gets the suffix, "direct" none."""
    return {segmentation_matrix_name(name, path == "completed"): segmentation_matrix(table, metric, path)
            for name, metric in SEGMENTATION_MATRICES.items() if any(c.startswith(f"{metric}/") for c in table.columns)}


def segmentation_matrix(table: pd.DataFrame, metric: str = "Dice", path: str | None = None) -> pd.DataFrame:
    """Rows: subsets (in enumeration order); columns: targets; values: mean ``metric`` over cases (of the rows
    of ``path`` when given)."""
    if path is not None:
        table = table[table["path"] == path]
    columns = [c for c in table.columns if c.startswith(f"{metric}/")]
    matrix = table.groupby("subset", sort=False)[columns].mean()
    matrix.columns = [c.split("/", 1)[1] for c in columns]
    return matrix


TRANSLATION_MATRICES = ("PSNR", "SSIM")


def translation_matrices(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """``{"translation_psnr": matrix, "translation_ssim": matrix}`` of a :func:`translation_table`."""
    return {translation_matrix_name(metric): translation_matrix(table, metric) for metric in TRANSLATION_MATRICES}


def translation_matrix(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rows: source; columns: target; values: mean ``metric`` over cases."""
    return table.pivot_table(index="source", columns="target", values=metric, aggfunc="mean", sort=False)
