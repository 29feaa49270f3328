"""Subjects that lack modalities: what they have is used, what they lack never reaches a loss or a gradient."""

import numpy as np
import pytest
import torch

from pirl_pipeline.dataloading.sampling import crop_image
from pirl_pipeline.losses import PIRLLossConfig, PIRLObjective
from pirl_pipeline.losses.decomposition import DecompositionLoss
from pirl_pipeline.losses.invariance import InvarianceLoss, SubjectAnchors
from pirl_pipeline.losses.translation import TranslationLoss
from pirl_pipeline.networks import PIRLNet

PATCH = (64, 32, 32)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _setup(modalities=3, batch=2):
    torch.manual_seed(0)
    net = PIRLNet(modalities, modalities, PATCH, feature_size=12, depths=(1, 1, 1, 1), window_size=4, proj_dim=32)
    objective = PIRLObjective.for_model(net, PIRLLossConfig(views=1))
    images = torch.randn(batch, modalities, *PATCH)
    mask = (torch.rand(batch, 1, *PATCH) > 0.3).float()
    return net, objective, images, mask


def _step(net, objective, images, mask, present, seed=1):
    net.zero_grad()
    objective.eval()  # no enqueue: every call sees the same (empty) memory queue
    torch.manual_seed(seed)
    result = objective(net, images, mask, present=present)
    result.loss.backward()
    return result, [p.grad.clone() if p.grad is not None else None for p in net.parameters()]


def test_all_present_is_the_complete_data_step():
    net, objective, images, mask = _setup()
    plain, plain_grads = _step(net, objective, images, mask, None)
    full, full_grads = _step(net, objective, images, mask, torch.ones(2, 3, dtype=torch.bool))
    assert torch.equal(plain.loss, full.loss) and plain.order == full.order
    assert all(torch.equal(a, b) for a, b in zip(plain_grads, full_grads) if a is not None)


def test_an_absent_modality_never_reaches_a_loss_or_a_gradient():
    net, objective, images, mask = _setup()
    present = torch.tensor([[True, False, True], [True, True, True]])
    result, grads = _step(net, objective, images, mask, present)
    garbage = images.clone()
    garbage[0, 1] = 1e3 * torch.randn(PATCH)  # subject 0 lacks modality 1: whatever is stored there is ignored
    again, again_grads = _step(net, objective, garbage, mask, present)
    assert torch.isfinite(result.loss) and torch.equal(result.loss, again.loss)
    assert set(result.terms) == {"contrastive", "equivariance", "invariance", "decomposition"}
    assert all(torch.equal(a, b) for a, b in zip(grads, again_grads) if a is not None)
    # and it is not ignored when present
    changed, _ = _step(net, objective, garbage, mask, torch.ones(2, 3, dtype=torch.bool))
    assert not torch.equal(changed.loss, result.loss)


def test_modality_no_subject_has_is_skipped_and_single_modality_subject_has_no_invariance():
    net, objective, images, mask = _setup(batch=1)
    result, _ = _step(net, objective, images, mask, torch.tensor([[False, True, False]]))
    assert result.order == [1] and "invariance" not in result.terms and torch.isfinite(result.loss)


def test_subject_anchors_compare_only_subjects_that_have_an_anchor():
    loss = InvarianceLoss()
    anchors = SubjectAnchors(3)
    a = torch.randn(2, 4, 2, 2, 2)
    assert anchors.step(loss, a, torch.tensor([True, False, True])) is None  # first modality: anchors only
    b = torch.randn(2, 4, 2, 2, 2)
    value = anchors.step(loss, b, torch.tensor([False, True, True]))  # subject 1: first; subject 2: compared
    assert torch.allclose(value, loss(b[1:], a[1:]))
    assert torch.allclose(anchors.value[2], (a[1] + b[1]) / 2) and torch.equal(anchors.value[1], b[0])


@pytest.mark.parametrize("loss", [DecompositionLoss(), TranslationLoss()])
def test_image_losses_score_only_present_target_channels(loss):
    out, target = torch.randn(2, 3, 4, 4, 4), torch.randn(2, 3, 4, 4, 4)
    mask = torch.ones(2, 1, 4, 4, 4)
    channels = torch.tensor([[True, False, True], [True, True, True]])
    garbage = target.clone()
    garbage[0, 1] = 1e6
    assert torch.equal(loss(out, target, mask, channels), loss(out, garbage, mask, channels))
    assert torch.equal(loss(out, target, mask), loss(out, target, mask, torch.ones(2, 3, dtype=torch.bool)))


def test_crop_image_zeroes_absent_channels():
    data = np.ones((3, 4, 4, 4), np.float32)
    data[1] = np.nan  # an absent channel as stored
    patch = crop_image(data, np.array([-1, 0, 0]), (4, 4, 4), 0.0, np.array([True, False, True]))
    assert np.isfinite(patch).all() and (patch[1] == 0).all() and patch[0, 1:].min() == 1


def test_random_subsets_draw_only_from_the_modalities_a_case_has():
    from pirl_pipeline.training.downstream import random_subsets

    present = torch.tensor([[True, False, True, False], [False, False, False, True]])
    torch.manual_seed(0)
    subsets = torch.cat([random_subsets(2, 4, present=present) for _ in range(200)])
    assert not (subsets & ~present.repeat(200, 1)).any() and subsets.any(1).all()
    assert {tuple(r.tolist()) for r in subsets[::2]} == {(1, 0, 0, 0), (0, 0, 1, 0), (1, 0, 1, 0)}
    torch.manual_seed(3)
    plain = random_subsets(2, 4)
    torch.manual_seed(3)
    assert torch.equal(plain, random_subsets(2, 4, present=torch.ones(2, 4, dtype=torch.bool)))
