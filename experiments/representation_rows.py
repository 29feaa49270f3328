"""``python -m experiments.representation_rows``: is what pre-training learns a personalised invariant?

For the full PIRL pre-training (Table 7 row 6), each ablation row that ran, and a random initialisation of
the same network, the representation metrics of ``pirl_pipeline.evaluation.representation`` (cross-modal
subject retrieval, within/between-subject variance, collapse check; for z and X_h') on subjects no
pre-training saw: the translation fold's held-out cases (4 modalities) and all expert-labelled two-modality
cases (BraTS-2015 FLAIR + T1c, BraTS-2018 FLAIR + T1), each dataset on its own; or (``--held-out``) every case
of the named datasets. With ``--health`` each (model, dataset) also gets the representation health of
``pirl_pipeline.evaluation.health`` on the cases' centre patches (swap, spread, retrieval, prior entropy/share).
Writes ``WORK/eval/representation/representation.csv`` (one row per model, dataset, representation; the health
columns on the x_h rows).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from experiments.config import FULL, PARTS, ablation_model, representation_csv
from experiments.run import Experiment
from pirl_pipeline.cli.common import cli_entry
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.evaluation.health import health_patches, representation_health, spread
from pirl_pipeline.evaluation.representation import (
    BOTTLENECK,
    REPRESENTATIONS,
    embedding_metrics,
    load_pirl_network,
    load_preprocessed_cases,
    load_swinunetr_network,
    random_init_like,
    representation_metrics,
    swinunetr_bottleneck,
)
from pirl_pipeline.file_io import atomic_path, load_json


def held_out_sets(work: Path, fold: int, datasets: list[str] | None = None) -> dict[str, dict]:
    """``{label: {case: (M, z, y, x)}}``: the translation fold's validation cases and the seg datasets; with
    ``datasets``, every case of those (preprocessed) datasets instead."""
    if datasets:
        missing = [d for d in datasets if not (work / "preprocessed" / d / "pirl_plans_3d_fullres").is_dir()]
        if missing:
            raise PirlInputError(f"{work}: not preprocessed: {', '.join(missing)}")
        return {d: load_preprocessed_cases(work / "preprocessed" / d / "pirl_plans_3d_fullres") for d in datasets}
    sets = {}
    for part, (dataset, _) in PARTS.items():
        folder = work / "preprocessed" / dataset
        if not (folder / "pirl_plans_3d_fullres").is_dir():
            continue
        names = load_json(folder / "splits_final.json")[fold]["val"] if part == "translation" else None
        sets[dataset] = load_preprocessed_cases(folder / "pirl_plans_3d_fullres", names)
    return sets


def checkpoints(work: Path, fold: int, rows: list[int]) -> dict[str, Path]:
    """``{model label: checkpoint}`` of the runs that exist: the pre-trainings, then the translation
    fine-tunings (does fine-tuning's L_inv keep X_h' personal, or collapse it?)."""
    layout = Experiment(FULL, work)  # the one owner of the results-folder layout
    runs = [("PIRL pre-training (Table 7 row 6)", "pirl", "PIRLPretrainer"),
            *[(f"Table 7 row {r} pre-training", ablation_model(r).key, "PIRLPretrainer") for r in rows],
            ("PIRL pre-train -> translation fine-tune", "pirl", "PIRLTranslateTrainer"),
            ("PIRLNet translation from scratch", "pirl_scratch", "PIRLTranslateTrainer")]
    found = {}
    for label, key, trainer in runs:
        path = layout.fold_folder(key, "translation", trainer, fold).checkpoint()
        if path.is_file():
            found[label] = path
    return found


def swinunetr_rows(found: dict[str, Path], sets: dict[str, dict]) -> list[dict]:
    """Rows (representation "bottleneck") of SwinUNETR checkpoints and of a random initialisation of the first
    one's architecture: the embedding metrics of its deepest encoder state and its spread (``health.spread``)."""
    if not found:
        return []
    first = next(iter(found.values()))
    networks = {label: load_swinunetr_network(path) for label, path in found.items()}
    networks["SwinUNETR random initialisation"] = load_swinunetr_network(first, random_init_seed=0)
    rows = []
    for label, (network, patch) in networks.items():
        for dataset, cases in sets.items():
            e = swinunetr_bottleneck(network, cases, patch)
            rows.append({"model": label, "dataset": dataset, "representation": BOTTLENECK, "subjects": e.shape[0],
                         "modalities": e.shape[1], **embedding_metrics(e), "health_spread": spread(e)})
    return rows


def run(work: Path, fold: int, rows: list[int], extra: dict[str, Path] | None = None,
        datasets: list[str] | None = None, health: bool = False, out: Path | None = None,
        swinunetr: dict[str, Path] | None = None) -> Path:
    sets, found = held_out_sets(work, fold, datasets), {**checkpoints(work, fold, rows), **(extra or {})}
    if not found:
        raise PirlInputError(f"{work}: no pre-training checkpoint of the translation fold {fold} yet")
    table = []
    networks = {label: load_pirl_network(path) for label, path in found.items()}
    networks["random initialisation"] = random_init_like(next(iter(networks.values())), seed=0)
    for label, network in networks.items():
        for dataset, cases in sets.items():
            result = representation_metrics(network, cases)
            extra_columns = {}
            if health:
                names = sorted(cases)
                extra_columns = representation_health(network, health_patches([cases[n] for n in names],
                                                                               network.patch_size))
            for r in REPRESENTATIONS:
                table.append({"model": label, "dataset": dataset, "representation": r,
                              "subjects": result["subjects"], "modalities": result["modalities"], **result[r],
                              **(extra_columns if r == "x_h" else {})})
    table += swinunetr_rows(swinunetr or {}, sets)
    out = out or representation_csv(work)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        pd.DataFrame(table).to_csv(tmp, index=False)
    return out


def _labelled(items: list[str], flag: str) -> dict[str, Path]:
    found = {}
    for item in items:
        label, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            raise PirlInputError(f"{flag} {item!r}: expected LABEL=PATH of an existing checkpoint")
        found[label] = Path(path)
    return found


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.representation_rows",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--fold", type=int, default=0, help="translation fold whose pre-trainings are measured")
    p.add_argument("--rows", type=int, nargs="*", default=[1, 2, 3, 4, 5], help="Table-7 rows besides 6")
    p.add_argument("--checkpoint", nargs="*", default=[], metavar="LABEL=PATH",
                   help="further PIRLNet checkpoints to measure (e.g. the demo's pre-training)")
    p.add_argument("--swinunetr", nargs="*", default=[], metavar="LABEL=PATH",
                   help="SwinUNETR checkpoints whose deepest encoder state is measured the same way (and a random "
                        "initialisation of the first)")
    p.add_argument("--held-out", nargs="+", metavar="DATASET",
                   help="measure on every case of these preprocessed datasets instead (e.g. Dataset601_RealBraTS4)")
    p.add_argument("--health", action="store_true", help="add the representation health columns")
    p.add_argument("--out", type=Path, help="CSV to write (default WORK/eval/representation/representation.csv)")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    extra, swinunetr = _labelled(args.checkpoint, "--checkpoint"), _labelled(args.swinunetr, "--swinunetr")
    print(f"wrote {run(args.work, args.fold, args.rows, extra, args.held_out, args.health, args.out, swinunetr)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
