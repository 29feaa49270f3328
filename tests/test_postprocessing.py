"""Post-processing chosen on validation cases (nnU-Net's largest-component step): choice, record, application."""
import numpy as np

from pirl_pipeline.data.dataset_json import parse_dataset_json
from pirl_pipeline.evaluation.postprocessing import candidates, determine_postprocessing
from pirl_pipeline.file_io import load_json
from pirl_pipeline.fold_folder import FoldFolder
from pirl_pipeline.inference.postprocessing import (
    Postprocessing,
    keep_largest,
    load_postprocessing,
    save_postprocessing,
)
from tests.synthetic import ellipsoid

SHAPE = (20, 24, 22)
LABELS = parse_dataset_json({"channel_names": {"0": "FLAIR"}, "labels": {"background": 0, "edema": 1, "core": 2},
                             "numTraining": 1, "file_ending": ".nii.gz"}, "test")
REGIONS = parse_dataset_json({"channel_names": {"0": "FLAIR"}, "labels": {"background": 0, "whole tumour": [1, 2, 3],
                              "tumour core": [1, 3], "enhancing tumour": 3}, "regions_class_order": [2, 1, 3],
                              "numTraining": 1, "file_ending": ".nii.gz"}, "test")


def lesion(center, radii=(4, 4, 4)) -> np.ndarray:
    return ellipsoid(SHAPE, center, radii)


def pairs_of(predictions, references) -> dict:
    return {f"case_{i}": (pred.astype(np.int16), ref.astype(np.int16))
            for i, (pred, ref) in enumerate(zip(predictions, references))}


def test_keep_largest_removes_the_other_components_of_the_given_labels_only():
    seg = np.zeros(SHAPE, np.int16)
    seg[lesion((10, 8, 8))] = 1
    seg[lesion((10, 8, 8), (2, 2, 2))] = 2  # inside the big component
    seg[lesion((10, 19, 18), (1, 1, 1))] = 2  # a far island of label 2
    out = keep_largest(seg, [1, 2])
    assert (out[seg != 0] != 0).sum() < (seg != 0).sum() and out[10, 19, 18] == 0 and out[10, 8, 8] == 2
    assert np.array_equal(keep_largest(seg, [1]), seg)  # label 1 alone is one component
    assert seg[10, 19, 18] == 2  # the input is not modified


def test_a_step_is_kept_only_where_it_raises_the_validation_dice(tmp_path):
    ref = lesion((10, 8, 8)).astype(np.int16)
    island = ref.copy()
    island[lesion((10, 19, 17), (2, 2, 2))] = 1  # a false-positive island far from the lesion
    result = determine_postprocessing(pairs_of([island, island], [ref, ref]), LABELS)
    assert result.keep_largest == [[1, 2]] and result.cases == ["case_0", "case_1"]
    first = result.decisions[0]
    assert first["accepted"] and first["dice_after"] > first["dice_before"]
    # two true lesions, both predicted: keeping the largest would delete one, so nothing is kept
    two = ref.copy()
    two[lesion((10, 19, 17), (2, 2, 2))] = 1
    result = determine_postprocessing(pairs_of([two], [two]), LABELS)
    assert result.keep_largest == [] and not any(d["accepted"] for d in result.decisions)
    assert Postprocessing.from_dict(load_json(save_postprocessing(result, FoldFolder(tmp_path, 0)))).decisions == result.decisions


def test_candidates_are_the_foreground_then_each_plain_label_and_regions_get_the_foreground_only():
    assert candidates(LABELS) == [[1, 2], [1], [2]]
    assert candidates(REGIONS) == [[1, 2, 3]]


def test_an_ensemble_applies_the_steps_every_fold_kept(tmp_path):
    save_postprocessing(Postprocessing([[1, 2], [2]]), FoldFolder(tmp_path, 0))
    save_postprocessing(Postprocessing([[1, 2]]), FoldFolder(tmp_path, "1"))
    assert (tmp_path / "fold_1" / "postprocessing.json").is_file()  # the on-disk name pirl_predict reads
    assert load_postprocessing(tmp_path, ["0", "1"]).keep_largest == [[1, 2]]
    assert load_postprocessing(tmp_path, ["0"]).keep_largest == [[1, 2], [2]]
    assert load_postprocessing(tmp_path, ["0", "2"]) is None  # fold 2 never chose: no post-processing
