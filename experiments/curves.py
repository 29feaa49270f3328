"""Learning curves: whole-volume validation against optimiser steps, to choose the experiments' budget.

``python -m experiments.curves`` trains, through ``pirl_train``, at CPU sizes where one 64^3 patch covers the
whole brain (3 mm, feature_size 12, batch 1), and validates on whole volumes after every epoch (the trainer's
``val_volumes``, on the preprocessed grid):

- ``demo_seg`` / ``demo_translate``: the demo dataset (Dataset500_DemoBrain, 8 training cases, fold 0);
- ``brats2015_seg``: the four expert-labelled BraTS-2015 FLAIR + T1c cases (fold 0: 2 train / 2 validate).

Each run is a stage of the experiments' runner (logged, timed, skipped when done). ``finetune_curves_section``: the same reading for the experiments' own fine-tunings (RESULTS.md). The curves (CSV + PNG)
come from the checkpoints' own history. The budget is where a curve flattens or where the run reaches its
time ceiling; the validation cases of these runs are only used to read the curves, never to pick a model
for the tables.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from experiments import data
from experiments.config import COMPARISON, PART_MODELS, PARTS, Budget, model_of_run
from experiments.records import has_run, run_meta
from experiments.stages import StageRunner
from experiments.tables import model_labels, to_markdown, write_csv
from pirl_pipeline.checkpoint import load_checkpoint
from pirl_pipeline.cli.common import cli_entry
from pirl_pipeline.data.dataset_json import whole_target
from pirl_pipeline.fold_folder import FINAL, LATEST, FoldFolder
from pirl_pipeline.paths import model_folder
from pirl_pipeline.tasks import get_task

REPO = Path(__file__).resolve().parents[1]
DEMO = "Dataset500_DemoBrain"


@dataclass(frozen=True)
class Curve:
    key: str
    dataset: str  # dataset folder name
    task: str
    epochs: int
    iters: int  # per epoch
    label: str

    def folder(self, work: Path) -> FoldFolder:
        trainer = get_task(self.task).default_trainer
        return FoldFolder(model_folder(self.dataset, trainer, root=work / "results" / self.key), 0)


def curves_for(steps: int, epochs: int) -> list[Curve]:
    iters = max(1, steps // epochs)
    return [
        Curve("brats2015_seg", "Dataset602_BraTS2015Expert", "seg", epochs, iters,
              "BraTS-2015 expert cases, seg from scratch"),
        Curve("demo_seg", DEMO, "seg", epochs, iters, "demo data, seg from scratch"),
        Curve("demo_translate", DEMO, "translate", epochs, max(1, iters // 2),
              "demo data, translation from scratch"),
    ]


def prepare(runner: StageRunner, work: Path) -> None:
    raw = work / "raw"
    commands = {name: argv for name, argv in data.conversion_commands(work).items() if name.startswith("Dataset602")}
    commands[DEMO] = ["dataset_conversion.demo_brain", "-d", "500", "-n", "8", "--downsample", "3", "-o", str(raw)]
    for name, argv in commands.items():
        runner.run(f"convert {name}", argv, raw / name / "dataset.json")
        runner.run(f"plan_and_preprocess {name}", ["pirl_pipeline.cli.plan_and_preprocess", "-d", name, "-np", "2",
                                                   "--spacing", "3", "3", "3"],
                   work / "preprocessed" / name / "splits_final.json")
    data.write_splits(work / "preprocessed" / "Dataset602_BraTS2015Expert",
                      data.segmentation_splits(sorted(p.stem for p in (work / "preprocessed" /
                                                      "Dataset602_BraTS2015Expert").glob("*/*.json"))))


def train(runner: StageRunner, work: Path, curve: Curve, seed: int) -> None:
    argv = ["pirl_pipeline.cli.train", curve.dataset, "3d_fullres", curve.task, "-f", "0",
            "--patch-size", "64", "64", "64", "--feature-size", "12", "--batch-size", "1",
            "--epochs", str(curve.epochs), "--iters", str(curve.iters), "--val-iters", "2", "-npa", "0",
            "-device", "cpu", "--set", f"seed={seed}", "lr_schedule=constant"]
    runner.run(f"curve {curve.key}", argv, curve.folder(work).checkpoint(), results=curve.key)


def checkpoint_of(curve: Curve, work: Path) -> Path | None:
    """The run's final checkpoint, else its latest (a curve stopped early), else None."""
    for name in (FINAL, LATEST):
        if curve.folder(work).checkpoint(name).is_file():
            return curve.folder(work).checkpoint(name)
    return None


def history_table(curve: Curve, work: Path) -> pd.DataFrame:
    """One row per epoch: steps done and every logged value (train/*, val/*); ``finished`` says whether the
    run reached its last epoch."""
    path = checkpoint_of(curve, work)
    state = load_checkpoint(path)
    rows = [{"curve": curve.key, "steps": (r["epoch"] + 1) * curve.iters, "finished": path.name.endswith("final.pth"),
             **r} for r in state["history"]]
    return pd.DataFrame(rows)


def plot(table: pd.DataFrame, curves: list[Curve], path: Path) -> None:
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.6), squeeze=False)
    for ax, curve in zip(axes[0], curves):
        rows = table[table["curve"] == curve.key]
        if rows.empty:
            continue
        shown = [c for c in rows if c.startswith("val/") and rows[c].notna().any()
                 and any(k in c for k in ("tumour", "tumor", "psnr"))]  # regions (not single labels), PSNR
        for column in shown:
            whole = column.startswith("val/volume_")
            ax.plot(rows["steps"], rows[column], marker="o" if whole else None, ls="-" if whole else "--",
                    alpha=1.0 if whole else 0.5, label=column.removeprefix("val/").removeprefix("volume_")
                    + (" (whole volume)" if whole else " (patches)"))
        ax.set_title(curve.label, fontsize=9)
        ax.set_xlabel("optimiser steps")
        ax.set_ylabel("Dice" if curve.task == "seg" else "PSNR dB (volumes: percentile-scaled; patches: z-units)")
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def finetune_curve_rows(work: Path, part: str) -> pd.DataFrame:
    """Whole-volume validation after every epoch of the part's compared fine-tunings (checkpoint history):
    one row per (model, seed, fold, epoch) with its ``steps`` and ``value`` = the first whole-volume metric of
    the task (the whole tumour's Dice, else the first label's; PSNR for translation)."""
    from experiments.run import Experiment  # the one owner of the results-folder layout

    layout, task, rows = Experiment(Budget(), work), PARTS[part][1], []
    models = PART_MODELS.get(part, COMPARISON)
    for run in sorted(p.name for p in (work / "results").iterdir()) if (work / "results").is_dir() else []:
        model = next((m for m in models if m.key == model_of_run(run)[0] and not m.pretrain_only), None)
        for fold in range(8) if model is not None else []:
            path = layout.fold_folder(run, part, model.trainer(task), fold).checkpoint()
            if not has_run(path):
                continue
            meta = run_meta(path)
            iters = (meta.get("config") or {}).get("iters_per_epoch")
            for record in meta.get("history") or []:
                dice = sorted(k for k in record if k.startswith("val/volume_dice_"))
                whole = whole_target(k.removeprefix("val/volume_dice_") for k in dice)
                keys = ["val/volume_psnr"] if task == "translate" else [
                    *(["val/volume_dice_" + whole] if whole is not None else []), *dice]
                key = next((k for k in keys if record.get(k) is not None), None)
                if key is not None and iters:
                    rows.append({"model": model.key, "seed": model_of_run(run)[1], "fold": fold,
                                 "epoch": record["epoch"] + 1, "steps": (record["epoch"] + 1) * iters,
                                 "metric": key, "value": record[key]})
    return pd.DataFrame(rows)


def finetune_curves_section(work: Path, part: str) -> list[str]:
    """Did the fine-tunings flatten within the budget? Mean whole-volume validation per model after every
    epoch (over folds and seeds), and the change over the second half of the run."""
    rows = finetune_curve_rows(work, part)
    if rows.empty:
        return []
    labels = model_labels() | {m.key: m.label for m in PART_MODELS.get(part, ())}
    view = rows.pivot_table(index="model", columns="epoch", values="value", aggfunc="mean", sort=False)
    steps = rows.groupby("model", sort=False)["steps"].max()
    runs = rows.groupby("model", sort=False)[["seed", "fold"]].apply(lambda g: len(g.drop_duplicates()))
    mid, last = view.columns[len(view.columns) // 2 - 1], view.columns[-1]
    metric = rows["metric"].iloc[0].removeprefix("val/")
    lines = [(f"Validation during the fine-tunings: {metric} on the fold's whole held-out volumes after every "
              "epoch (columns: epochs; the trainer's `val_volumes` on the preprocessed grid), mean over folds and "
              "seeds; read only, never used to pick a checkpoint:"), "",
             to_markdown(view.assign(steps=steps, runs=runs).rename(index=labels), 3), ""]
    for model, values in view.iterrows():
        lines.append(f"- {labels[model]}: {values.iloc[0]:.3f} after epoch 1, {values[mid]:.3f} after epoch {mid}, "
                     f"{values[last]:.3f} after epoch {last} of {steps[model]} steps "
                     f"({values[last] - values[mid]:+.3f} over the second half).")
    return [*lines, ""]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.curves", description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=REPO / "experiments" / "work" / "curves")
    p.add_argument("--out", type=Path, default=REPO / "experiments" / "results")
    p.add_argument("--steps", type=int, default=240, help="optimiser steps per seg curve (translation: half)")
    p.add_argument("--epochs", type=int, default=12, help="validation points per curve")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--only", nargs="*", default=None, help="curve keys to run (default all)")
    p.add_argument("--report-only", action="store_true", help="tables and plot from finished runs only")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    curves = [c for c in curves_for(args.steps, args.epochs) if args.only is None or c.key in args.only]
    runner = StageRunner(args.work, total=4 + len(curves))
    if not args.report_only:
        prepare(runner, args.work)
        for curve in curves:
            train(runner, args.work, curve, args.seed)
    done = [c for c in curves if checkpoint_of(c, args.work) is not None]
    if not done:
        return 0
    table = pd.concat([history_table(c, args.work) for c in done], ignore_index=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(table, args.out / "learning_curves.csv", index=False)
    plot(table, done, args.out / "learning_curves.png")
    print(f"wrote {args.out / 'learning_curves.csv'} and learning_curves.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
