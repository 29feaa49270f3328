import json

import numpy as np
import pytest

from pirl_pipeline.data.dataset_json import RawCase, list_cases, load_dataset_json
from pirl_pipeline.errors import PirlInputError
from tests.synthetic import write_image, write_raw_dataset


@pytest.fixture
def dataset(tmp_path):
    return write_raw_dataset(tmp_path, num_cases=2, shape=(8, 9, 10))


def test_loads_valid_dataset_and_lists_cases(dataset):
    dj = load_dataset_json(dataset)
    assert dj.num_channels == 4 and dj.label_values == {0, 1, 2} and not dj.has_regions
    cases = list_cases(dataset, dj)
    assert [c.name for c in cases] == ["case000", "case001"]
    assert len(cases[0].images) == 4 and cases[0].label.name == "case000.nii.gz"


def test_regions_need_class_order(dataset):
    d = json.loads((dataset / "dataset.json").read_text())
    d["labels"] = {"background": 0, "whole": [1, 2], "core": 1}
    (dataset / "dataset.json").write_text(json.dumps(d))
    with pytest.raises(PirlInputError, match="regions_class_order"):
        load_dataset_json(dataset)
    d["regions_class_order"] = [2, 1]
    (dataset / "dataset.json").write_text(json.dumps(d))
    dj = load_dataset_json(dataset)
    assert dj.has_regions and dj.regions() == [[1, 2], [1]] and dj.label_values == {0, 1, 2}


@pytest.mark.parametrize("content, message", [
    (None, "dataset.json is missing"),
    ("{not json", "invalid JSON"),
    ('{"labels": {"background": 0}}', "missing key"),
    ('{"channel_names": {"1": "T1"}, "labels": {"background": 0}, "numTraining": 1, "file_ending": ".nii.gz"}',
     "keys must be 0"),
    ('{"channel_names": {"0": "T1"}, "labels": {"tumour": 1}, "numTraining": 1, "file_ending": ".nii.gz"}',
     "background"),
    ('{"channel_names": {"0": "T1"}, "labels": {"background": 0}, "numTraining": 1, "file_ending": "nii"}',
     "file_ending"),
])
def test_bad_dataset_json(tmp_path, content, message):
    if content is not None:
        (tmp_path / "dataset.json").write_text(content)
    with pytest.raises(PirlInputError, match=message) as err:
        load_dataset_json(tmp_path)
    assert "dataset.json" in str(err.value)


def test_missing_channel_is_named(dataset):
    (dataset / "imagesTr" / "case001_0002.nii.gz").unlink()
    with pytest.raises(PirlInputError, match=r"case001.*missing channel.*case001_0002\.nii\.gz"):
        list_cases(dataset, load_dataset_json(dataset))


def test_wrong_file_ending_and_unknown_channel(dataset):
    dj = load_dataset_json(dataset)
    write_image(np.zeros((4, 4, 4), np.float32), dataset / "imagesTr" / "case000_0009.nii.gz")
    with pytest.raises(PirlInputError, match="channel 0009 is not declared"):
        list_cases(dataset, dj)
    (dataset / "imagesTr" / "case000_0009.nii.gz").unlink()
    dj.file_ending = ".nrrd"
    with pytest.raises(PirlInputError, match="does not follow CASE_XXXX.nrrd"):
        list_cases(dataset, dj)


def test_empty_images_and_missing_label(dataset):
    dj = load_dataset_json(dataset)
    (dataset / "labelsTr" / "case001.nii.gz").unlink()
    with pytest.raises(PirlInputError, match="no label for case.*case001"):
        list_cases(dataset, dj)
    for f in (dataset / "imagesTr").iterdir():
        f.unlink()
    with pytest.raises(PirlInputError, match="no images"):
        list_cases(dataset, dj)


def test_subset_listing_for_prediction(dataset):
    (dataset / "imagesTr" / "case000_0001.nii.gz").unlink()
    cases = list_cases(dataset, load_dataset_json(dataset), require_all_channels=False)
    assert [p.name[-11:] for p in cases[0].images] == ["0000.nii.gz", "0002.nii.gz", "0003.nii.gz"]
    assert cases[0].channels == (0, 2, 3) and cases[1].channels == (0, 1, 2, 3)


def test_allow_missing_channels_is_declared_validated_and_saved(dataset, tmp_path):
    (dataset / "imagesTr" / "case000_0001.nii.gz").unlink()
    d = json.loads((dataset / "dataset.json").read_text())
    with pytest.raises(PirlInputError, match='missing channel.*case000_0001.*"allow_missing_channels": true'):
        list_cases(dataset, load_dataset_json(dataset))
    (dataset / "dataset.json").write_text(json.dumps({**d, "allow_missing_channels": True}))
    dj = load_dataset_json(dataset)
    assert dj.allow_missing_channels and "allow_missing_channels" not in dj.extra
    cases = list_cases(dataset, dj)
    assert [c.channels for c in cases] == [(0, 2, 3), (0, 1, 2, 3)] and cases[0].label.name == "case000.nii.gz"
    dj.save(tmp_path / "saved")
    assert load_dataset_json(tmp_path / "saved").allow_missing_channels
    complete = {**d, "allow_missing_channels": False}
    (dataset / "dataset.json").write_text(json.dumps(complete))
    assert "allow_missing_channels" not in load_dataset_json(dataset).to_dict()  # complete datasets: as before
    (dataset / "dataset.json").write_text(json.dumps({**d, "allow_missing_channels": 1}))
    with pytest.raises(PirlInputError, match="dataset.json: allow_missing_channels must be true or false, got 1"):
        load_dataset_json(dataset)


def test_raw_case_channels_default_to_a_complete_case(tmp_path):
    assert RawCase("a", (tmp_path / "a_0000.nii.gz", tmp_path / "a_0001.nii.gz")).channels == (0, 1)
    with pytest.raises(ValueError, match="do not match"):
        RawCase("a", (tmp_path / "a_0000.nii.gz",), channels=(0, 2))


def test_the_whole_lesion_target_is_found_by_one_rule_whatever_the_spelling():
    from pirl_pipeline.data.dataset_json import whole_target

    assert whole_target(["tumor core", "whole tumor", "enhancing tumor"]) == "whole tumor"
    assert whole_target(["Whole_Tumour", "tumour core"]) == "Whole_Tumour"
    assert whole_target(["lesion"]) is None


def test_an_input_folder_of_another_dataset_must_number_its_channels_as_the_model(dataset, tmp_path):
    """Same contrasts per index (aliases allowed) pass; another order is refused with both names; a folder
    outside any dataset is not checked."""
    from pirl_pipeline.data.dataset_json import check_input_channels

    dj = load_dataset_json(dataset)
    check_input_channels(dataset / "imagesTr", dj)
    other = tmp_path / "other"
    (other / "imagesTr").mkdir(parents=True)
    names = dict(dj.channel_names)
    d = json.loads((dataset / "dataset.json").read_text())
    assert names["1"] == "T1ce"
    (other / "dataset.json").write_text(json.dumps({**d, "channel_names": {**names, "1": "T1Gd"}}))  # an alias
    check_input_channels(other / "imagesTr", dj)
    swapped = {**names, "0": names["1"], "1": names["0"]}
    (other / "dataset.json").write_text(json.dumps({**d, "channel_names": swapped}))
    with pytest.raises(PirlInputError, match=rf"other/dataset.json: its channels are not the model's \(0: {names['1']} "
                                             rf"vs {names['0']}; 1: {names['0']} vs {names['1']}\)"):
        check_input_channels(other / "imagesTr", dj)
    (tmp_path / "loose").mkdir()
    check_input_channels(tmp_path / "loose", dj)
