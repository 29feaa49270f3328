"""pirl_find_best_configuration on fabricated cross-validation folders (the layout the final validation writes:
fold_F/config.json, fold_F/validation/{summary.json, CASE.nii.gz, CASE.npz}): the better trainer wins, an
ensemble is scored from averaged probabilities, the choice is reproducible, errors are one line."""
import json
import shutil

import numpy as np
import pytest

from pirl_pipeline.cli.find_best_configuration import INFORMATION, INSTRUCTIONS
from pirl_pipeline.cli.find_best_configuration import main as choose_main
from pirl_pipeline.data.dataset_json import load_dataset_json, parse_dataset_json
from pirl_pipeline.evaluation.primary_metric import PrimaryMetric, primary_metric
from pirl_pipeline.evaluation.segmentation import segmentation_metrics
from pirl_pipeline.file_io import load_json
from pirl_pipeline.inference.export import labels_from_probabilities
from pirl_pipeline.tasks import SEG, TRANSLATE
from tests.synthetic import ellipsoid, write_image

SHAPE = (10, 12, 14)
FOLDS = {"0": ["case0", "case1"], "1": ["case2", "case3"]}
GOOD, POOR = "DynUNetSegTrainer", "PIRLSegTrainer"


def reference(case: str) -> np.ndarray:
    k = int(case[-1])
    label = np.zeros(SHAPE, np.uint8)
    label[ellipsoid(SHAPE, (5, 6, 6 + k % 2), (4, 4, 5))] = 2
    label[ellipsoid(SHAPE, (5, 6, 6 + k % 2), (2, 2, 2))] = 1
    return label


def wrong_in(label: np.ndarray, axis_slice: slice, confidence: float) -> np.ndarray:
    """Softmax-like probabilities (3, *S): certain of ``label`` except inside the slab, where ``confidence`` goes to
    the next class (wrong above 0.5)."""
    probs = np.eye(3, dtype=np.float32)[label].transpose(3, 0, 1, 2)
    slab = np.zeros(SHAPE, bool)
    slab[:, :, axis_slice] = True
    wrong = (label + 1) % 3
    probs[:, slab] *= 1 - confidence
    for c in range(3):
        probs[c][slab & (wrong == c)] += confidence
    return probs


def write_trainer(results, trainer: str, probabilities, folds=FOLDS, npz=True, postprocessing=None) -> None:
    folder = results / f"{trainer}__PIRLPlans__3d_fullres"
    for fold, cases in folds.items():
        fold_dir = folder / f"fold_{fold}"
        (fold_dir / "validation").mkdir(parents=True)
        (fold_dir / "config.json").write_text(json.dumps({"task": "seg", "trainer": trainer}))
        (fold_dir / "validation" / "summary.json").write_text("{}")
        if postprocessing is not None:
            (fold_dir / "postprocessing.json").write_text(json.dumps({"keep_largest": postprocessing}))
        for case in cases:
            probs = probabilities(case)
            write_image(probs.argmax(0).astype(np.uint8), fold_dir / "validation" / f"{case}.nii.gz")
            if npz:
                np.savez_compressed(fold_dir / "validation" / f"{case}.npz", probabilities=probs.astype(np.float16))


@pytest.fixture
def dataset(tmp_path, monkeypatch):
    """Raw dataset 940 (4 labelled cases) and an empty results folder for it."""
    for k in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"PIRL_{k}", str(tmp_path / k))
    raw = tmp_path / "raw" / "Dataset940_Choose"
    for cases in FOLDS.values():
        for case in cases:
            write_image(reference(case), raw / "labelsTr" / f"{case}.nii.gz")
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1"}, "numTraining": 4,
                                                  "labels": {"background": 0, "core": 1, "edema": 2},
                                                  "file_ending": ".nii.gz"}))
    results = tmp_path / "results" / "Dataset940_Choose"
    results.mkdir(parents=True)
    return results


def choose(*extra) -> int:
    return choose_main(["-d", "940", "-t", "seg", "-np", "1", *map(str, extra)])


def test_the_better_trainer_wins_and_the_command_predicts_with_it(dataset):
    write_trainer(dataset, GOOD, lambda c: wrong_in(reference(c), slice(0, 1), 0.9), postprocessing=[[1, 2]])
    write_trainer(dataset, POOR, lambda c: wrong_in(reference(c), slice(0, 7), 0.9), npz=False)
    assert choose() == 0
    info = load_json(dataset / INFORMATION)
    scores = {c["name"]: c["primary_score"] for c in info["candidates"]}
    assert set(scores) == {GOOD, POOR}  # POOR has no probabilities: no ensemble
    assert info["best"] == GOOD and scores[GOOD] > scores[POOR]
    assert info["primary_metric"]["targets"] == ["core", "edema"]
    assert info["cases"] == ["case0", "case1", "case2", "case3"] and info["folds"] == ["0", "1"]
    assert info["command"] == (f"pirl_predict -i INPUT_FOLDER -o OUTPUT_FOLDER -d 940 -t seg -c 3d_fullres "
                               f"-tr {GOOD} -f 0 1")
    assert "keep the largest component of labels [1, 2]" in info["postprocessing"]
    text = (dataset / INSTRUCTIONS).read_text()
    assert info["command"] in text and f"{POOR} (4 CASE.npz missing" in text  # says which trainer lacks them


def test_an_ensemble_is_scored_from_averaged_probabilities(dataset):
    # each trainer is wrong (0.6) on its own slab; the average is right everywhere
    write_trainer(dataset, GOOD, lambda c: wrong_in(reference(c), slice(0, 4), 0.6), postprocessing=[[1, 2]])
    write_trainer(dataset, POOR, lambda c: wrong_in(reference(c), slice(8, 14), 0.6), postprocessing=[])
    assert choose() == 0
    info = load_json(dataset / INFORMATION)
    ensemble = f"{GOOD}+{POOR}"
    record = info["candidates"][0]
    assert record["name"] == ensemble == info["best"]
    assert record["primary_score"] == pytest.approx(1.0)
    singles = [c["primary_score"] for c in info["candidates"][1:]]
    assert max(singles) < 0.95
    assert info["command"].endswith(f"-tr {GOOD} {POOR} -f 0 1")
    assert info["postprocessing"].startswith("none")  # POOR's folds kept no step: the ensemble applies none
    # the same evaluator as pirl_evaluate, on the averaged float16 probabilities
    dj = load_dataset_json(dataset.parent.parent / "raw" / "Dataset940_Choose")
    mean = (wrong_in(reference("case2"), slice(0, 4), 0.6).astype(np.float16).astype(np.float32)
            + wrong_in(reference("case2"), slice(8, 14), 0.6).astype(np.float16).astype(np.float32)) / 2
    expected = segmentation_metrics(labels_from_probabilities(mean, dj), reference("case2"), dj)
    assert record["mean"]["core"]["Dice"] == pytest.approx(expected["Dice/core"])


def test_the_choice_is_reproducible_and_ties_go_to_fewer_trainers_then_the_name(dataset):
    write_trainer(dataset, POOR, lambda c: wrong_in(reference(c), slice(0, 3), 0.9))
    shutil.copytree(dataset / f"{POOR}__PIRLPlans__3d_fullres", dataset / f"{GOOD}__PIRLPlans__3d_fullres")
    assert choose() == 0
    first = (dataset / INFORMATION).read_bytes(), (dataset / INSTRUCTIONS).read_bytes()
    info = load_json(dataset / INFORMATION)
    scores = [c["primary_score"] for c in info["candidates"]]
    assert scores[0] == scores[1] == scores[2]  # two identical trainers and their ensemble
    assert [c["name"] for c in info["candidates"]] == [GOOD, POOR, f"{GOOD}+{POOR}"]
    assert choose() == 0
    assert ((dataset / INFORMATION).read_bytes(), (dataset / INSTRUCTIONS).read_bytes()) == first
    assert choose("-o", dataset / "elsewhere", "--disable_ensembling") == 0
    assert [c["name"] for c in load_json(dataset / "elsewhere" / INFORMATION)["candidates"]] == [GOOD, POOR]


def test_fold_and_trainer_selection(dataset):
    write_trainer(dataset, GOOD, lambda c: wrong_in(reference(c), slice(0, 1), 0.9))
    write_trainer(dataset, POOR, lambda c: wrong_in(reference(c), slice(0, 7), 0.9), folds={"0": FOLDS["0"]})
    assert choose("-f", "0") == 0
    info = load_json(dataset / INFORMATION)
    assert info["folds"] == ["0"] and info["cases"] == ["case0", "case1"] and info["command"].endswith("-f 0")
    assert choose("-tr", POOR) == 0
    assert [c["name"] for c in load_json(dataset / INFORMATION)["candidates"]] == [POOR]


@pytest.mark.parametrize("setup, argv, message", [
    (lambda d: None, [], "no trained seg trainer with a final validation"),
    (lambda d: write_trainer(d, POOR, lambda c: reference(c)[None].repeat(3, 0).astype(np.float32),
                             folds={"0": FOLDS["0"]}), [], "validated on different folds (0 1 vs 0); give -f"),
    (lambda d: write_trainer(d, POOR, lambda c: np.eye(3, dtype=np.float32)[reference(c)].transpose(3, 0, 1, 2),
                             folds={"0": ["case0"], "1": FOLDS["1"]}), [],
     f"fold 0: {GOOD} and {POOR} validated different cases ({GOOD}__PIRLPlans__3d_fullres only: case1"),
    (lambda d: None, ["-f", "3"], "fold(s) 3 have no final validation (validated: 0 1)"),
    (lambda d: None, ["-tr", "SwinUNETRSegTrainer"], "no validated seg model folder SwinUNETRSegTrainer__PIRLPlans"),
])
def test_errors_are_one_line(dataset, run_cli, setup, argv, message):
    if "no trained" not in message:
        write_trainer(dataset, GOOD, lambda c: np.eye(3, dtype=np.float32)[reference(c)].transpose(3, 0, 1, 2))
    setup(dataset)
    before = sorted(p.relative_to(dataset) for p in dataset.rglob("*"))
    code, line = run_cli(choose_main, ["-d", "940", "-t", "seg", "-np", "1", *argv])
    assert code == 2 and line.startswith("error: ") and message in line, line
    assert sorted(p.relative_to(dataset) for p in dataset.rglob("*")) == before  # nothing written


def test_translate_and_bad_probabilities_are_refused(dataset, run_cli):
    code, line = run_cli(choose_main, ["-d", "940", "-t", "translate"])
    assert code == 2 and "pirl_evaluate_missing -t translate" in line
    write_trainer(dataset, GOOD, lambda c: wrong_in(reference(c), slice(0, 1), 0.9))
    write_trainer(dataset, POOR, lambda c: wrong_in(reference(c), slice(0, 2), 0.9))
    bad = dataset / f"{POOR}__PIRLPlans__3d_fullres" / "fold_1" / "validation" / "case3.npz"
    np.savez_compressed(bad, probabilities=np.zeros((3, 2, 2, 2), np.float16))
    code, line = run_cli(choose_main, ["-d", "940", "-t", "seg", "-np", "1"])
    assert code == 2 and str(bad) in line and "the reference is (10, 12, 14)" in line


def test_primary_metric_per_task(dataset):
    dj = load_dataset_json(dataset.parent.parent / "raw" / "Dataset940_Choose")
    assert primary_metric(SEG, dj) == PrimaryMetric("Dice", ("core", "edema"))
    assert primary_metric(TRANSLATE, dj).metric == "PSNR"
    brats = parse_dataset_json(
        {"channel_names": {"0": "FLAIR"}, "numTraining": 1, "file_ending": ".nii.gz", "regions_class_order": [2, 1, 3],
         "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [1, 3], "enhancing tumor": [3]}}, "x")
    assert primary_metric(SEG, brats).targets == ("whole tumor", "tumor core", "enhancing tumor")
