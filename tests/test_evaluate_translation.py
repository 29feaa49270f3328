"""pirl_evaluate -t translate: masks, the pair table, BraSyn SSIM, bad input."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pirl_pipeline.cli.evaluate import main
from pirl_pipeline.data.dataset_json import DatasetJson
from pirl_pipeline.evaluation.image_similarity import psnr, ssim
from pirl_pipeline.evaluation.metrics import bounding_box
from pirl_pipeline.evaluation.translation import evaluate_translation_folder, reference_mask, translation_metrics
from tests.evaluate_helpers import BRATS, SHAPE, error_of
from tests.synthetic import MRI4, write_image


def write_translation(tmp_path, shift=0.0, garbage=0.0):
    rng = np.random.default_rng(0)
    ref, pred = tmp_path / "imagesTs", tmp_path / "pred"
    shape = (14, 15, 16)
    body = np.zeros(shape, bool)
    body[2:12, 2:13, 2:14] = True
    arrays = {}
    for case in ("a", "b"):
        images = np.where(body, rng.random((4, *shape)) * 100 + 50, 0).astype(np.float32)
        arrays[case] = images
        for c in range(4):
            write_image(images[c], ref / f"{case}_{c:04d}.nii.gz")
        out = np.where(body, images[2] + shift, garbage).astype(np.float32)
        write_image(out, pred / f"{case}_0002.nii.gz")
    return ref, pred, arrays, body



def test_translate_cli_masks_without_patching(brats, tmp_path, run_cli):
    ref, pred, arrays, body = write_translation(tmp_path, shift=2.0, garbage=500.0)
    out = tmp_path / "scores" / "t.json"
    code, err = run_cli(main, ["-ref", ref, "-pred", pred, "-dj", brats / "dataset.json", "-t", "translate",
                               "-o", out, "-np", 1])
    assert code == 0, err
    summary = json.loads(out.read_text())
    assert set(summary["mean"]) == {"T2"}  # only the predicted channel
    a = arrays["a"][2][body]
    assert summary["per_case"][0]["metrics"]["T2"]["PSNR_raw"] == pytest.approx(
        10 * math.log10(float(a.max() - a.min()) ** 2 / 4.0), rel=1e-5)
    # the background garbage is outside the mask for PSNR but seen by SSIM windows at the edge
    expected = ssim(np.where(body, arrays["a"][2] + 2, 500.0), arrays["a"][2], body)
    assert summary["per_case"][0]["metrics"]["T2"]["SSIM_raw"] == pytest.approx(expected, rel=1e-5)
    assert summary["per_case"][0]["metrics"]["T2"]["PSNR"] > 100  # a pure offset: perfect once scaled (float32 rounding)
    assert "percentile" in summary["metric_conventions"]["PSNR"]
    assert expected < ssim(np.where(body, arrays["a"][2] + 2, 0.0), arrays["a"][2], body)
    assert (tmp_path / "scores" / "t.csv").is_file() and not (pred / "summary.json").exists()



def test_translation_api_on_arrays(tmp_path, brats):
    ref, pred, arrays, body = write_translation(tmp_path)
    images = arrays["b"]
    assert np.array_equal(reference_mask(images), body)
    m = translation_metrics(images[1:3], images[1:3], reference_mask(images), ["T1ce", "T2"])
    assert m["PSNR/T2"] == math.inf and m["NMSE/T1ce"] == 0.0 and m["SSIM/T2"] == pytest.approx(1.0)
    half = translation_metrics(images[2] * 0.5, images[2])
    assert half["PSNR_raw/0"] == pytest.approx(psnr(images[2] * 0.5, images[2], body)) and half["PSNR/0"] > 100
    table = evaluate_translation_folder(ref, pred, 501, num_processes=2)
    assert list(table.columns) == ["PSNR/T2", "NMSE/T2", "SSIM/T2", "PSNR_raw/T2", "NMSE_raw/T2", "SSIM_raw/T2"]
    assert (table["NMSE/T2"] == 0).all() and (table["NMSE_raw/T2"] == 0).all()



def test_translation_scores_on_a_real_case(shared_data):
    """TCGA-DU-7294: a perfect synthesis up to gain and offset beats copying another modality once each
    volume is scaled by its own percentiles; in scanner units it was the other way round."""
    from pirl_pipeline.data.image_io import read_array

    folder = shared_data / "brats2020_style" / "TCGA-DU-7294"
    images = {m: read_array(folder / f"TCGA-DU-7294_{m}.nii.gz")[0] for m in ("t1", "t1ce", "t2", "flair")}
    mask = reference_mask(np.stack(list(images.values())))
    box = bounding_box(mask, margin=6)  # the brain plus more than half an SSIM window: the same scores, faster
    images, mask = {m: image[box] for m, image in images.items()}, mask[box]
    rescaled = translation_metrics(images["t2"] * 3 + 50, images["t2"], mask, ["T2"])
    copied = translation_metrics(images["t1"], images["t1ce"], mask, ["T1ce"])
    assert rescaled["PSNR/T2"] >= 35 and rescaled["SSIM/T2"] >= 0.95
    assert copied["PSNR/T1ce"] == pytest.approx(19.58, abs=0.01) and copied["SSIM/T1ce"] == pytest.approx(0.728, abs=1e-3)
    # raw units: the rescaled perfect synthesis scored far below the copy (the bug this convention fixes)
    assert rescaled["PSNR_raw/T2"] == pytest.approx(5.69, abs=0.01) and rescaled["SSIM_raw/T2"] == pytest.approx(
        0.378, abs=1e-3)
    assert copied["PSNR_raw/T1ce"] == pytest.approx(28.81, abs=0.01) and copied["SSIM_raw/T1ce"] == pytest.approx(
        0.813, abs=1e-3)



def test_synthesised_mri_stays_in_zscore_units():
    """inference/export: a synthesised z-scored (MRI) channel is not de-normalised with dataset averages
    (MRI has no shared unit); CT keeps its dataset-level Hounsfield de-normalisation."""
    from types import SimpleNamespace

    from pirl_pipeline.inference.export import intensities_in_input_units

    props = {"0": {"mean": 300.0, "std": 50.0}, "1": {"mean": 40.0, "std": 100.0, "percentile_99_5": 1000.0}}
    plans = SimpleNamespace(
        configuration=lambda name: SimpleNamespace(normalization_schemes=["ZScoreNormalization", "CTNormalization",
                                                                          "ZScoreNormalization"]),
        foreground_intensity_properties_per_channel=props, extra={})
    output = np.stack([np.full((2, 2, 2), 1.5, np.float32)] * 3)
    # channel 2 was an input (its own parameters); channels 0 (MRI) and 1 (CT) were synthesised
    properties = {"normalization": [None, None, {"mean": 10.0, "std": 2.0}]}
    restored = intensities_in_input_units(output, properties, plans, "3d_fullres")
    assert (restored[0] == 1.5).all() and (restored[1] == 1.5 * 100 + 40).all() and (restored[2] == 13.0).all()



def test_translate_bad_input(brats, tmp_path, run_cli):
    ref, pred, _, _ = write_translation(tmp_path)
    (pred / "b_0002.nii.gz").unlink()
    err = error_of(run_cli, ["-ref", ref, "-pred", pred, "-d", 501, "-t", "translate", "-np", 1])
    assert "1 reference case(s) have no prediction" in err and ": b" in err
    (ref / "b_0001.nii.gz").rename(pred / "b_0001.nii.gz")
    err = error_of(run_cli, ["-ref", ref, "-pred", pred, "-d", 501, "-t", "translate", "-np", 1])
    assert "b_0001.nii.gz: no reference image for channel 0001" in err



def test_translate_missing_reference_is_skipped_when_channels_may_be_missing(brats, pirl_raw, tmp_path, run_cli):
    """A dataset with missing channels: a synthesised channel whose reference does not exist is not scored (and
    listed); the others are scored as before, inside the mask of the references the case has."""
    ref, pred, arrays, body = write_translation(tmp_path, shift=2.0)
    (ref / "b_0002.nii.gz").unlink()  # case b has no T2
    write_image(arrays["a"][1], pred / "a_0001.nii.gz")
    dj = DatasetJson(MRI4, {"background": 0, "lesion": 1}, 2, allow_missing_channels=True)
    dj.save(pirl_raw / "Dataset502_Incomplete")
    code, err = run_cli(main, ["-ref", ref, "-pred", pred, "-d", 502, "-t", "translate", "-np", 1])
    assert code == 0, err
    summary = json.loads((pred / "summary.json").read_text())
    assert summary["not_scored"] == ["b_0002.nii.gz"]
    assert summary["count"]["T2"]["PSNR_raw"] == 1 and summary["count"]["T1ce"]["NMSE_raw"] == 1
    a = arrays["a"][2][body]
    assert summary["mean"]["T2"]["PSNR_raw"] == pytest.approx(10 * math.log10(float(a.max() - a.min()) ** 2 / 4.0),
                                                              rel=1e-5)
    assert summary["per_case"][1]["metrics"]["T2"]["PSNR_raw"] is None
    assert summary["mean"]["T1ce"]["NMSE_raw"] == 0.0
    # the same folders against a dataset that declares no missing channels: the error names the file
    err = error_of(run_cli, ["-ref", ref, "-pred", pred, "-d", 501, "-t", "translate", "-np", 1])
    assert "b_0002.nii.gz: no reference image for channel 0002" in err and "allow_missing_channels" in err



def test_translation_table_scores_the_pairs_a_case_has():
    """Final validation of translation (every single source -> every other modality) on a case lacking one."""
    from types import SimpleNamespace

    from pirl_pipeline.evaluation.missing_modalities import translation_table

    images = {c: np.full(SHAPE, 10.0 * (c + 1), np.float32) for c in (0, 2, 3)}  # channel 1 absent

    class Predictor:
        num_modalities = 4
        model = SimpleNamespace(dataset_json=BRATS)

        def __init__(self):
            self.calls = []

        def read_case(self, case, files):
            return {c: images[c] for c in files}, None

        def predict_case(self, available, geometry):
            self.calls.append(sorted(available))
            return SimpleNamespace(images=np.stack([images.get(c, np.zeros(SHAPE, np.float32)) for c in range(4)]))

    predictor = Predictor()
    table = translation_table(predictor, {"x": {0: "x_0000", 2: "x_0002", 3: "x_0003"}})
    assert predictor.calls == [[0], [2], [3]]
    pairs = list(zip(table["source"], table["target"]))
    assert pairs == [("T1", "T2"), ("T1", "FLAIR"), ("T2", "T1"), ("T2", "FLAIR"), ("FLAIR", "T1"), ("FLAIR", "T2")]
    assert (table["NMSE_raw"] == 0).all()



def test_brasyn_ssim_on_arrays():
    """BraSyn's scaling (whole-volume 0.5/99.5 percentiles, lower one floored at 0) and SSIM inside and outside
    the tumour of the masked volumes."""
    from pirl_pipeline.evaluation.translation import brasyn_scale, brasyn_ssim

    ramp = np.arange(-10.0, 190.0).reshape(5, 5, 8)
    lo, hi = np.percentile(ramp, [0.5, 99.5])
    assert lo < 0  # BraSyn floors it at 0 (strictlyPositive): negative voxels become 0
    np.testing.assert_allclose(brasyn_scale(ramp), np.clip(ramp / hi, 0, 1))
    rng = np.random.default_rng(0)
    shape = (24, 26, 28)
    ref = np.zeros(shape)
    ref[3:21, 3:23, 3:25] = rng.random((18, 20, 22)) * 100 + 50
    tumor = np.zeros(shape, bool)
    tumor[8:16, 9:17, 9:19] = True
    same = brasyn_ssim(ref * 3 + 0, ref, tumor)  # a gain: undone by the per-volume scaling
    assert same == {"BraSyn_SSIM_tumor": pytest.approx(1.0), "BraSyn_SSIM_non_tumor": pytest.approx(1.0)}
    wrong = ref.copy()
    wrong[tumor] = rng.random(int(tumor.sum())) * 100 + 50  # the tumour synthesised wrongly, the rest right
    scores = brasyn_ssim(wrong, ref, tumor)
    assert scores["BraSyn_SSIM_tumor"] < 0.8 and scores["BraSyn_SSIM_non_tumor"] > 0.99
    # the same numbers as pirl's SSIM on the masked, scaled volumes (data range: the larger of the two)
    p, r = brasyn_scale(wrong) * tumor, brasyn_scale(ref) * tumor
    assert scores["BraSyn_SSIM_tumor"] == pytest.approx(ssim(p, r, tumor, max(np.ptp(p), np.ptp(r))))
    assert math.isnan(brasyn_ssim(wrong, ref, np.zeros(shape, bool))["BraSyn_SSIM_tumor"])  # no tumour



def test_brasyn_cli_needs_labels(brats, tmp_path, run_cli):
    ref, pred, arrays, body = write_translation(tmp_path, shift=2.0)
    labels_dir = tmp_path / "labelsTs"
    tumor = np.zeros(body.shape, np.uint8)
    tumor[5:9, 5:10, 5:10] = 3
    write_image(tumor, labels_dir / "a.nii.gz")
    base = ["-ref", ref, "-pred", pred, "-d", 501, "-t", "translate", "-np", 1]
    err = error_of(run_cli, [*base, "--brasyn", labels_dir])
    assert f"{labels_dir / 'b.nii.gz'}: no label map for the BraSyn tumour / non-tumour SSIM" in err
    assert not (pred / "summary.json").exists()
    write_image(tumor, labels_dir / "b.nii.gz")
    code, err = run_cli(main, [*base, "--brasyn", labels_dir])
    assert code == 0, err
    summary = json.loads((pred / "summary.json").read_text())
    t2 = summary["per_case"][0]["metrics"]["T2"]
    from pirl_pipeline.evaluation.translation import brasyn_ssim

    expected = brasyn_ssim(np.where(body, arrays["a"][2] + 2, 0), arrays["a"][2], tumor > 0)
    assert t2["BraSyn_SSIM_tumor"] == pytest.approx(expected["BraSyn_SSIM_tumor"], rel=1e-5)
    assert t2["BraSyn_SSIM_non_tumor"] == pytest.approx(expected["BraSyn_SSIM_non_tumor"], rel=1e-5)
    assert t2["PSNR"] > 100  # the default scale-free metrics stay
    assert "BraSyn" in summary["metric_conventions"]["BraSyn_SSIM_tumor"] and "PSNR" in summary["metric_conventions"]
    assert summary["brasyn_labels"] == str(labels_dir.resolve())
    assert "--brasyn: only with -t translate" in error_of(run_cli, [*base[:6], "-t", "seg", "--brasyn", labels_dir])
