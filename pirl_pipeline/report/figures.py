"""``training_curves.png`` (one row per trainer/fold) and the metric heat maps
(``missing_modalities.png``, ``translation_matrix.png``)."""
from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib
from matplotlib.ticker import MaxNLocator

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image

from pirl_pipeline.file_io import atomic_path
from pirl_pipeline.report.collect import TrainerRun

DPI = 90
MAX_BYTES = 950_000  # every PNG stays under 1 MB: a larger one is redrawn at a lower resolution


def save_figure(fig, path: Path, dpi: int = DPI) -> None:
    """Write ``fig`` as PNG atomically, lowering the resolution until the file is under MAX_BYTES."""
    try:
        with atomic_path(path) as tmp:
            while True:
                buffer = io.BytesIO()
                fig.savefig(buffer, dpi=dpi, format="png", facecolor="white")
                buffer.seek(0)
                rgb = io.BytesIO()
                Image.open(buffer).convert("RGB").save(rgb, format="PNG", optimize=True)  # no alpha: smaller
                if rgb.tell() <= MAX_BYTES or dpi <= 40:
                    break
                dpi = int(dpi * 0.8)
            tmp.write_bytes(rgb.getvalue())
    finally:
        plt.close(fig)



def _series(history: list[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, row in enumerate(history):
        value = row.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            xs.append(row.get("epoch", i))
            ys.append(float(value))
    return xs, ys


def _plot_keys(ax, history: list[dict], keys: list[str], title: str, log_scale: bool) -> None:
    marker = "o" if len(history) <= 30 else None
    plotted = []
    for key in keys:
        xs, ys = _series(history, key)
        if ys:
            total = key in ("train/loss", "val/metric")
            ax.plot(xs, ys, marker=marker, markersize=3, linewidth=2.2 if total else 1.3,
                    color="black" if total else None, label=key.split("/", 1)[1] + (" (total)" if key ==
                                                                                     "train/loss" else ""))
            plotted.extend(ys)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("epoch", fontsize=9)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    if not plotted:
        ax.text(0.5, 0.5, "none recorded", ha="center", va="center", transform=ax.transAxes, color="grey")
        return
    positive = [y for y in plotted if y > 0]
    if log_scale and len(positive) == len(plotted) and max(positive) / min(positive) > 30:
        ax.set_yscale("log")
    ax.legend(fontsize=7, loc="best")


def training_curves(runs: list[TrainerRun], path: Path) -> None:
    """Per run: training loss terms, validation metrics, and learning rate / epoch time."""
    fig, axes = plt.subplots(len(runs), 3, figsize=(15, 3.6 * len(runs) + 0.4), squeeze=False)
    for row, run in zip(axes, runs):
        train = sorted({k for r in run.history for k in r if k.startswith("train/")},
                       key=lambda k: (k != "train/loss", k))
        val = sorted({k for r in run.history for k in r if k.startswith("val/")},
                     key=lambda k: (k != "val/metric", k))
        done = f"{len(run.history)} epoch(s)" + ("" if run.finished else f", from {run.source}")
        _plot_keys(row[0], run.history, train, f"{run.name}\ntraining loss terms ({done})", log_scale=True)
        _plot_keys(row[1], run.history, val, f"{run.name}\nvalidation metrics", log_scale=False)
        ax = row[2]
        xs, ys = _series(run.history, "lr")
        marker = "o" if len(run.history) <= 30 else None
        ax.plot(xs, ys, color="tab:blue", marker=marker, markersize=3, label="learning rate")
        ax.set_ylabel("learning rate", color="tab:blue", fontsize=9)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        ax.tick_params(labelsize=8)
        ax.set_xlabel("epoch", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        twin = ax.twinx()
        xs, ys = _series(run.history, "epoch_time")
        twin.plot(xs, ys, color="tab:orange", linestyle="--", marker=marker, markersize=3)
        twin.set_ylabel("epoch time (s)", color="tab:orange", fontsize=9)
        twin.tick_params(labelsize=8)
        ax.set_title(f"{run.name}\nlearning rate, epoch time (total {run.training_time:.0f} s)", fontsize=10)
        if not run.history:
            ax.text(0.5, 0.5, "no history", ha="center", va="center", transform=ax.transAxes, color="grey")
    fig.tight_layout()
    save_figure(fig, path)


def _heatmap(ax, fig, matrix: pd.DataFrame, title: str, fmt: str, vmin: float | None, vmax: float | None,
             cmap: str = "viridis") -> None:
    values = matrix.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    low = vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    high = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    high = high if high > low else low + 1e-6
    colours = plt.get_cmap(cmap).with_extremes(bad="#dddddd")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=colours, vmin=low, vmax=high, aspect="auto")
    ax.set_xticks(range(matrix.shape[1]), [str(c) for c in matrix.columns], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(matrix.shape[0]), [str(i) for i in matrix.index], fontsize=8)
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            shade = (value - low) / (high - low)
            ax.text(j, i, fmt.format(value), ha="center", va="center", fontsize=8,
                    color="black" if shade > 0.6 else "white")
        else:
            ax.text(j, i, "–", ha="center", va="center", fontsize=8, color="grey")
    ax.set_xlabel(str(matrix.columns.name or ""), fontsize=9)
    ax.set_ylabel(str(matrix.index.name or ""), fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.05, pad=0.03).ax.tick_params(labelsize=8)
    ax.set_title(title, fontsize=10)


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
        _heatmap(ax, fig, matrix, f"Dice per input-modality subset\n{name}", "{:.2f}", 0.0, 1.0)
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
            _heatmap(ax, fig, matrix, f"{metric}{unit} source → target\n{name}", fmt, vmin, vmax, "magma")
    fig.tight_layout()
    save_figure(fig, path)
