"""The drawing primitives every figure of pirl uses: a PNG written atomically under 1 MB, the per-epoch history
panels (``progress.png`` of a run, ``training_curves.png`` of the report) and the annotated heat map (the
missing-modality and translation matrices, the experiments' tables)."""
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

DPI = 90
HISTORY_PANELS = 4  # panels of ``history_row``: training terms, validation metrics, representation health, lr
HISTORY_FIGSIZE = (5.6 * HISTORY_PANELS, 4.0)  # one row of history panels, legends beside the axes
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
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def _health_panel(ax, history: list[dict], name: str) -> None:
    """``val/health_*`` (evaluation.health): the shares on [0, 1] on the left axis, the spreads on the right."""
    keys = sorted({k for r in history for k in r if k.startswith("val/health_")})
    shares = [k for k in keys if "spread" not in k]
    spreads = [k for k in keys if "spread" in k]
    _plot_keys(ax, history, shares, f"{name}\nrepresentation health", log_scale=False)
    if not keys:
        return
    top = max([1.0] + [y for k in shares for y in _series(history, k)[1]])  # swap may exceed 1
    ax.set_ylim(-0.02, top + 0.02)
    twin = ax.twinx()
    for key, style in zip(spreads, ("--", ":")):
        xs, ys = _series(history, key)
        twin.plot(xs, ys, linestyle=style, color="grey", label=key.split("/", 1)[1] + " (right)")
    twin.set_ylabel("spread: between / within subjects", fontsize=8)
    twin.tick_params(labelsize=8)
    handles = [h for a in (ax, twin) for h in a.get_legend_handles_labels()[0]]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="upper left", bbox_to_anchor=(1.12, 1.0),
              borderaxespad=0.0)


def history_row(axes, history: list[dict], name: str, note: str, total_seconds: float) -> None:
    """HISTORY_PANELS panels of one run's per-epoch ``history`` on ``axes``: the training loss terms (log scale
    when they span > 30x), the validation metrics (``val/metric`` picks checkpoint_best), the representation
    health (``val/health_*``), the learning rate with the epoch time. ``note`` goes into the first title
    (e.g. "4 epoch(s)"). Legends stand beside their axes."""
    train = sorted({k for r in history for k in r if k.startswith("train/")}, key=lambda k: (k != "train/loss", k))
    val = sorted({k for r in history for k in r if k.startswith("val/") and not k.startswith("val/health_")},
                 key=lambda k: (k != "val/metric", k))
    _plot_keys(axes[0], history, train, f"{name}\ntraining loss terms ({note})", log_scale=True)
    _plot_keys(axes[1], history, val, f"{name}\nvalidation metrics", log_scale=False)
    _health_panel(axes[2], history, name)
    ax = axes[3]
    xs, ys = _series(history, "lr")
    marker = "o" if len(history) <= 30 else None
    ax.plot(xs, ys, color="tab:blue", marker=marker, markersize=3, label="learning rate")
    ax.set_ylabel("learning rate", color="tab:blue", fontsize=9)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax.tick_params(labelsize=8)
    ax.set_xlabel("epoch", fontsize=9)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    twin = ax.twinx()
    xs, ys = _series(history, "epoch_time")
    twin.plot(xs, ys, color="tab:orange", linestyle="--", marker=marker, markersize=3)
    twin.set_ylabel("epoch time (s)", color="tab:orange", fontsize=9)
    twin.tick_params(labelsize=8)
    ax.set_title(f"{name}\nlearning rate, epoch time (total {total_seconds:.0f} s)", fontsize=10)
    if not history:
        ax.text(0.5, 0.5, "no history", ha="center", va="center", transform=ax.transAxes, color="grey")


def heatmap(ax, fig, matrix: pd.DataFrame, title: str, fmt: str, vmin: float | None, vmax: float | None,
            cmap: str = "viridis") -> None:
    """``matrix`` as an annotated heat map on ``ax`` (NaN grey "–"); colour range [vmin, vmax] (None: the data's)."""
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
