"""pirl_predict: any channel subset in, outputs on the input's exact grid, clear errors."""
import shutil

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from pirl_pipeline.cli.plan_and_preprocess import main as plan_main
from pirl_pipeline.cli.predict import main as predict_main
from pirl_pipeline.cli.train import main as train_main
from pirl_pipeline.data.image_io import Geometry, read_array
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.file_io import load_json
from pirl_pipeline.inference.postprocessing import Postprocessing, keep_largest
from pirl_pipeline.inference.predictor import PIRLPredictor
from tests.synthetic import make_case, write_image, write_raw_dataset

TINY = ["--epochs", "1", "--iters", "1", "--val-iters", "1", "--feature-size", "12", "--batch-size", "1",
        "-npa", "0", "-device", "cpu", "--set", "augment=false"]
def run_predict(args: list) -> int:
    return predict_main([str(a) for a in args])


LPS = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny 2-channel dataset, a PIRL seg model (64^3) and a DynUNet translate model (32^3)."""
    root = tmp_path_factory.mktemp("predict")
    with pytest.MonkeyPatch.context() as mp:
        for k in ("raw", "preprocessed", "results"):
            mp.setenv(f"PIRL_{k}", str(root / k))
        write_raw_dataset(root / "raw", 930, "TinyPredict", num_cases=2, shape=(40, 44, 42),
                          spacing=(1.0, 1.0, 1.5), channels={"0": "T1", "1": "FLAIR"})
        assert plan_main(["-d", "930", "-np", "1"]) == 0
        assert train_main(["930", "3d_fullres", "seg", "-f", "0", "--patch-size", "64", "64", "64", *TINY]) == 0
        assert train_main(["930", "3d_fullres", "translate", "-f", "0", "-tr", "DynUNetTranslateTrainer",
                           "--patch-size", "32", "32", "32", *TINY]) == 0
        inputs = root / "inputs"
        data, _ = make_case((40, 44, 42), seed=7, num_channels=2)
        for c in range(2):  # a case on an LPS-like grid with another origin
            write_image(data[c], inputs / f"lps_{c:04d}.nii.gz", spacing=(1.0, 1.0, 1.5), origin=(10, -5, 3),
                        direction=LPS)
        write_image(data[1], inputs / "flaironly_0001.nii.gz", spacing=(1.0, 1.0, 1.5))
        yield root, inputs, mp


def test_segmentation_on_input_grid_from_any_subset(trained):
    root, inputs, _ = trained
    out = root / "seg_out"
    assert run_predict(["-i", inputs, "-o", out, "-d", "930", "-t", "seg", "--disable_tta"]) == 0
    for case, reference in (("lps", "lps_0000.nii.gz"), ("flaironly", "flaironly_0001.nii.gz")):
        image = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        assert Geometry.of(image) == Geometry.of(sitk.ReadImage(str(inputs / reference)))
        assert set(np.unique(sitk.GetArrayFromImage(image))) <= {0, 1, 2}
    # --continue skips finished cases
    mtime = (out / "lps.nii.gz").stat().st_mtime_ns
    assert run_predict(["-i", inputs, "-o", out, "-d", "930", "-t", "seg", "--continue", "--disable_tta"]) == 0
    assert (out / "lps.nii.gz").stat().st_mtime_ns == mtime


def test_translation_writes_every_modality_in_input_units(trained):
    root, inputs, _ = trained
    out = root / "tr_out"
    model = root / "results" / "Dataset930_TinyPredict" / "DynUNetTranslateTrainer__PIRLPlans__3d_fullres"
    assert run_predict(["-i", inputs, "-o", out, "-m", model, "--channels", "1"]) == 0
    t1_ref, geometry = read_array(inputs / "lps_0000.nii.gz")
    for c in range(2):
        synthesised, g = read_array(out / f"lps_{c:04d}.nii.gz")
        assert g == geometry and synthesised.dtype == np.float32
        assert (synthesised[t1_ref == 0] == 0).all(), "background outside the input's body mask stays 0"
    flair_out, _ = read_array(out / "flaironly_0001.nii.gz")
    flair_in, _ = read_array(inputs / "flaironly_0001.nii.gz")
    inside = flair_in != 0
    # in the input's units: the median lands within one std of the input's (measured 0.07 std off); output left
    # in z-units would be ~11 std off (median 150, std 13)
    assert abs(float(np.median(flair_out[inside])) - float(np.median(flair_in[inside]))) < flair_in[inside].std()


def test_python_api_arrays_equal_the_file_route(trained, tmp_path):
    root, inputs, _ = trained
    folder = root / "results" / "Dataset930_TinyPredict" / "PIRLSegTrainer__PIRLPlans__3d_fullres"
    (tmp_path / "in").mkdir()
    shutil.copy(inputs / "lps_0001.nii.gz", tmp_path / "in")
    assert run_predict(["-i", tmp_path / "in", "-o", tmp_path / "out", "-m", folder, "--disable_tta"]) == 0
    from_file, _ = read_array(tmp_path / "out" / "lps.nii.gz", dtype=np.uint8)
    predictor = PIRLPredictor.from_model_folder(folder, task="seg", mirror=False)  # post-processed, as the CLI
    image = sitk.ReadImage(str(inputs / "lps_0001.nii.gz"))  # FLAIR only: channel 1 of the model
    flair, spacing = sitk.GetArrayFromImage(image)[None], image.GetSpacing()[::-1]
    [result] = predictor.predict_arrays([flair], [spacing], channels=[1])
    assert result.available == [1] and result.segmentation.shape == flair.shape[1:]
    np.testing.assert_array_equal(result.segmentation, from_file)
    with pytest.raises(PirlInputError, match=r"shape \(1, 40, 44, 42\) with channels \[0, 1\]"):
        predictor.predict_array(flair, spacing, channels=[0, 1])
    with pytest.raises(PirlInputError, match="the model was trained for seg, not translate"):
        PIRLPredictor.from_model_folder(folder, task="translate")


def test_prediction_applies_the_postprocessing_its_fold_chose(trained, caplog):
    root, inputs, _ = trained
    folder = root / "results" / "Dataset930_TinyPredict" / "PIRLSegTrainer__PIRLPlans__3d_fullres"
    record = load_json(folder / "fold_0" / "postprocessing.json")  # the final validation chose it
    assert record["cases"] and [d["keep_largest"] for d in record["decisions"]] == [[1, 2], [1], [2]]
    assert PIRLPredictor.from_model_folder(folder).postprocessing.keep_largest == record["keep_largest"]
    predictor = PIRLPredictor.from_model_folder(folder, mirror=False, postprocess=False)
    assert predictor.postprocessing is None
    image = sitk.ReadImage(str(inputs / "lps_0001.nii.gz"))
    flair, spacing = sitk.GetArrayFromImage(image)[None], image.GetSpacing()[::-1]
    raw = predictor.predict_array(flair, spacing, channels=[1]).segmentation
    predictor.postprocessing = Postprocessing([[1, 2]])
    np.testing.assert_array_equal(predictor.predict_array(flair, spacing, channels=[1]).segmentation,
                                  keep_largest(raw, [1, 2]))
    with caplog.at_level("INFO", logger="pirl"):
        assert run_predict(["-i", inputs, "-o", root / "pp_off", "-m", folder, "--disable_tta",
                            "--disable_postprocessing"]) == 0
    assert "post-processing: off (--disable_postprocessing)" in caplog.text


@pytest.mark.parametrize("problem, message", [
    ("same_folder", "must not be (inside) the input folder"),
    ("no_cases", "no images"),
    ("unknown_channel", "channel 0005 is not declared"),
    ("grids", "not on the grid"),
    ("no_model", "model folder not found"),
    ("wrong_task", "the model was trained for seg"),
])
def test_bad_input(trained, tmp_path, capsys, problem, message):
    folder = tmp_path / "in"
    folder.mkdir()
    args = ["-i", folder, "-o", tmp_path / "out", "-d", "930", "-t", "seg"]
    data, _ = make_case((40, 44, 42), seed=3, num_channels=2)
    if problem != "no_cases":
        write_image(data[0], folder / "a_0000.nii.gz")
    if problem == "same_folder":
        args[3] = folder / "sub"
    elif problem == "unknown_channel":
        write_image(data[1], folder / "a_0005.nii.gz")
    elif problem == "grids":
        write_image(data[1], folder / "a_0001.nii.gz", spacing=(2.0, 1.0, 1.0))
    elif problem == "no_model":
        args = ["-i", folder, "-o", tmp_path / "out", "-m", tmp_path / "nothing"]
    elif problem == "wrong_task":
        args = ["-i", folder, "-o", tmp_path / "out", "-d", "930", "-t", "translate", "-tr", "PIRLSegTrainer"]
    assert run_predict([str(a) for a in args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_missing_modality_and_translation_matrices(trained):
    root, _, _ = trained
    from pirl_pipeline.cli.evaluate_missing import main as missing_main

    out = root / "missing"
    assert missing_main(["-d", "930", "-f", "0", "-t", "seg", "--disable_tta", "-o", str(out / "seg")]) == 0
    matrix = pd.read_csv(out / "seg" / "missing_modalities_dice.csv", index_col=0)
    assert list(matrix.index) == ["T1", "FLAIR", "T1+FLAIR"] and {"core", "edema"} <= set(matrix.columns)
    assert ((matrix >= 0) & (matrix <= 1)).all().all() and (out / "seg" / "missing_modalities_dice.png").is_file()
    assert missing_main(["-d", "930", "-f", "0", "-t", "translate", "-tr", "DynUNetTranslateTrainer",
                         "--disable_tta", "-o", str(out / "tr")]) == 0
    psnr = pd.read_csv(out / "tr" / "translation_psnr.csv", index_col=0)
    assert psnr.loc["T1", "FLAIR"] == psnr.loc["T1", "FLAIR"] and psnr.shape == (2, 2)  # finite off-diagonal
