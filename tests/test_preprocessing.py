import numpy as np
import pytest

from pirl_pipeline.data.geometry import anisotropic_axis, bounding_box, crop, crop_to_nonzero, shape_for_spacing, uncrop
from pirl_pipeline.preprocessing.normalization import denormalize_channel, normalize_channel
from pirl_pipeline.preprocessing.resampling import resample


def test_crop_to_nonzero_marks_outside_mask():
    data = np.zeros((2, 10, 12, 14), np.float32)
    data[0, 2:5, 3:9, 4:6] = 1
    data[1, 6, 3, 10] = 2
    seg = np.zeros((10, 12, 14), np.uint8)
    seg[3, 4, 5] = 1
    cropped, seg_c, box = crop_to_nonzero(data, seg)
    assert box == [[2, 7], [3, 9], [4, 11]]
    assert cropped.shape == (2, 5, 6, 7)
    assert seg_c[1, 1, 1] == 1 and (seg_c == -1).sum() == (~np.any(cropped != 0, 0)).sum()
    restored = uncrop(cropped, box, data.shape[1:])
    np.testing.assert_array_equal(restored, data)


def test_bounding_box_of_empty_mask_is_everything():
    assert bounding_box(np.zeros((3, 4, 5), bool)) == [[0, 3], [0, 4], [0, 5]]
    assert crop(np.ones((2, 3, 4, 5)), [[0, 3], [1, 2], [0, 5]]).shape == (2, 3, 1, 5)


def test_zscore_on_mask_sets_background_to_zero_and_inverts():
    rng = np.random.default_rng(0)
    image = np.zeros((6, 6, 6), np.float32)
    mask = np.zeros_like(image, bool)
    mask[1:5, 1:5, 1:5] = True
    image[mask] = rng.normal(300, 40, mask.sum())
    out, params = normalize_channel(image.copy(), "ZScoreNormalization", mask, None, use_mask=True)
    assert abs(out[mask].mean()) < 1e-5 and abs(out[mask].std() - 1) < 1e-4 and (out[~mask] == 0).all()
    np.testing.assert_allclose(denormalize_channel(out, params, "ZScoreNormalization")[mask], image[mask], rtol=1e-5)


def test_ct_clips_to_dataset_percentiles_and_pet_keeps_zero():
    props = {"mean": 50.0, "std": 10.0, "percentile_00_5": -100.0, "percentile_99_5": 200.0}
    ct = np.array([-1000.0, 50.0, 1000.0], np.float32)
    out, _ = normalize_channel(ct, "CTNormalization", None, props, use_mask=False)
    np.testing.assert_allclose(out, [-15.0, 0.0, 15.0])
    pet = np.array([-1.0, 0.0, 400.0], np.float32)
    out, params = normalize_channel(pet, "PETNormalization", None, props, use_mask=False)
    np.testing.assert_allclose(out, [0.0, 0.0, 2.0])
    np.testing.assert_allclose(denormalize_channel(out, params, "PETNormalization")[1:], [0.0, 400.0])
    with pytest.raises(ValueError, match="unknown"):
        normalize_channel(ct, "Magic", None, props, use_mask=False)


def test_resample_preserves_smooth_images_and_round_trips():
    z, y, x = np.meshgrid(*(np.linspace(0, 1, n) for n in (20, 24, 28)), indexing="ij")
    smooth = (np.sin(3 * z) + np.cos(2 * y) * x).astype(np.float32)
    up = resample(smooth[None], (40, 48, 56), is_label=False)
    assert up.shape == (1, 40, 48, 56)
    back = resample(up, (20, 24, 28), is_label=False)[0]
    assert np.abs(back - smooth)[2:-2, 2:-2, 2:-2].max() < 0.02
    assert resample(smooth, smooth.shape, is_label=False) is smooth


def test_label_resampling_keeps_values_and_volume():
    seg = np.zeros((20, 20, 20), np.int16)
    seg[5:15, 5:15, 5:15] = 2
    seg[0] = -1
    up = resample(seg, (40, 40, 40), is_label=True)
    assert set(np.unique(up)) == {-1, 0, 2}
    assert abs((up == 2).sum() / 8 - (seg == 2).sum()) / (seg == 2).sum() < 0.02


def test_anisotropic_rule_uses_nearest_along_the_coarse_axis():
    assert anisotropic_axis((5.0, 1.0, 1.0)) == 0 and anisotropic_axis((2.0, 1.0, 1.0)) is None
    assert anisotropic_axis((1.0, 1.0, 1.0), (3.5, 1.0, 1.0)) == 0  # the target's coarse axis counts too
    assert anisotropic_axis((4.0, 4.0, 1.0)) is None  # two coarse axes: no separate axis (nnU-Net)
    seg = np.zeros((4, 8, 8), np.int16)
    seg[1] = 1
    seg[2] = 2
    out = resample(seg, (16, 8, 8), is_label=True, spacing=(4.0, 1.0, 1.0))
    # nearest neighbour along z: every output slice equals one input slice
    for z in range(16):
        assert any((out[z] == seg[k]).all() for k in range(4))


def test_shape_for_spacing():
    assert shape_for_spacing((100, 50, 30), (1.0, 2.0, 3.0), (2.0, 2.0, 1.5)) == (50, 50, 60)
