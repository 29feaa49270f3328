"""pirl_predict -tr A B: trainers ensembled by averaged probabilities, then the post-processing all their folds
kept; and pirl_find_best_configuration on what two real (tiny) trainings with --npz leave behind."""
import numpy as np
import pytest

from pirl_pipeline.cli.find_best_configuration import INFORMATION
from pirl_pipeline.cli.find_best_configuration import main as choose_main
from pirl_pipeline.cli.plan_and_preprocess import main as plan_main
from pirl_pipeline.cli.predict import main as predict_main
from pirl_pipeline.cli.train import main as train_main
from pirl_pipeline.data.dataset_json import DatasetJson
from pirl_pipeline.data.image_io import read_array
from pirl_pipeline.file_io import load_json
from pirl_pipeline.inference.ensembling import TrainerEnsemble, common_postprocessing
from pirl_pipeline.inference.postprocessing import Postprocessing
from pirl_pipeline.inference.predictor import CasePrediction
from pirl_pipeline.tasks import SEG
from tests.synthetic import pirl_roots, write_raw_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["--epochs", "1", "--iters", "1", "--val-iters", "1", "--feature-size", "12", "--batch-size", "1",
        "-npa", "0", "-device", "cpu", "--set", "augment=false", "--npz"]
A, B = "DynUNetSegTrainer", "SwinUNETRSegTrainer"
PATCH = {A: "32", B: "64"}  # SwinUNETR's bottleneck needs 64 (32: one voxel, which instance norm refuses)


class FakeMember:
    """A member predicting fixed probabilities (what TrainerEnsemble reads of a PIRLPredictor)."""

    def __init__(self, probs: np.ndarray, dj: DatasetJson) -> None:
        self.probs, self.mirror, self.num_modalities, self.task = probs, False, 1, SEG
        self.model = type("Model", (), {"dataset_json": dj})()
        self.postprocessing, self.save_probabilities = Postprocessing([[1, 2]]), False

    def predict_case(self, images, geometry) -> CasePrediction:
        assert self.postprocessing is None and self.save_probabilities  # the ensemble wants raw probabilities
        return CasePrediction([0], self.probs.argmax(0), self.probs)


def test_members_are_averaged_then_post_processed():
    dj = DatasetJson({"0": "T1"}, {"background": 0, "a": 1, "b": 2}, 1)
    first, second = np.zeros((3, 1, 1, 6), np.float32), np.zeros((3, 1, 1, 6), np.float32)
    first[:, 0, 0] = [[0.0, 0.6, 0.2, 0.0, 0.0, 0.1], [1.0, 0.4, 0.0, 0.1, 0.0, 0.0], [0, 0, 0.8, 0.9, 1, 0.9]]
    second[:, 0, 0] = [[0.0, 0.0, 0.6, 0.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.1, 0.0, 0.0], [0, 0, 0.4, 0.9, 1, 0.0]]
    ensemble = TrainerEnsemble([FakeMember(first, dj), FakeMember(second, dj)], Postprocessing([[1]]),
                               save_probabilities=True)
    result = ensemble.predict_case({0: np.ones((1, 1, 6), np.float32)}, None)
    np.testing.assert_allclose(result.probabilities, (first + second) / 2)  # saved as averaged, never processed
    # averaged arg-max: [1, 1, 2, 2, 2, 0]; keep the largest component of label 1: both voxels are one component
    assert result.segmentation[0, 0].tolist() == [1, 1, 2, 2, 2, 0]
    ensemble.postprocessing = Postprocessing([[2]])
    first[:, 0, 0, 4], second[:, 0, 0, 4] = [1, 0, 0], [1, 0, 0]  # splits label 2 into [2, 3] and [5]
    first[:, 0, 0, 5], second[:, 0, 0, 5] = [0, 0, 1], [0, 0, 1]
    assert ensemble.predict_case({0: np.ones((1, 1, 6), np.float32)}, None).segmentation[0, 0].tolist() == \
        [1, 1, 2, 2, 0, 0]


def test_common_postprocessing_keeps_what_every_member_kept():
    assert common_postprocessing([Postprocessing([[1, 2], [1]]), Postprocessing([[1]])]).keep_largest == [[1]]
    assert common_postprocessing([Postprocessing([[1, 2]]), None]) is None
    assert common_postprocessing([Postprocessing([]), Postprocessing([[1]])]).keep_largest == []


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two tiny seg trainers (DynUNet, SwinUNETR) on fold 0 of a 2-case dataset, validated with --npz."""
    root = tmp_path_factory.mktemp("ensemble")
    with pirl_roots(root) as env:
        raw = write_raw_dataset(root / "raw", 941, "TinyEnsemble", num_cases=2, shape=(24, 28, 26),
                                channels={"0": "T1", "1": "FLAIR"})
        assert plan_main(["-d", "941", "-np", "1"]) == 0
        for trainer in (A, B):
            assert train_main(["941", "3d_fullres", "seg", "-f", "0", "-tr", trainer, "--patch-size",
                               *[PATCH[trainer]] * 3, *TINY]) == 0
        yield root, raw, env


def predict(root, raw, name, *extra) -> tuple[np.ndarray, np.ndarray]:
    out = root / name
    assert predict_main(["-i", str(raw / "imagesTr"), "-o", str(out), "-d", "941", "-t", "seg", "-f", "0",
                         "--disable_tta", "--save_probabilities", *extra]) == 0
    labels, _ = read_array(out / "case001.nii.gz")
    return labels, np.load(out / "case001.npz")["probabilities"].astype(np.float32)


def test_predict_ensembles_trainers_by_averaged_probabilities(trained):
    root, raw, _ = trained
    _, probs_a = predict(root, raw, "a", "-tr", A, "--disable_postprocessing")
    _, probs_b = predict(root, raw, "b", "-tr", B, "--disable_postprocessing")
    labels, probs = predict(root, raw, "ab", "-tr", A, B, "--disable_postprocessing")
    np.testing.assert_allclose(probs, (probs_a + probs_b) / 2, atol=2e-3)  # float16 files
    agree = np.mean(labels == probs.argmax(0))  # argmax of the averaged probabilities (float16 ties aside)
    assert agree > 0.999
    assert not np.allclose(probs, probs_a, atol=2e-3)  # B did count


def test_predict_ensemble_errors_are_one_line(trained, run_cli):
    root, raw, _ = trained
    base = ["-i", raw / "imagesTr", "-o", root / "err", "-d", "941", "-t", "seg"]
    code, line = run_cli(predict_main, [*base, "-tr", A, A])
    assert code == 2 and f"-tr {A} {A}: a trainer is named twice" in line
    code, line = run_cli(predict_main, [*base, "-tr", A, "PIRLSegTrainer"])
    assert code == 2 and "PIRLSegTrainer__PIRLPlans__3d_fullres: model folder not found" in line
    assert not (root / "err").exists()


def test_chooser_reads_what_the_final_validation_wrote(trained):
    root, _, _ = trained
    assert choose_main(["-d", "941", "-t", "seg", "-np", "1"]) == 0
    info = load_json(root / "res" / "Dataset941_TinyEnsemble" / INFORMATION)
    assert sorted(c["name"] for c in info["candidates"]) == [A, f"{A}+{B}", B]
    assert info["folds"] == ["0"] and len(info["cases"]) == 1
    assert all(t["probabilities"] for t in info["trainers"])
    assert info["command"].startswith("pirl_predict -i INPUT_FOLDER -o OUTPUT_FOLDER -d 941 -t seg -c 3d_fullres -tr ")
