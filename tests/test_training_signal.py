"""Regression tests of the training signal (issue 11's five defects), each failing on the old behaviour:

1. pre-training mirrored the axes of Φ's rotation plane (a 180° rotation: the equivariance target k was
   indistinguishable from k + 2);
2. intensity augmentation reached the image targets (decomposition, translation);
3. validation batches entered the contrastive memory queue;
4. fine-tuning L_inv always anchored on the first modality (channel 0 never got an invariance gradient);
5. no class weights in Algorithm 2's weighted cross-entropy.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from pirl_pipeline.data.dataset_json import load_dataset_json
from pirl_pipeline.dataloading import AugmentationConfig, PatchAugmenter
from pirl_pipeline.fold_folder import FoldFolder
from pirl_pipeline.losses.geometric import GeometricTransforms
from pirl_pipeline.losses.invariance import InvarianceLoss
from pirl_pipeline.losses.objective import PIRLLossConfig, PIRLObjective
from pirl_pipeline.losses.segmentation import class_weights_from_counts
from pirl_pipeline.networks import PIRLNet
from pirl_pipeline.trainer_config import TrainerConfig
from pirl_pipeline.training.base_trainer import RunContext
from pirl_pipeline.training.registry import build_trainer
from plans.plans_manager import Plans
from tests.synthetic import pirl_roots, write_raw_dataset

torch.set_num_threads(1)
NO_INTENSITY = {"p_gaussian_noise": 0, "p_gaussian_blur": 0, "p_brightness": 0, "p_contrast": 0,
                "p_low_resolution": 0, "p_gamma": 0, "p_inverted_gamma": 0}
NO_SPATIAL = {"p_rotation": 0, "p_scaling": 0}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A tiny raw + preprocessed 2-channel dataset with labels (3 cases)."""
    from pirl_pipeline.cli.plan_and_preprocess import main as plan_main

    root = tmp_path_factory.mktemp("signal")
    with pirl_roots(root):
        write_raw_dataset(root / "raw", 931, "Signal", num_cases=3, shape=(40, 44, 42),
                          channels={"0": "T1", "1": "FLAIR"})
        assert plan_main(["-d", "931", "-np", "1"]) == 0
        yield root


def make_trainer(root: Path, task: str, trainer: str, **overrides):
    folder = root / "pre" / "Dataset931_Signal"
    plans = Plans.load(folder / "PIRLPlans.json")
    data = folder / plans.configuration("3d_fullres").data_identifier
    cases = sorted(p.stem for p in data.glob("*.json"))
    config = TrainerConfig(task=task, trainer=trainer, epochs=1, iters_per_epoch=1, val_iters=1,
                           patch_size=[64, 64, 64], feature_size=12, batch_size=1, num_workers=0, **overrides)
    ctx = RunContext(plans, "3d_fullres", load_dataset_json(folder), data, FoldFolder(root / "res" / trainer, 0), cases[:2],
                     cases[2:])
    return build_trainer(trainer, ctx, config, None)


def tiny_net(**kw) -> PIRLNet:
    torch.manual_seed(0)
    return PIRLNet(in_channels=2, out_channels=2, patch_size=(64, 64, 64), feature_size=12, window_size=4, **kw)


# ---- 1. mirroring must not overlap Φ ---------------------------------------------------------------------
def test_mirroring_both_plane_axes_is_a_phi_rotation():
    """Why the fix is needed: flipping both axes of the rotation plane equals phi_2 (180°)."""
    phi = GeometricTransforms((64, 64, 64))
    x = torch.randn(1, 1, 64, 64, 64)
    assert torch.equal(torch.flip(x, dims=phi.plane), phi.apply(x, 2))
    assert phi.independent_mirror_axes((0, 1, 2)) == (2,)  # only the axis normal to the plane
    assert GeometricTransforms((64, 96, 128)).independent_mirror_axes((0, 1, 2)) == ()  # Φ = axis flips


def test_pretraining_stream_mirrors_only_the_normal_axis(dataset):
    trainer = make_trainer(dataset, "pretrain", "PIRLPretrainer")
    assert trainer.augmentation().mirror_axes == (2,)
    stream = trainer.make_train_stream()
    try:
        assert stream.loader.augmenter.config.mirror_axes == (2,)
        assert "target_image" in next(stream)  # and L_decom gets un-augmented targets (defect 2)
    finally:
        stream.close()


# ---- 2. intensity augmentation on the input only ----------------------------------------------------------
def test_clean_targets_have_the_geometry_but_not_the_intensity_augmentation():
    rng = np.random.default_rng(0)
    data = rng.random((2, 32, 32, 32), dtype=np.float32) + 1
    seg = np.zeros((1, 32, 32, 32), np.int8)
    config = AugmentationConfig(**NO_SPATIAL, **{**NO_INTENSITY, "p_brightness": 1.0}, mirror_axes=(2,))
    aug = PatchAugmenter((32, 32, 32), config, clean_targets=True)
    flipped = 0
    for seed in range(6):
        np.random.seed(seed)
        torch.manual_seed(seed)
        image, _, clean = aug(data, seg, np.zeros(3, int))
        mirrored = torch.equal(clean, torch.from_numpy(data).flip(3))
        assert mirrored or torch.equal(clean, torch.from_numpy(data))  # geometry only
        flipped += mirrored
        ratio = image / clean  # brightness: one factor per channel, the same geometry
        assert not torch.allclose(image, clean) and torch.allclose(ratio, ratio.flatten(1)[:, :1, None, None])
    assert 0 < flipped < 6
    assert PatchAugmenter((32, 32, 32), config)(data, seg, np.zeros(3, int))[2] is None


def test_decomposition_reconstructs_the_targets_not_the_augmented_inputs():
    net = tiny_net()
    objective = PIRLObjective.for_model(net, PIRLLossConfig(contrastive=False, equivariance=False, invariance=False))
    images = torch.randn(1, 2, 64, 64, 64)
    torch.manual_seed(1)
    same = objective(net, images).terms["decomposition"]
    torch.manual_seed(1)
    other = objective(net, images, targets=images + 3).terms["decomposition"]
    assert float(other) > float(same) + 1


def test_translation_trainer_asks_for_clean_targets(dataset):
    assert make_trainer(dataset, "translate", "PIRLTranslateTrainer").clean_targets
    assert not make_trainer(dataset, "seg", "PIRLSegTrainer").clean_targets


# ---- 3. the memory queue learns from training batches only ------------------------------------------------
def test_validation_does_not_enqueue():
    net = tiny_net()
    objective = PIRLObjective.for_model(net, PIRLLossConfig(decomposition=False, views=1))
    images = torch.randn(1, 2, 64, 64, 64)
    before = objective.contrastive.queue.clone()
    objective.eval()
    with torch.no_grad():
        objective(net, images)
    assert torch.equal(objective.contrastive.queue, before)
    objective.train()
    objective(net, images).loss.backward()
    assert not torch.equal(objective.contrastive.queue, before)


# ---- 4. fine-tuning L_inv in a random modality order ------------------------------------------------------
def test_every_modality_gets_an_invariance_gradient():
    loss = InvarianceLoss()
    pulled = np.zeros(3, bool)
    for seed in range(12):
        torch.manual_seed(seed)
        x_h = torch.randn(3, 4, 2, 2, 2, requires_grad=True)
        loss.across_modalities(x_h, torch.zeros(3, dtype=torch.long)).backward()
        pulled |= (x_h.grad.flatten(1).abs().sum(1) > 0).numpy()
    assert pulled.all()  # before: row 0 (channel 0) was always the detached anchor


# ---- 5. weighted cross-entropy ----------------------------------------------------------------------------
def test_class_weights_from_label_frequencies():
    # background 900, tumour 100 of 1000 voxels, a region with 1 voxel, an absent class
    weights = class_weights_from_counts([900, 100, 1, 0], 1000, max_weight=3.0)
    assert weights == pytest.approx([1.0, 3.0, 3.0, 3.0])
    assert class_weights_from_counts([0.9, 0.1], 1.0)[1] == pytest.approx(2.0)  # default clip
    assert class_weights_from_counts([500, 250], 1000, max_weight=3.0) == pytest.approx([1.0, np.sqrt(3)])


def test_seg_trainer_passes_class_weights_to_the_loss(dataset):
    trainer = make_trainer(dataset, "seg", "PIRLSegTrainer")
    weights = trainer.loss.class_weights
    assert weights is not None and len(weights) == trainer.out_channels
    assert float(weights.min()) >= 1.0 and float(weights.max()) > 1.0  # the rare tumour class weighs more
    assert make_trainer(dataset, "seg", "PIRLSegTrainer", class_weights="none").loss.class_weights is None


def test_seg_output_starts_at_the_label_prior(dataset):
    """An untrained output channel predicts its training frequency, not p = 0.5 everywhere."""
    trainer = make_trainer(dataset, "seg", "PIRLSegTrainer")
    bias = trainer.network.out.conv.conv.bias.detach()
    frequencies = torch.tensor(trainer.label_frequencies())
    assert torch.allclose(bias.softmax(0), frequencies / frequencies.sum(), atol=1e-4)  # exclusive labels


# ---- whole-volume scoring: painting as the exporter paints ------------------------------------------------
def test_nested_regions_are_painted_only_inside_their_parent():
    from pirl_pipeline.data.dataset_json import parse_dataset_json
    from pirl_pipeline.inference.export import labels_from_probabilities

    dj = parse_dataset_json({"channel_names": {"0": "FLAIR"}, "labels": {"background": 0, "whole tumour": [1, 2, 3],
                             "tumour core": [1, 3], "enhancing tumour": 3}, "regions_class_order": [2, 1, 3],
                             "numTraining": 1, "file_ending": ".nii.gz"}, "test")
    probs = np.zeros((3, 1, 1, 4))
    probs[:, 0, 0, 0] = (0.9, 0.9, 0.9)  # all on -> ET
    probs[:, 0, 0, 1] = (0.9, 0.9, 0.1)  # WT + TC -> NCR
    probs[:, 0, 0, 2] = (0.1, 0.9, 0.1)  # an undecided TC outside WT: nothing (before: NCR, counted as WT)
    probs[:, 0, 0, 3] = (0.9, 0.1, 0.9)  # ET outside TC: only WT -> ED
    assert labels_from_probabilities(probs, dj).ravel().tolist() == [3, 1, 0, 2]


def test_ddp_searches_for_unused_parameters_only_when_some_stay_unused(dataset):
    """find_unused_parameters costs a graph traversal per step: on only when a head (or the decoder) is idle."""
    assert make_trainer(dataset, "pretrain", "PIRLPretrainer").uses_all_parameters()
    assert not make_trainer(dataset, "pretrain", "PIRLPretrainer", disabled=["equivariance"]).uses_all_parameters()
    assert not make_trainer(dataset, "seg", "PIRLSegTrainer").uses_all_parameters()  # heads never run
    assert make_trainer(dataset, "seg", "SwinUNETRSegTrainer").uses_all_parameters()
