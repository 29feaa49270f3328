"""Patch loading for the trainers: shapes, padding, oversampling, augmentation, seeding, ranks, workers."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pirl_pipeline.cli.plan_and_preprocess import main as plan_and_preprocess
from pirl_pipeline.dataloading import AugmentationConfig, PatchAugmenter, make_train_loader, make_val_loader
from pirl_pipeline.dataloading.augmentation import grid_bounding_box, reframe_grid
from pirl_pipeline.dataloading.sampling import crop_padded
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.preprocessing.preprocessor import class_locations
from plans.plans_manager import Plans
from tests.synthetic import ellipsoid, write_raw_dataset

SPATIAL_ONLY = {"p_rotation": 1.0, "p_scaling": 1.0, "mirror_axes": (), "p_gaussian_noise": 0, "p_gaussian_blur": 0,
                "p_brightness": 0, "p_contrast": 0, "p_low_resolution": 0, "p_gamma": 0, "p_inverted_gamma": 0}


def write_case(folder: Path, name: str, data: np.ndarray, seg: np.ndarray) -> None:
    """A preprocessed case in the on-disk format of the preprocessor (seg (z, y, x) with -1 outside)."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{name}.npy", data.astype(np.float32))
    np.save(folder / f"{name}_seg.npy", seg[None].astype(np.int8))
    classes = [int(c) for c in np.unique(seg) if c > 0]
    props = {"class_locations": class_locations(seg, classes, np.random.default_rng(0))}
    (folder / f"{name}.json").write_text(json.dumps(props))


def body_case(shape=(40, 44, 36), channels=2, lesion_radius=2.0, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Ellipsoid body (seg 0, -1 outside, image 0 outside) with a small class-1 lesion off-centre."""
    rng = np.random.default_rng(seed)
    body = ellipsoid(shape, np.array(shape) / 2, np.array(shape) * 0.45)
    seg = np.where(body, 0, -1)
    lesion = ellipsoid(shape, np.array(shape) * 0.3, (lesion_radius,) * 3) & body
    seg[lesion] = 1
    data = np.where(body, 1.0 + rng.standard_normal((channels, *shape)), 0.0)
    return data.astype(np.float32), seg


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory) -> tuple[Path, Plans]:
    """Three synthetic 4-modality cases through the real plan_and_preprocess step."""
    root = tmp_path_factory.mktemp("loader")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIRL_raw", str(root / "raw"))
        mp.setenv("PIRL_preprocessed", str(root / "pre"))
        write_raw_dataset(root / "raw", 931, name="Loader", num_cases=3, shape=(36, 40, 34))
        assert plan_and_preprocess(["-d", "931", "-np", "1"]) == 0
    plans = Plans.load(root / "pre" / "Dataset931_Loader" / "PIRLPlans.json")
    return root / "pre" / "Dataset931_Loader" / plans.configuration("3d_fullres").data_identifier, plans


@pytest.fixture(scope="module")
def tiny_fg(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    for i in range(2):
        write_case(folder, f"c{i}", *body_case(lesion_radius=1.0, seed=i))
    return folder


def take(stream, n: int) -> list[dict]:
    with stream:
        return [next(stream) for _ in range(n)]


def test_batches_from_preprocessed_data(preprocessed):
    folder, plans = preprocessed
    config = plans.configuration("3d_fullres")
    (batch,) = take(make_train_loader(folder, ["case000", "case001"], config, seed=0), 1)
    assert batch["data"].dtype == torch.float32 and batch["target"].dtype == torch.int8
    assert batch["data"].shape == (config.batch_size, 4, *config.patch_size)  # all modalities kept
    assert batch["target"].shape == (config.batch_size, 1, *config.patch_size)
    assert set(batch["keys"]) <= {"case000", "case001"} and len(batch["keys"]) == config.batch_size
    assert set(torch.unique(batch["target"]).tolist()) <= {-1, 0, 1, 2}
    (small,) = take(make_train_loader(folder, None, config, batch_size=3, patch_size=(16, 32, 16), seed=0), 1)
    assert small["data"].shape == (3, 4, 16, 32, 16)


def test_small_image_is_padded_and_centred(tmp_path):
    data, seg = body_case(shape=(10, 12, 9))
    write_case(tmp_path, "small", data, seg)
    (batch,) = take(make_train_loader(tmp_path, None, aug_config=AugmentationConfig.off(), batch_size=2,
                                      patch_size=(16, 16, 16), seed=0), 1)
    pad = [(0, 0), (3, 3), (2, 2), (3, 4)]  # image centred in the patch
    for b in range(2):
        assert np.array_equal(batch["data"][b].numpy(), np.pad(data, pad, constant_values=0))
        assert np.array_equal(batch["target"][b, 0].numpy(), np.pad(seg, pad[1:], constant_values=-1))
        assert batch["patch_lower"][b].tolist() == [-3, -2, -3]


def test_augmentation_off_gives_crops_of_stored_arrays(preprocessed):
    folder, _ = preprocessed
    for batch in take(make_train_loader(folder, None, aug_config=AugmentationConfig.off(), batch_size=2,
                                        patch_size=(16, 24, 20), seed=3), 3):
        for b, name in enumerate(batch["keys"]):
            data = np.load(folder / f"{name}.npy")
            seg = np.load(folder / f"{name}_seg.npy")
            lower = batch["patch_lower"][b]
            assert np.array_equal(batch["data"][b].numpy(), crop_padded(data, lower, (16, 24, 20), 0))
            assert np.array_equal(batch["target"][b].numpy(), crop_padded(seg, lower, (16, 24, 20), -1))


@pytest.mark.parametrize("aug", ["off", "spatial"])
def test_oversampling_finds_tiny_foreground(tiny_fg, aug):
    lesion = body_case(lesion_radius=1.0)[1] == 1
    assert lesion.sum() < 10  # a few voxels in a 40x44x36 volume
    config = AugmentationConfig.off() if aug == "off" else AugmentationConfig(**SPATIAL_ONLY)
    batches = take(make_train_loader(tiny_fg, None, aug_config=config, batch_size=2, patch_size=(16, 16, 16),
                                     seed=1), 15)
    forced = np.concatenate([b["oversampled"] for b in batches])
    has_fg = np.concatenate([(b["target"] == 1).flatten(1).any(1).numpy() for b in batches])
    assert forced.sum() == 10  # exactly 1/3 of the 30 samples
    assert has_fg[forced].all() and has_fg.mean() >= 1 / 3
    none = take(make_train_loader(tiny_fg, None, aug_config=AugmentationConfig.off(), batch_size=2,
                                  patch_size=(16, 16, 16), seed=1, oversample_foreground=0.0), 15)
    assert not any(b["oversampled"].any() for b in none)


def test_seeded_streams_are_reproducible_and_ranks_differ(preprocessed):
    folder, _ = preprocessed
    kw = {"batch_size": 2, "patch_size": (16, 16, 16), "seed": 7}
    state = np.random.get_state()[1].copy(), torch.random.get_rng_state().clone()
    first = take(make_train_loader(folder, None, **kw), 4)
    assert np.array_equal(np.random.get_state()[1], state[0])  # caller's global RNGs untouched
    assert torch.equal(torch.random.get_rng_state(), state[1])
    again = take(make_train_loader(folder, None, **kw), 4)
    for a, b in zip(first, again):
        assert torch.equal(a["data"], b["data"]) and torch.equal(a["target"], b["target"])
        assert a["keys"] == b["keys"]
    assert not torch.equal(first[0]["data"], first[1]["data"])
    rank1 = take(make_train_loader(folder, None, rank=1, world_size=2, **kw), 4)
    assert not any(torch.equal(a["data"], b["data"]) for a, b in zip(first, rank1))
    resumed = take(make_train_loader(folder, None, start_batch=2, **kw), 2)  # resume: continues the stream
    assert all(torch.equal(a["data"], b["data"]) for a, b in zip(first[2:], resumed))
    with pytest.raises(PirlInputError):
        make_train_loader(folder, None, rank=2, world_size=2, **kw)


def test_spatial_transform_keeps_outside_mask_label(tiny_fg):
    for mode in ("nearest", "bilinear"):
        config = AugmentationConfig(**SPATIAL_ONLY, elastic=True, p_elastic=1.0, seg_mode=mode)
        batches = take(make_train_loader(tiny_fg, None, aug_config=config, batch_size=2, patch_size=(32, 32, 32),
                                         seed=5), 3)
        target = torch.cat([b["target"] for b in batches])
        image = torch.cat([b["data"] for b in batches])
        assert set(torch.unique(target).tolist()) <= {-1, 0, 1} and (target == -1).any() and (target == 0).any()
        outside = (target == -1).expand_as(image)
        # nearest seg vs bilinear image only disagree on the body boundary: outside the mask the image is ~0
        assert (image[outside].abs() < 1e-3).float().mean() > 0.9
        assert (image[~outside].abs() > 1e-3).float().mean() > 0.9


def test_minimal_read_box_matches_sampling_a_large_box():
    """The PatchAugmenter reads only the grid's bounding box; sampling from a much larger box is the same."""
    data, seg = body_case(shape=(60, 64, 56))
    aug = PatchAugmenter((24, 24, 24), AugmentationConfig(**SPATIAL_ONLY, elastic=True, p_elastic=1.0))
    lower = np.array([18, 20, 16])
    np.random.seed(0)
    torch.manual_seed(0)
    params = aug.spatial.get_parameters(image=aug._frame)
    grid = params["grid"].clone()
    box_lower, box_size = grid_bounding_box(grid, aug.patch_size)
    assert all(s < 60 for s in box_size)
    results = []
    for lo, size in ((box_lower, box_size), (np.array([-18, -20, -16]), (60, 64, 56))):
        params["grid"] = grid.clone()
        reframe_grid(params["grid"], aug.patch_size, lo, size)
        crop = {"image": torch.from_numpy(crop_padded(data, lower + lo, size, 0)),
                "segmentation": torch.from_numpy(crop_padded(seg[None], lower + lo, size, -1).astype(np.int8))}
        results.append(aug.spatial.apply(crop, **params))
    assert torch.allclose(results[0]["image"], results[1]["image"], atol=1e-4)
    assert (results[0]["segmentation"] != results[1]["segmentation"]).float().mean() < 1e-3


def test_workers_give_the_same_stream_and_shut_down(preprocessed):
    folder, _ = preprocessed
    kw = {"batch_size": 2, "patch_size": (16, 16, 16), "seed": 11}
    reference = take(make_train_loader(folder, None, **kw), 4)
    stream = make_train_loader(folder, None, num_workers=2, **kw)
    batches = [next(stream) for _ in range(4)]
    processes = list(stream._augmenter._processes)
    assert len(processes) == 2 and all(p.is_alive() for p in processes)
    stream.close()
    assert not any(p.is_alive() for p in processes)
    stream.close()  # idempotent
    assert [b["batch_index"] for b in batches] == [0, 1, 2, 3]
    assert all(torch.equal(a["data"], b["data"]) for a, b in zip(reference, batches))
    with make_train_loader(folder, None, num_workers=2, ordered=False, **kw) as unordered:
        indices = sorted(next(unordered)["batch_index"] for _ in range(4))
    assert len(set(indices)) == 4


def test_validation_patches_fixed_and_split_over_ranks(preprocessed):
    folder, _ = preprocessed
    val = make_val_loader(folder, ["case000", "case001"], batch_size=3, patch_size=(16, 16, 16))
    batches = list(val)
    assert len(val) == len(batches) == 2  # centre + foreground patch per case, 4 patches
    assert [b["keys"] for b in batches] == [["case000", "case000", "case001"], ["case001"]]
    assert all(torch.equal(a["data"], b["data"]) for a, b in zip(batches, val))  # same every time
    centre = batches[0]
    data = np.load(folder / "case000.npy")
    expected = [(s - 16) // 2 for s in data.shape[1:]]
    assert centre["patch_lower"][0].tolist() == expected and not centre["oversampled"][0]
    assert centre["oversampled"][1] and (centre["target"][1] > 0).any()
    shares = [make_val_loader(folder, ["case000", "case001"], batch_size=3, patch_size=(16, 16, 16), rank=r,
                              world_size=2).items for r in range(2)]
    assert sorted(map(str, shares[0] + shares[1])) == sorted(map(str, val.items))


def test_augmentation_config_round_trip_and_checks():
    config = AugmentationConfig(rotation_deg=(-15, 15), elastic=True, mirror_axes=(1, 2))
    assert AugmentationConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(PirlInputError):
        AugmentationConfig(p_rotation=2)
    with pytest.raises(PirlInputError):
        AugmentationConfig.from_dict({"rotation": 3})
    with pytest.raises(PirlInputError):
        AugmentationConfig(seg_mode="cubic")
