"""``training_curves.png`` (one row per trainer/fold) and the metric heat maps
(``missing_modalities.png``, ``translation_matrix.png``), drawn with the primitives of ``pirl_pipeline.plots``."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from pirl_pipeline.plots import HISTORY_FIGSIZE, HISTORY_PANELS, heatmap, history_row, save_figure
from pirl_pipeline.report.collect import TrainerRun


def training_curves(runs: list[TrainerRun], path: Path) -> None:
    """One row of history panels (``plots.history_row``) per run."""
    width, height = HISTORY_FIGSIZE
    fig, axes = plt.subplots(len(runs), HISTORY_PANELS, figsize=(width, (height - 0.4) * len(runs) + 0.4),
                             squeeze=False)
    for row, run in zip(axes, runs):
        done = f"{len(run.history)} epoch(s)" + ("" if run.finished else f", from {run.source}")
        history_row(row, run.history, run.name, done, run.training_time)
    fig.tight_layout()
    save_figure(fig, path)


def missing_modalities(items: list[tuple[str, pd.DataFrame]], path: Path) -> None:
    """``items``: (panel title, matrix)."""
    """Dice heat map (rows: modality subsets, columns: regions/labels), one panel per trainer/fold."""
    rows = max(m.shape[0] for _, m in items)
    cols = max(m.shape[1] for _, m in items)
    fig, axes = plt.subplots(1, len(items), figsize=(len(items) * (1.1 * cols + 3.6), 0.36 * rows + 2.2),
                             squeeze=False)
    for ax, (name, matrix) in zip(axes[0], items):
        matrix = matrix.copy()
        matrix.index.name, matrix.columns.name = "input modalities", "region / label"
        heatmap(ax, fig, matrix, f"Dice per input-modality subset\n{name}", "{:.2f}", 0.0, 1.0)
    fig.tight_layout()
    save_figure(fig, path)


def translation_matrices(items: list[tuple[str, dict[str, pd.DataFrame]]], path: Path) -> None:
    """PSNR and SSIM (rows: source, columns: target), one row of panels per trainer/fold."""
    metrics = sorted({m for _, d in items for m in d}, key=lambda m: (m != "PSNR", m))
    size = max(max(m.shape) for _, d in items for m in d.values())
    fig, axes = plt.subplots(len(items), len(metrics), figsize=(len(metrics) * (1.0 * size + 3.2),
                                                                 len(items) * (0.8 * size + 2.2)), squeeze=False)
    for row, (name, matrices) in zip(axes, items):
        for ax, metric in zip(row, metrics):
            if metric not in matrices:
                ax.axis("off")
                ax.text(0.5, 0.5, f"no {metric} matrix", ha="center", va="center", transform=ax.transAxes)
                continue
            matrix = matrices[metric].copy()
            matrix.index.name, matrix.columns.name = "source (input)", "target (synthesised)"
            unit = " (dB)" if metric == "PSNR" else ""
            fmt = "{:.1f}" if metric == "PSNR" else "{:.3f}"
            vmin, vmax = (0.0, 1.0) if metric == "SSIM" else (None, None)
            heatmap(ax, fig, matrix, f"{metric}{unit} source → target\n{name}", fmt, vmin, vmax, "magma")
    fig.tight_layout()
    save_figure(fig, path)
