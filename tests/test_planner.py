import json

import numpy as np
import pytest

from pirl_pipeline.data.dataset_json import DatasetJson
from pirl_pipeline.errors import PirlInputError
from plans.planner import patch_size_for, plan, target_spacing
from plans.plans_manager import Plans


def test_target_spacing_is_median_for_isotropic_data():
    spacings = [[1.0, 1.0, 1.0], [1.2, 1.0, 1.0], [0.8, 1.0, 1.0]]
    assert target_spacing(spacings, [[100, 100, 100]] * 3) == [1.0, 1.0, 1.0]


def test_target_spacing_anisotropic_rule_takes_10th_percentile():
    spacings = np.array([[s, 0.8, 0.8] for s in (3.0, 5.0, 5.0, 6.0, 6.0)])
    shapes = [[20, 256, 256]] * 5
    assert target_spacing(spacings, shapes)[0] == pytest.approx(np.percentile([3, 5, 5, 6, 6], 10))
    # coarse spacing but not a thin stack: plain median
    assert target_spacing(spacings, [[200, 256, 256]] * 5)[0] == 5.0


@pytest.mark.parametrize("median, patch", [((200, 180, 150), [96, 96, 96]), ((70, 100, 40), [64, 96, 64]),
                                           ((90, 85, 20), [96, 96, 64])])
def test_patch_size_multiple_of_32_and_shrinks(median, patch):
    assert patch_size_for(list(median)) == patch


def _fingerprint(kinds=("MRI", "CT")):
    props = {"mean": 1.0, "std": 2.0, "median": 1.0, "min": 0.0, "max": 5.0,
             "percentile_00_5": 0.1, "percentile_99_5": 4.0}
    return {"spacings": [[1.0, 1.0, 1.0]] * 3, "shapes_after_cropping": [[60, 70, 80]] * 3,
            "shapes_before_cropping": [[100, 100, 100]] * 3, "modality_kinds": list(kinds),
            "foreground_intensity_properties_per_channel": {"0": props, "1": props},
            "nonzero_intensity_properties_per_channel": {"0": props, "1": props}}


def test_plan_round_trips_and_explains_itself(tmp_path):
    dj = DatasetJson({"0": "T1", "1": "CT"}, {"background": 0, "lesion": 1}, 3)
    plans = plan(_fingerprint(), dj, "Dataset901_X")
    config = plans.configuration("3d_fullres")
    assert config.patch_size == [64, 64, 96] and config.normalization_schemes == ["ZScoreNormalization",
                                                                                  "CTNormalization"]
    assert config.use_mask_for_norm == [True, False]
    assert "explanation" in config.network and "patch_size" in config.extra["explanation"]
    plans.save(tmp_path / "p.json")
    loaded = Plans.load(tmp_path / "p.json")
    assert loaded.to_dict() == plans.to_dict() and loaded.num_input_channels == 2
    with pytest.raises(PirlInputError, match="no configuration '2d'"):
        loaded.configuration("2d")


def test_hand_edited_plans_are_validated(tmp_path):
    dj = DatasetJson({"0": "T1", "1": "CT"}, {"background": 0}, 3)
    d = plan(_fingerprint(), dj, "Dataset901_X").to_dict()
    d["configurations"]["3d_fullres"]["patch_size"] = [96, 96, 100]
    (tmp_path / "p.json").write_text(json.dumps(d))
    with pytest.raises(PirlInputError, match=r"p\.json.*multiple of 32"):
        Plans.load(tmp_path / "p.json")
    with pytest.raises(PirlInputError, match="plans file not found"):
        Plans.load(tmp_path / "missing.json")


@pytest.mark.parametrize("edit, message", [
    (("resampling", "data_order", 2), "data_order must be one of"),
    (("resampling", "label", "nearest"), "only label interpolation"),
    (("resampling", "anisotropy_threshold", 0.5), "anisotropy_threshold must be a number > 1"),
    (("modality_kinds", 1, "MRI"), "do not follow from channel_names"),
])
def test_plans_keys_that_do_nothing_are_refused_not_ignored(edit, message):
    """Every plans key is read: a hand edit the code cannot honour is one error, not silently ignored."""
    d = plan(_fingerprint(), DatasetJson({"0": "T1", "1": "CT"}, {"background": 0}, 3), "Dataset901_X").to_dict()
    block, key, value = edit
    target = d if block == "modality_kinds" else d["configurations"]["3d_fullres"]
    target[block][key] = value
    with pytest.raises(PirlInputError, match=message):
        Plans.from_dict(d)


def test_the_resampling_block_decides_how_images_are_resampled():
    """data_order and anisotropy_threshold of the plans reach the resampling (preprocessing and export)."""
    from pirl_pipeline.preprocessing.preprocessor import preprocess_arrays

    d = plan(_fingerprint(), DatasetJson({"0": "T1", "1": "CT"}, {"background": 0}, 3), "Dataset901_X").to_dict()
    rng = np.random.default_rng(0)
    data = rng.normal(size=(2, 12, 14, 16)).astype(np.float32) + 5
    out = {}
    for order, threshold in ((3, 3.0), (0, 3.0), (3, 1.5)):
        d["configurations"]["3d_fullres"]["resampling"].update(data_order=order, anisotropy_threshold=threshold)
        d["configurations"]["3d_fullres"]["spacing"] = [2.0, 1.0, 1.0]
        plans = Plans.from_dict(d)
        out[order, threshold] = preprocess_arrays(data.copy(), None, (2.5, 1.0, 1.0), plans,
                                                  plans.configuration("3d_fullres"))[0]
    assert not np.allclose(out[3, 3.0], out[0, 3.0])  # order 0 (nearest) differs from B-spline
    # spacing ratio 2.5 (input) / 2 (target): anisotropic only below the threshold 2.5 -> z by nearest neighbour
    assert not np.allclose(out[3, 1.5], out[3, 3.0])


def test_the_plans_anisotropy_threshold_reaches_the_export_to_the_input_grid():
    """to_original_grid resamples with the threshold it is given (the predictor passes the plans')."""
    from pirl_pipeline.inference.export import to_original_grid

    rng = np.random.default_rng(1)
    array = rng.normal(size=(1, 8, 12, 12)).astype(np.float32)
    props = {"shape_after_cropping_and_before_resampling": [10, 12, 12], "bbox_used_for_cropping": [[0, 10], [0, 12],
             [0, 12]], "shape_before_cropping": [10, 12, 12], "spacing_after_resampling": [2.5, 1.0, 1.0],
             "spacing_before_resampling": [2.0, 1.0, 1.0]}
    default, low = to_original_grid(array, props, 3), to_original_grid(array, props, 3, anisotropy_threshold=1.5)
    assert default.shape == low.shape == (1, 10, 12, 12) and not np.allclose(default, low)


def test_the_plans_copies_of_dataset_json_must_equal_it(tmp_path):
    """labels, channel_names and regions_class_order in the plans are copies: an edit there is refused, not
    silently ignored (pirl_train and a rerun of planning check it)."""
    from plans.plans_manager import check_matches_dataset

    dj = DatasetJson({"0": "T1", "1": "CT"}, {"background": 0, "lesion": 1}, 3)
    plans = plan(_fingerprint(), dj, "Dataset901_X")
    check_matches_dataset(plans, dj, tmp_path / "p.json")
    plans.labels["lesion"] = 2
    with pytest.raises(PirlInputError, match=r"p\.json: the plans' labels .* dataset\.json"):
        check_matches_dataset(plans, dj, tmp_path / "p.json")
