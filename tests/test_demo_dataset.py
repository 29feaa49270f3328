"""pirl_make_demo_dataset: simulated contrasts on the MNI152 anatomy shipped by nilearn."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from dataset_conversion import demo_brain
from dataset_conversion.brats import BRATS_LABELS, CHANNEL_NAMES, REGIONS_CLASS_ORDER
from dataset_conversion.common import RawDatasetWriter
from dataset_conversion.demo_brain import load_template, main, simulate_subject
from pirl_pipeline.data.dataset_json import list_cases, load_dataset_json
from pirl_pipeline.data.integrity import load_case
from pirl_pipeline.errors import PirlInputError

T1, T1CE, T2, FLAIR = range(4)
NCR, ED, ET = 1, 2, 3


@pytest.fixture(autouse=True)
def template_files():
    folder = demo_brain.template_folder()
    if not (folder / demo_brain.TEMPLATE.format("t1")).is_file():
        pytest.skip(f"MNI152 template not found in {folder}")


def subject(seed, downsample):
    return simulate_subject(load_template(downsample), np.random.default_rng([seed, 0, 0]))


def test_same_seed_same_subject_other_seed_other_subject():
    images, label = subject(0, 4)
    again_images, again_label = subject(0, 4)
    other_images, _ = subject(1, 4)
    assert all(np.array_equal(a, b) for a, b in zip(images, again_images))
    assert np.array_equal(label, again_label)
    assert not np.array_equal(images[T1], other_images[T1])


def test_full_size_subject_anatomy_and_contrasts():
    images, label = subject(0, 1)
    brain = images[T1] > 0
    assert all(np.array_equal(image > 0, brain) for image in images)  # skull-stripped: 0 outside, >0 inside
    corners = np.argwhere(brain)
    assert np.all(corners.max(0) - corners.min(0) + 1 >= 96)  # 96^3 patches fit inside the brain's box
    assert set(np.unique(label)) == {0, NCR, ED, ET} and not np.any(label[~brain])

    def median(channel, region):
        return np.median(images[channel][region])

    healthy = brain & (label == 0)
    assert median(T1CE, label == ET) > 1.3 * median(T1CE, healthy)  # enhancing rim
    assert median(T1CE, label == NCR) < median(T1CE, label == ET)  # dark necrotic core
    assert median(FLAIR, label == ED) > 1.3 * median(FLAIR, healthy)  # oedema bright on FLAIR ...
    assert median(T2, label == ED) > median(T2, healthy)  # ... and T2
    assert median(T1, label == ED) < median(T1, healthy)  # and dark-ish on T1


def test_cli_writes_a_pipeline_ready_dataset(pirl_raw, run_cli):
    assert run_cli(main, ["-n", 2, "--downsample", 4])[0] == 0
    out = pirl_raw / "Dataset500_DemoBrain"
    dj = load_dataset_json(out)
    assert dj.channel_names == {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"} and dj.num_training == 2
    assert dj.has_regions and dj.label_values == {0, 1, 2, 3}
    cases = list_cases(out, dj)
    loaded = load_case(cases[0], dj.label_values)
    assert loaded.data.shape == (4, 47, 58, 49) and loaded.geometry.spacing == (4.0, 4.0, 4.0)
    assert sorted(p.name for p in (out / "labelsTs").iterdir()) == ["DemoBrainTest_000.nii.gz",
                                                                     "DemoBrainTest_001.nii.gz"]
    assert len(list((out / "imagesTs").iterdir())) == 8
    image = sitk.ReadImage(str(out / "imagesTr" / "DemoBrain_000_0000.nii.gz"))
    assert image.GetPixelID() == sitk.sitkInt16 and image.GetDirection()[::4] == (-1.0, -1.0, 1.0)
    code, line = run_cli(main, ["-n", 2, "--downsample", 4])
    assert code == 2 and "already exists" in line


def test_nan_in_a_simulated_image_writes_nothing(pirl_raw):
    template = load_template(4)
    images, label = subject(0, 4)
    images[FLAIR] = np.where(label == ET, np.nan, images[FLAIR]).astype(np.float32)
    writer = RawDatasetWriter(500, "DemoBrain", CHANNEL_NAMES, BRATS_LABELS, regions_class_order=REGIONS_CLASS_ORDER)
    with pytest.raises(PirlInputError, match="DemoBrain_000_0003.nii.gz: contains .* NaN"), writer:
        writer.add_arrays("DemoBrain_000", images, template.geometry, label)
    assert not any(pirl_raw.iterdir())


def test_num_test_adds_held_out_cases_and_keeps_the_first_ones(pirl_raw, run_cli):
    """--num_test 3: three held-out cases; DemoBrainTest_000 is the same subject as with the default 2."""
    assert run_cli(main, ["-n", 1, "--downsample", 4, "--num_test", 3, "-d", 510])[0] == 0
    assert run_cli(main, ["-n", 1, "--downsample", 4, "-d", 511])[0] == 0
    more, default = pirl_raw / "Dataset510_DemoBrain", pirl_raw / "Dataset511_DemoBrain"
    assert sorted(p.name for p in (more / "labelsTs").iterdir()) == [f"DemoBrainTest_{i:03d}.nii.gz" for i in range(3)]
    assert len(list((default / "labelsTs").iterdir())) == 2
    for folder in ("labelsTs", "imagesTs"):
        name = "DemoBrainTest_000.nii.gz" if folder == "labelsTs" else "DemoBrainTest_000_0003.nii.gz"
        a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(d / folder / name))) for d in (more, default))
        assert np.array_equal(a, b)
    code, line = run_cli(main, ["-n", 1, "--downsample", 4, "--num_test", -1, "-d", 512])
    assert code == 2 and "--num_test" in line
