"""Per-epoch training history: ``training_log.txt`` lines and ``progress.png`` (loss terms, validation
metric, learning rate, epoch time). The history travels inside checkpoints so resumed runs keep it."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from pirl_pipeline.file_io import atomic_path


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
        if not self.history:
            return
        epochs = [r["epoch"] for r in self.history]
        train_keys = sorted({k for r in self.history for k in r if k.startswith("train/")})
        val_keys = sorted({k for r in self.history for k in r if k.startswith("val/")})
        fig, axes = plt.subplots(2, 2, figsize=(12, 8))
        for ax, keys, name in ((axes[0, 0], train_keys, "training loss terms"),
                               (axes[0, 1], val_keys, "validation")):
            for key in keys:
                ax.plot(epochs, [r.get(key, math.nan) for r in self.history], label=key.split("/", 1)[1])
            ax.set_title(name)
            ax.set_xlabel("epoch")
            if keys:
                ax.legend(fontsize=8)
        axes[1, 0].plot(epochs, [r["lr"] for r in self.history])
        axes[1, 0].set_title("learning rate")
        axes[1, 1].plot(epochs, [r["epoch_time"] for r in self.history])
        axes[1, 1].set_title("epoch time (s)")
        for ax in axes[1]:
            ax.set_xlabel("epoch")
        fig.suptitle(title)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=80, format="png")
        plt.close(fig)
