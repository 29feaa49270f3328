"""pirl_report on a fake results tree: every file written, the tables in report.md, graceful degradation.

The tree is what the pipeline writes (checkpoint dict with history/config/plans, training_log.txt via the
real ProgressLog, validation/summary.json, pirl_evaluate_missing CSVs, prediction folders scored by the real
pirl_evaluate functions) but no network is trained: the predictions are perturbed references.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from pirl_pipeline.cli.report import main as report_main
from pirl_pipeline.evaluation.evaluate import write_summary
from pirl_pipeline.evaluation.missing_modalities import modality_subsets
from pirl_pipeline.evaluation.segmentation import evaluate_segmentation_folder
from pirl_pipeline.evaluation.translation import evaluate_translation_folder
from pirl_pipeline.report.collect import history_from_log
from pirl_pipeline.trainer_config import TrainerConfig
from pirl_pipeline.training.progress import ProgressLog
from tests.synthetic import ellipsoid

NAME = "Dataset500_DemoBrain"
CHANNELS = {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
DATASET_JSON = {"channel_names": CHANNELS, "labels": {"background": 0, "whole tumor": [1, 2, 3],
                                                      "tumor core": [1, 3], "enhancing tumor": 3},
                "regions_class_order": [2, 1, 3], "numTraining": 2, "file_ending": ".nii.gz",
                "label_names": {"1": "NCR", "2": "ED", "3": "ET"}}
SHAPE = (30, 38, 34)  # z, y, x
SPACING = (1.0, 1.0, 1.5)  # SimpleITK x, y, z
TERMS = {"pretrain": ["loss", "contrastive", "equivariance", "decomposition", "invariance"],
         "seg": ["loss", "seg", "inv"], "translate": ["loss", "translate", "inv"]}
VAL = {"pretrain": ["loss", "metric"], "seg": ["metric", "dice"], "translate": ["metric", "psnr"]}
RUNS = {"pretrain": ("PIRLPretrainer", "all"), "seg": ("PIRLSegTrainer", "0"),
        "translate": ("PIRLTranslateTrainer", "0")}


def write(array: np.ndarray, path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # as a NIfTI in RAS reads
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def make_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centre = np.array(SHAPE) / 2
    head = ellipsoid(SHAPE, centre, np.array(SHAPE) * 0.42)
    tumour = centre + np.array([2, -4, 5])
    label = np.zeros(SHAPE, np.uint8)
    label[ellipsoid(SHAPE, tumour, (6, 7, 6)) & head] = 2
    label[ellipsoid(SHAPE, tumour, (3.5, 4, 3.5))] = 3
    label[ellipsoid(SHAPE, tumour, (2, 2.5, 2))] = 1
    contrast = np.array([[1.0, 0.6, 0.4, 0.7], [1.0, 0.6, 1.6, 0.7], [0.7, 1.4, 1.2, 1.3], [0.8, 1.3, 1.0, 1.1]])
    images = np.zeros((4, *SHAPE), np.float32)
    for c in range(4):
        images[c][head] = 1000 * contrast[c, 0] * (1 + 0.05 * rng.standard_normal(int(head.sum())))
        for value in (1, 2, 3):
            images[c][label == value] = 1000 * contrast[c, value]
    return images, label


def run_history(task: str, epochs: int = 4) -> list[dict]:
    rows = []
    for e in range(epochs):
        row = {f"train/{t}": 2.0 / (e + 1) + i for i, t in enumerate(TERMS[task])}
        row.update({f"val/{t}": 0.2 * e + i for i, t in enumerate(VAL[task])})
        rows.append({**row, "epoch": e, "lr": 2e-4 * (1 - e / epochs) ** 0.9, "epoch_time": 3.0 + e})
    return rows


def write_run(results: Path, task: str) -> Path:
    trainer, fold = RUNS[task]
    folder = results / f"{trainer}__PIRLPlans__3d_fullres" / f"fold_{fold}"
    config = TrainerConfig(task=task, trainer=trainer, epochs=4, iters_per_epoch=2, feature_size=12,
                           patch_size=[64, 64, 64], batch_size=1).to_dict()
    progress = ProgressLog(folder / "training_log.txt")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))  # as the trainer writes it before the first epoch
    progress.write(f"{trainer}: 2 training / 1 validation cases, patch [64, 64, 64], batch 1, feature_size 12, "
                   "device cpu")
    for row in run_history(task):
        progress.add_epoch(row)
    plans = {"configurations": {"3d_fullres": {"patch_size": [96, 96, 96], "batch_size": 2,
                                               "network": {"feature_size": 48}}}}
    state = {"network_weights": {"w": torch.zeros(3, 3)}, "optimizer_state": {}, "grad_scaler_state": {},
             "extra_state": {}, "epoch": 4, "best_metric": 0.5, "history": progress.history, "config": config,
             "plans": plans, "configuration": "3d_fullres", "dataset_json": DATASET_JSON, "trainer_name": trainer,
             "network_kwargs": {"kind": "pirl", "feature_size": 12, "patch_size": [64, 64, 64]}}
    torch.save(state, folder / "checkpoint_final.pth")
    (folder / "validation").mkdir()
    (folder / "validation" / "summary.json").write_text(json.dumps(
        {"kind": "patch-level validation", "cases": ["c"], "patches": 2, "metrics": progress.history[-1]}))
    return folder


def write_matrices(results: Path) -> None:
    names = list(CHANNELS.values())
    seg = results / "PIRLSegTrainer__PIRLPlans__3d_fullres" / "fold_0" / "missing_modalities"
    seg.mkdir(parents=True)
    subsets = ["+".join(names[c] for c in s) for s in modality_subsets(4)]
    targets = ["NCR", "ED", "ET", "whole tumor", "tumor core", "enhancing tumor"]
    dice = pd.DataFrame(np.linspace(0.1, 0.9, len(subsets) * 6).reshape(len(subsets), 6),
                        index=pd.Index(subsets, name="subset"), columns=targets)
    dice.to_csv(seg / "missing_modalities_dice.csv")
    (seg.parent / "postprocessing.json").write_text(json.dumps({"keep_largest": [[1, 2, 3]], "decisions": [
        {"keep_largest": [1, 2, 3], "dice_before": 0.5, "dice_after": 0.625, "accepted": True}]}))
    trans = results / "PIRLTranslateTrainer__PIRLPlans__3d_fullres" / "fold_0" / "translation_matrix"
    trans.mkdir(parents=True)
    rows = [{"source": s, "target": t, "PSNR": 20 + i + j, "SSIM": 0.5 + 0.1 * j}
            for i, s in enumerate(names) for j, t in enumerate(names) if s != t]
    table = pd.DataFrame(rows)
    for metric in ("PSNR", "SSIM"):
        table.pivot_table(index="source", columns="target", values=metric, sort=False).to_csv(
            trans / f"translation_{metric.lower()}.csv")


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """RAW (dataset.json, imagesTs, labelsTs) and RESULTS (three runs, matrices, three evaluated predictions)."""
    for var in ("raw", "results", "preprocessed"):
        monkeypatch.setenv(f"PIRL_{var}", str(tmp_path / var))
    raw, results = tmp_path / "raw" / NAME, tmp_path / "results" / NAME
    raw.mkdir(parents=True)
    (raw / "dataset.json").write_text(json.dumps(DATASET_JSON))
    preds = results / "predictions"
    rng = np.random.default_rng(0)
    for i in range(2):
        case = f"DemoBrain_t{i:02d}"
        images, label = make_case(i)
        for c in range(4):
            write(images[c], raw / "imagesTs" / f"{case}_{c:04d}.nii.gz")
            synth = images[c] * (1 + 0.1 * rng.standard_normal(SHAPE)).astype(np.float32) * (images[c] != 0)
            write(synth.astype(np.float32), preds / "translate_t1" / f"{case}_{c:04d}.nii.gz")
        write(label, raw / "labelsTs" / f"{case}.nii.gz")
        write(np.roll(label, 2, axis=2), preds / "seg_all" / f"{case}.nii.gz")
        write(np.where(label == 1, 3, label).astype(np.uint8), preds / "seg_flair" / f"{case}.nii.gz")
    for folder in ("seg_all", "seg_flair"):
        table = evaluate_segmentation_folder(raw / "labelsTs", preds / folder, raw, 1)
        write_summary(table, preds / folder / "summary.json", {"task": "seg", "reference": str(raw / "labelsTs")})
    table = evaluate_translation_folder(raw / "imagesTs", preds / "translate_t1", raw, 1)
    write_summary(table, preds / "translate_t1" / "summary.json",
                  {"task": "translate", "reference": str(raw / "imagesTs")})
    for task in RUNS:
        write_run(results, task)
    write_matrices(results)
    return tmp_path


PNGS = ("overview.png", "training_curves.png", "missing_modalities.png", "translation_matrix.png")


def check_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.stat().st_size < 1_000_000, f"{path.name}: {path.stat().st_size} bytes"
    image = mpimg.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) > 200, image.shape
    assert image[..., :3].std() > 0.05, f"{path.name} looks blank"


def test_full_tree_writes_every_file(tree: Path, run_cli):
    code, _ = run_cli(report_main, ["-d", "500"])
    assert code == 0
    out = tree / "results" / NAME / "report"
    for name in PNGS:
        check_png(out / name)
    assert sorted(p.name for p in out.iterdir()) == sorted([*PNGS, "report.md"])  # no temp files left
    md = (out / "report.md").read_text()
    for text in ("## What was run", "| trainer | task | fold |", "PIRLPretrainer", "PIRLSegTrainer",
                 "PIRLTranslateTrainer", "64×64×64", "**Tiny configuration**", "smoke test",
                 "### seg_all (seg, 2 case(s))", "### seg_flair", "### translate_t1 (translate, 2 case(s))",
                 "| target | Dice | TPR |", "| whole tumor |", "| target | PSNR | NMSE | SSIM |", "| T2 |", "| T1 (the input: reconstruction) |",
                 "| subset | NCR | ED |", "| T1+T1ce+T2+FLAIR |", "| source \\ target |",
                 "![overview](overview.png)", "![training curves](training_curves.png)",
                 "![missing modalities](missing_modalities.png)", "![translation matrix](translation_matrix.png)",
                 "Patch-level validation", "Case `DemoBrain_t00`", "synthesised T2 from T1",
                 "Nothing: every expected input was found.", "| Swin window |",
                 ("PIRLSegTrainer fold 0: keep the largest component of labels [1, 2, 3] (mean validation Dice "
                 "0.500 -> 0.625)")):
        assert text in md, text
    assert "synthesised T1 from" not in md  # the input channel of translate_t1 is not shown as a synthesis


def test_partial_tree_lists_what_is_missing(tree: Path, run_cli):
    results, raw = tree / "results" / NAME, tree / "raw" / NAME
    translate = results / "PIRLTranslateTrainer__PIRLPlans__3d_fullres" / "fold_0"
    (translate / "checkpoint_final.pth").unlink()  # history falls back to training_log.txt
    shutil.rmtree(results / "PIRLSegTrainer__PIRLPlans__3d_fullres" / "fold_0" / "missing_modalities")
    shutil.rmtree(results / "predictions" / "translate_t1")
    (results / "predictions" / "seg_flair" / "summary.json").unlink()
    shutil.rmtree(raw / "labelsTs")
    (raw / "dataset.json").unlink()  # channel names then come from a checkpoint
    pretrain = results / "PIRLPretrainer__PIRLPlans__3d_fullres" / "fold_all" / "checkpoint_final.pth"
    pretrain.write_bytes(b"truncated")
    code, _ = run_cli(report_main, ["-d", NAME, "-o", tree / "custom"])
    assert code == 0
    out = tree / "custom"
    for name in ("overview.png", "training_curves.png", "translation_matrix.png"):
        check_png(out / name)
    assert not (out / "missing_modalities.png").exists()
    md = (out / "report.md").read_text()
    missing = md.split("## Missing or skipped", 1)[1]
    for text in ("seg_flair` has no summary.json",
                 "PIRLTranslateTrainer fold 0: no readable checkpoint (history from training_log.txt)",
                 "PIRLPretrainer fold all: `checkpoint_final.pth` is unreadable",
                 "missing_modalities.png: no missing_modalities_dice.csv",
                 "PIRLSegTrainer fold 0: no missing_modalities/missing_modalities_dice.csv",
                 "no reference label for case"):
        assert text in missing, text
    assert "### seg_all" in md and "### seg_flair" not in md and "translate_t1" not in md  # no folder is presumed
    assert "Shown: inputs: T1, T1ce, T2, FLAIR; segmentation: predicted (seg_all)" in md
    assert "used the copy inside the PIRLSegTrainer fold 0 checkpoint" in missing
    assert "| PIRLTranslateTrainer | translate | 0 | unfinished (training_log.txt) | 4/4 | 2 | 8 | 1 | 64×64×64 | 12 |" \
        in md  # history from the log; task, epochs and sizes from the config.json a run writes before epoch 0


def test_history_is_parsed_back_from_the_training_log(tmp_path: Path):
    progress = ProgressLog(tmp_path / "training_log.txt")
    progress.write("PIRLSegTrainer: header line, device cpu")
    for row in run_history("seg", 3):
        progress.add_epoch(row)
    parsed = history_from_log(tmp_path / "training_log.txt")
    assert [r["epoch"] for r in parsed] == [0, 1, 2]
    assert parsed[1]["train/inv"] == pytest.approx(progress.history[1]["train/inv"], abs=1e-4)
    assert parsed[2]["lr"] == pytest.approx(progress.history[2]["lr"], rel=1e-2)


def test_only_predictions_still_report(tree: Path, run_cli):
    results = tree / "results" / NAME
    for folder in results.glob("*__PIRLPlans__*"):
        shutil.rmtree(folder)
    code, _ = run_cli(report_main, ["-d", "500", "--pred-dir-seg", results / "predictions" / "seg_all",
                                    "--pred-dir-translate", tree / "nowhere", "--case", "DemoBrain_t01"])
    assert code == 0
    out = results / "report"
    check_png(out / "overview.png")
    assert not (out / "training_curves.png").exists()
    md = (out / "report.md").read_text()
    assert "Case `DemoBrain_t01`" in md and "### seg_all" in md and "### seg_flair" not in md
    assert "no trained fold" in md and "nowhere` (translate) not found" in md
    assert "No trained model was found" in md


def test_no_results_is_a_clear_error(tree: Path, run_cli):
    code, err = run_cli(report_main, ["-d", "500", "--case", "nope"])
    assert code == 2 and "case nope: not found" in err
    code, err = run_cli(report_main, ["-d", "501"])
    assert code == 2 and "no results for dataset 501" in err
    shutil.rmtree(tree / "results" / NAME)
    (tree / "results" / NAME).mkdir()
    code, err = run_cli(report_main, ["-d", "500"])
    assert code == 2 and "no results" in err and "train and predict first" in err


def test_models_against_references_table_reads_whole_tumour_and_skips_the_translation_input():
    from pirl_pipeline.report.collect import PredictionFolder
    from pirl_pipeline.report.markdown import _comparison_section, comparison_rows

    seg = {"task": "seg", "mean": {"ED": {"Dice": 0.9}, "whole tumor": {"Dice": 0.8, "HD95": 4.0, "CaseTPR": 1.0}}}
    ref = {"task": "seg", "mean": {"ED": {"Dice": 0.5}, "whole tumor": {"Dice": 0.6, "HD95": 9.0, "CaseTPR": 1.0}}}
    tr = {"task": "translate", "mean": {"T1": {"PSNR": 40.0, "SSIM": 1.0, "NMSE": 0.0},
                                        "T2": {"PSNR": 20.0, "SSIM": 0.5, "NMSE": 0.2}}}
    folders = [PredictionFolder("seg_all", Path("a"), "seg", seg),
               PredictionFolder("seg_flair_reference_threshold", Path("b"), "seg", ref),
               PredictionFolder("translate_t1", Path("c"), "translate", tr),
               PredictionFolder("translate_t1_reference_identity", Path("d"), "translate", tr)]
    frame = comparison_rows(folders, "seg")
    assert frame.loc["seg_all", "Dice (whole tumor)"] == 0.8
    assert frame.loc["seg_flair_reference_threshold", "Dice (mean over all targets)"] == pytest.approx(0.55)
    translate = comparison_rows(folders, "translate")
    assert translate.loc["translate_t1", "PSNR"] == 20.0  # the T1 input's reconstruction is not a synthesis
    assert translate.loc["translate_t1_reference_identity", "PSNR"] == 20.0
    text = "\n".join(_comparison_section(folders))
    assert "Models against trivial references" in text and "seg_flair_reference_threshold" in text


def test_overview_shows_a_synthesis_in_another_unit_as_it_is_scored():
    """A perfect synthesis in z-score units beside its reference in scanner units: one grey scale, no
    difference (the raw window showed it black, with the unit gap as the 'difference')."""
    from pirl_pipeline.report.overview import Volume, as_scored

    rng = np.random.default_rng(0)
    brain = np.zeros((8, 9, 10), bool)
    brain[1:7, 2:8, 2:9] = True
    reference = np.where(brain, rng.uniform(200, 1200, brain.shape), 0.0)
    zscored = np.where(brain, (reference - reference[brain].mean()) / reference[brain].std(), 0.0)
    shown_ref, shown_syn = as_scored(Volume(reference, (1, 1, 1)), brain), as_scored(Volume(zscored, (1, 1, 1)), brain)
    assert shown_ref.array.max() == 1.0 and shown_ref.array.min() == 0.0
    np.testing.assert_allclose(shown_syn.array, shown_ref.array, atol=1e-12)


def test_a_translation_folder_names_its_source_one_way_for_the_tables_and_the_overview(tmp_path):
    from pirl_pipeline.report.collect import PredictionFolder

    for label in ("translate_t1", "translate_T1_reference_identity"):
        folder = PredictionFolder(label, tmp_path, "translate")
        assert folder.source == "t1" and folder.source_channel(["T1", "T1ce", "T2", "FLAIR"]) == 0
    assert PredictionFolder("translate_all", tmp_path, "translate").source_channel(["T1", "T2"]) is None
