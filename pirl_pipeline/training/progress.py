"""Per-epoch training history: ``training_log.txt`` lines and ``progress.png`` (loss terms, validation
metric, learning rate, epoch time). The history travels inside checkpoints so resumed runs keep it."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from pirl_pipeline.plots import HISTORY_FIGSIZE, HISTORY_PANELS, history_row, save_figure


class ProgressLog:
    """Rows of {"epoch", "lr", "epoch_time", "train/<term>", "val/<metric>"} plus a text log file."""

    def __init__(self, log_file: Path, history: list[dict] | None = None) -> None:
        self.log_file = Path(log_file)
        self.history: list[dict] = list(history or [])

    def write(self, message: str) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "a") as f:
            f.write(message.rstrip() + "\n")

    def add_epoch(self, row: dict) -> str:
        """Record an epoch; returns the line written to the log file."""
        self.history.append(row)
        parts = [f"epoch {row['epoch']}", f"lr {row['lr']:.2e}", f"{row['epoch_time']:.1f}s"]
        parts += [f"{k} {v:.4f}" for k, v in row.items() if "/" in k]
        line = " | ".join(parts)
        self.write(line)
        return line

    def plot(self, path: Path, title: str = "") -> None:
        """``progress.png``: the history panels of ``plots.history_row`` (as the report draws them)."""
        if not self.history:
            return
        fig, axes = plt.subplots(1, HISTORY_PANELS, figsize=HISTORY_FIGSIZE)
        done = f"{len(self.history)} epoch(s)"
        history_row(axes, self.history, title, done, sum(r.get("epoch_time", 0.0) for r in self.history))
        fig.tight_layout()
        save_figure(fig, path)
