"""BraSyn-style completion: ``pirl_predict -t translate --missing_only`` writes only the absent channels; the
"complete, then segment" chain on files and in ``pirl_evaluate_missing --complete_with``."""
import shutil

import numpy as np
import pandas as pd
import pytest

from pirl_pipeline.cli.evaluate_missing import main as missing_main
from pirl_pipeline.cli.plan_and_preprocess import main as plan_main
from pirl_pipeline.cli.predict import main as predict_main
from pirl_pipeline.cli.train import main as train_main
from pirl_pipeline.data.image_io import read_array
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.inference.predictor import PIRLPredictor
from tests.synthetic import make_case, write_image, write_raw_dataset

TINY = ["--epochs", "1", "--iters", "1", "--val-iters", "1", "--batch-size", "1", "-npa", "0", "-device", "cpu",
        "--set", "augment=false", "--set", "val_volumes=false", "--patch-size", "32", "32", "32"]
SHAPE = (24, 28, 26)


def run(*args) -> int:
    return predict_main([str(a) for a in args])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """DynUNet seg and translate models (32^3, one step) on a tiny T1 + FLAIR dataset ($PIRL_* set for the
    module); an input folder with case ``a`` (FLAIR only) and case ``b`` (both channels)."""
    root = tmp_path_factory.mktemp("complete")
    with pytest.MonkeyPatch.context() as mp:
        for k in ("raw", "preprocessed", "results"):
            mp.setenv(f"PIRL_{k}", str(root / k))
        write_raw_dataset(root / "raw", 932, "Complete", num_cases=2, shape=SHAPE, channels={"0": "T1", "1": "FLAIR"})
        assert plan_main(["-d", "932", "-np", "1"]) == 0
        for task in ("seg", "translate"):
            trainer = f"DynUNet{task.title()}Trainer"
            assert train_main(["932", "3d_fullres", task, "-f", "0", "-tr", trainer, *TINY]) == 0
        data, _ = make_case(SHAPE, seed=11, num_channels=2)
        write_image(data[1], root / "in" / "a_0001.nii.gz", spacing=(1.0, 1.0, 1.5), origin=(3, 2, 1))
        for c in (0, 1):
            write_image(data[c], root / "in" / f"b_{c:04d}.nii.gz")
        folder = root / "results" / "Dataset932_Complete"
        yield root, folder / "DynUNetSegTrainer__PIRLPlans__3d_fullres", \
            folder / "DynUNetTranslateTrainer__PIRLPlans__3d_fullres"


def test_missing_only_then_segment_the_completed_case(models, tmp_path):
    root, seg_model, tr_model = models
    synth = tmp_path / "synth"
    assert run("-i", root / "in", "-o", synth, "-m", tr_model, "-t", "translate", "--missing_only",
               "--disable_tta") == 0
    assert sorted(p.name for p in synth.iterdir()) == ["a_0000.nii.gz"]  # b has every channel: nothing
    flair, geometry = read_array(root / "in" / "a_0001.nii.gz")
    t1_synth, g = read_array(synth / "a_0000.nii.gz")
    assert g == geometry
    translator = PIRLPredictor.from_model_folder(tr_model, task="translate", mirror=False)
    np.testing.assert_array_equal(translator.complete({1: flair}, geometry)[0], t1_synth)
    # complete, then segment: the input plus the output folder is a complete raw case
    completed = tmp_path / "completed"
    completed.mkdir()
    for path in [*(root / "in").iterdir(), *synth.iterdir()]:
        shutil.copy(path, completed)
    assert run("-i", completed, "-o", tmp_path / "seg", "-m", seg_model, "-t", "seg", "--disable_tta",
               "--save_probabilities") == 0
    segmenter = PIRLPredictor.from_model_folder(seg_model, task="seg", mirror=False, save_probabilities=True)
    chained = segmenter.predict_case({0: t1_synth, 1: flair}, geometry)
    labels, g = read_array(tmp_path / "seg" / "a.nii.gz", dtype=np.uint8)
    probs = np.load(tmp_path / "seg" / "a.npz")["probabilities"].astype(np.float32)
    assert g == geometry and (labels == chained.segmentation).all()
    np.testing.assert_allclose(probs, chained.probabilities, atol=1e-3)
    direct = segmenter.predict_case({1: flair}, geometry).probabilities
    assert np.abs(direct - chained.probabilities).max() > 1e-3, "the synthesised T1 reached the seg model"


def test_missing_only_needs_a_translation_model(models, tmp_path, capsys):
    root, seg_model, _ = models
    assert run("-i", root / "in", "-o", tmp_path / "out", "-m", seg_model, "--missing_only") == 2
    assert "--missing_only: the model is a seg model" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_evaluate_missing_complete_with(models, tmp_path, monkeypatch):
    _, _, tr_model = models
    completions = []
    complete = PIRLPredictor.complete
    monkeypatch.setattr(PIRLPredictor, "complete",
                        lambda self, images, g: completions.append(sorted(images)) or complete(self, images, g))
    out = tmp_path / "seg"
    assert missing_main(["-d", "932", "-f", "0", "-t", "seg", "-tr", "DynUNetSegTrainer", "--disable_tta",
                         "--complete_with", str(tr_model), "-o", str(out)]) == 0
    assert completions == [[0], [1]]  # one validation case; the full subset needs no completion
    table = pd.read_csv(out / "per_case.csv")
    assert list(table["path"]) == ["direct", "completed"] * 3
    direct = pd.read_csv(out / "missing_modalities_dice.csv", index_col=0)
    completed = pd.read_csv(out / "missing_modalities_dice_completed.csv", index_col=0)
    assert list(completed.index) == list(direct.index) == ["T1", "FLAIR", "T1+FLAIR"]
    assert list(completed.columns) == list(direct.columns)
    pd.testing.assert_series_equal(completed.loc["T1+FLAIR"], direct.loc["T1+FLAIR"])
    assert (out / "missing_modalities_dice_completed.png").is_file()
    # HD95, sensitivity and specificity per subset beside Dice (RFNet / DeMoSeg tables), for both routes
    for metric, column in (("hd95", "HD95"), ("sensitivity", "TPR"), ("specificity", "TNR")):
        for suffix in ("", "_completed"):
            matrix = pd.read_csv(out / f"missing_modalities_{metric}{suffix}.csv", index_col=0)
            rows = table[table["path"] == ("completed" if suffix else "direct")]
            assert list(matrix.index) == ["T1", "FLAIR", "T1+FLAIR"]
            np.testing.assert_allclose(matrix.to_numpy(), rows[[c for c in rows if c.startswith(f"{column}/")]])
    assert (pd.read_csv(out / "missing_modalities_hd95.csv", index_col=0) >= 0).all().all()


def test_device_defaults_like_the_other_commands():
    """-device: cuda when available, as pirl_predict and pirl_train; cuda named without one is a clear error."""
    import torch

    from pirl_pipeline.cli.common import resolve_device
    from pirl_pipeline.cli.evaluate_missing import build_parser

    assert build_parser().parse_args(["-d", "1", "-t", "seg"]).device is None
    assert resolve_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(PirlInputError, match="-device cuda: no CUDA device is available"):
            resolve_device("cuda")


def test_complete_with_only_for_seg(models, tmp_path, capsys):
    _, _, tr_model = models
    assert missing_main(["-d", "932", "-t", "translate", "-tr", "DynUNetTranslateTrainer", "--complete_with",
                         str(tr_model), "-o", str(tmp_path / "o")]) == 2
    assert "--complete_with: only with -t seg" in capsys.readouterr().err
