"""The modality registry: one entry per kind decides lookup, family, normalisation, roles; a new kind is one entry."""
import numpy as np
import pytest

from pirl_pipeline.data import modalities
from pirl_pipeline.data.dataset_json import DatasetJson
from pirl_pipeline.data.modalities import (
    Modality,
    Normalizer,
    empty_reference_policy,
    lesion_index,
    modality,
    modality_key,
    modality_kind,
    register,
    uptake_index,
)
from pirl_pipeline.preprocessing.normalization import denormalize_channel, normalize_channel


@pytest.mark.parametrize("name, kind", [("T1", "MRI"), ("FLAIR", "MRI"), ("CT", "CT"), ("CTres", "CT"),
                                        ("PET", "PET"), ("SUV", "PET"), ("whatever", "MRI"), (" ct_venous", "CT"),
                                        ("PET_AC", "PET"), ("suv_bw", "PET"), ("FDG-PET", "PET"), ("c_t1", "MRI")])
def test_modality_kind(name, kind):
    assert modality_kind(name) == kind


@pytest.mark.parametrize("name, canonical", [
    ("t1w", "T1"), ("T1n", "T1"), ("t1c", "T1ce"), ("T1Gd", "T1ce"), ("T1-GD", "T1ce"), ("t2W", "T2"),
    ("T2f", "FLAIR"), ("t2_flair", "FLAIR"), ("T2-FLAIR", "FLAIR"), ("t2 flair", "FLAIR"), ("CTres", "CT"),
    ("suv", "PET"), ("ADC", "MRI"), ("", "MRI")])
def test_lookup_is_by_alias_case_and_separator_insensitive(name, canonical):
    assert modality(name).name == canonical


def test_modality_key_joins_aliases_not_prefixes():
    assert modality_key("T1c") == modality_key("t1-gd") == modality_key("T1ce")
    assert modality_key("CT_venous") != modality_key("CT_arterial") != modality_key("CT")
    assert modality_key("dwi") != modality_key("adc")  # unknown names stay themselves, not "generic MRI"


def test_roles():
    assert lesion_index(["T1", "T2f"]) == 1  # the old cli rule ("flair" in the name) missed T2f
    assert lesion_index(["T1", "T2", "T2-FLAIR"]) == 2 and lesion_index(["CT", "PET", "T2w"]) == 2
    assert lesion_index(["CT", "SUV"]) == 1 and lesion_index(["a", "b"]) == 0
    assert uptake_index(["CT", "PET_AC"]) == 1 and uptake_index(["T1", "T2"]) is None
    assert empty_reference_policy(["SUV", "CT"]) == "exclude" and empty_reference_policy(["T1"]) == "one_if_both_empty"


def test_register_refuses_a_taken_name_or_a_bad_value(monkeypatch):
    monkeypatch.setattr(modalities, "KINDS", dict(modalities.KINDS))
    with pytest.raises(ValueError, match=r"'t2f'.*already denote 'FLAIR'"):
        register(Modality("DarkFluid", "MRI", modalities.ZSCORE, aliases=("T2f",)))
    with pytest.raises(ValueError, match="family 'SPECT'"):
        register(Modality("SPECT", "SPECT", modalities.ZSCORE))
    with pytest.raises(ValueError, match="another normaliser's name"):
        register(Modality("ADC", "MRI", Normalizer("CTNormalization", modalities.NO_NORMALIZATION.forward,
                                                    explain=str)))


def _adc_scale(image, mask, props, use_mask):
    """Toy scheme: ADC is quantitative (mm^2/s), kept un-centred like PET: / the dataset's foreground median."""
    scale = props["median"]
    return image / scale, {"mean": 0.0, "std": scale}


ADC = Modality("ADC", "MRI", Normalizer("ADCNormalization", _adc_scale, dataset_inverse=lambda p: {"mean": 0.0,
                                                                                                   "std": p["median"]},
                                        explain=lambda p: f"ADC / {p['median']:.3g} (foreground median)"),
               aliases=("adc_map", "dwi_adc"), lesion_rank=3)


@pytest.fixture
def toy_kind(monkeypatch):
    """The registry with one more kind, ADC (one ``register`` call), for this test only."""
    monkeypatch.setattr(modalities, "KINDS", dict(modalities.KINDS))
    return register(ADC)


def test_a_new_kind_is_one_entry(toy_kind):
    from plans.planner import plan

    assert modality("ADC-map") is toy_kind and modality_kind("dwi_adc") == "MRI" and lesion_index(["T1", "adc"]) == 1
    image = np.array([0.0, 0.5, 2.0], np.float32)
    out, params = normalize_channel(image, "ADCNormalization", None, {"median": 0.5}, use_mask=False)
    np.testing.assert_allclose(out, [0.0, 1.0, 4.0])
    np.testing.assert_allclose(denormalize_channel(out, params, "ADCNormalization"), image)
    props = {"mean": 1.0, "std": 2.0, "median": 0.8, "min": 0.0, "max": 5.0, "percentile_00_5": 0.1,
             "percentile_99_5": 4.0}
    fingerprint = {"spacings": [[1.0, 1.0, 1.0]] * 3, "shapes_after_cropping": [[60, 70, 80]] * 3,
                   "shapes_before_cropping": [[100, 100, 100]] * 3, "modality_kinds": ["MRI", "MRI"],
                   "foreground_intensity_properties_per_channel": {"0": props, "1": props},
                   "nonzero_intensity_properties_per_channel": {"0": props, "1": props}}
    config = plan(fingerprint, DatasetJson({"0": "T1", "1": "ADC"}, {"background": 0, "lesion": 1}, 3),
                  "Dataset903_Adc").configuration("3d_fullres")
    assert config.normalization_schemes == ["ZScoreNormalization", "ADCNormalization"]
    assert config.use_mask_for_norm == [True, False]
    assert "1 (ADC): ADC / 0.8 (foreground median)" in config.extra["explanation"]["normalization_schemes"]


def test_a_new_kind_plans_preprocesses_trains_and_predicts(toy_kind, tmp_path, monkeypatch):
    """plan -> preprocess -> train (one translation step) -> predict of a T1 + ADC dataset (one process: spawned
    workers would not see a kind registered here); the synthesised ADC is written in ADC units (the kind's
    dataset-level inverse)."""
    from pirl_pipeline.cli.plan_and_preprocess import main
    from pirl_pipeline.file_io import load_json
    from pirl_pipeline.inference.export import dataset_level_normalization
    from plans.plans_manager import Plans
    from tests.synthetic import write_raw_dataset

    monkeypatch.setenv("PIRL_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("PIRL_preprocessed", str(tmp_path / "pre"))
    monkeypatch.setenv("PIRL_results", str(tmp_path / "results"))
    write_raw_dataset(tmp_path / "raw", 903, "Adc", num_cases=2, shape=(16, 18, 20), channels={"0": "T1", "1": "ADC"})
    assert main(["-d", "903", "-np", "1"]) == 0
    out = tmp_path / "pre" / "Dataset903_Adc"
    plans = Plans.load(out / "PIRLPlans.json")
    assert plans.configuration("3d_fullres").normalization_schemes == ["ZScoreNormalization", "ADCNormalization"]
    median = plans.foreground_intensity_properties_per_channel["1"]["median"]
    props = load_json(out / "pirl_plans_3d_fullres" / "case000.json")
    assert props["normalization"][1] == {"mean": 0.0, "std": median}
    data = np.load(out / "pirl_plans_3d_fullres" / "case000.npy")
    assert data[1].max() > 1.5 and data[1].min() == 0.0  # divided by the median, un-centred, background 0
    assert dataset_level_normalization(plans, 1, "ADCNormalization") == {"mean": 0.0, "std": median}
    from pirl_pipeline.cli.predict import main as predict_main
    from pirl_pipeline.cli.train import main as train_main
    from pirl_pipeline.data.image_io import read_array

    assert train_main(["903", "3d_fullres", "translate", "-f", "0", "-tr", "DynUNetTranslateTrainer", "--patch-size",
                       "32", "32", "32", "--epochs", "1", "--iters", "1", "--val-iters", "1", "--batch-size", "1",
                       "-npa", "0", "-device", "cpu", "--set", "augment=false", "val_volumes=false"]) == 0
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "case000_0000.nii.gz").symlink_to(tmp_path / "raw" / "Dataset903_Adc" / "imagesTr" / "case000_0000.nii.gz")
    assert predict_main(["-i", str(inputs), "-o", str(tmp_path / "preds"), "-d", "903", "-t", "translate",
                         "-tr", "DynUNetTranslateTrainer", "-f", "0", "-np", "1"]) == 0
    adc, _ = read_array(tmp_path / "preds" / "case000_0001.nii.gz")
    assert np.isfinite(adc).all() and adc.shape == (16, 18, 20)
