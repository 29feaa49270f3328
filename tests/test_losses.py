"""The transform set Φ and each loss: exact inverses, zero / non-zero where they must be."""

import math

import pytest
import torch
import torch.nn.functional as F

from pirl_pipeline.losses import (
    DecompositionLoss,
    EquivarianceLoss,
    GeometricTransforms,
    InfoNCELoss,
    InvarianceLoss,
    SegmentationLoss,
    TranslationLoss,
    ViewAugmentation,
    labels_to_regions,
)


@pytest.mark.parametrize(
    ("shape", "n"), [((8, 8, 8), 4), ((8, 8, 8), 8), ((8, 4, 4), 8), ((8, 6, 4), 4), ((8, 6, 4), 8)]
)
def test_transforms_are_exact_and_distinct(shape, n):
    phi = GeometricTransforms(shape, n)
    x = torch.randn(2, 3, *shape)
    images = [phi.apply(x, t) for t in range(n)]
    for t, y in enumerate(images):
        assert y.shape == x.shape
        assert torch.equal(phi.inverse(y, t), x)
    assert all(not torch.equal(images[a], images[b]) for a in range(n) for b in range(a + 1, n))


def test_transform_plane_choice():
    assert GeometricTransforms((64, 64, 32)).plane == (2, 3)
    assert GeometricTransforms((64, 32, 32)).plane == (3, 4)
    assert GeometricTransforms((96, 64, 32)).plane is None  # flips only


def test_transform_commutes_with_the_bottleneck_grid():
    """phi on the image then pooling to the grid == pooling then phi on the grid: both frames agree."""
    phi = GeometricTransforms((64, 64, 32), 8)
    x = torch.randn(1, 2, 64, 64, 32)
    for t in range(8):
        assert torch.allclose(F.avg_pool3d(phi.apply(x, t), 32), phi.apply(F.avg_pool3d(x, 32), t), atol=1e-6)


def test_batch_transforms_per_sample():
    phi = GeometricTransforms((8, 8, 8))
    x, t = torch.randn(3, 1, 8, 8, 8), torch.tensor([0, 1, 3])
    y = phi.apply_batch(x, t)
    assert torch.equal(y[1], phi.apply(x[1:2], 1)[0]) and torch.equal(phi.inverse_batch(y, t), x)


def test_view_augmentation_deterministic_and_changes_input():
    x = torch.randn(2, 1, 16, 16, 16)
    torch.manual_seed(3)
    a = ViewAugmentation()(x)
    torch.manual_seed(3)
    b = ViewAugmentation()(x)
    assert torch.equal(a, b) and a.shape == x.shape and not torch.allclose(a, x)
    assert (a == 0).any()  # cuboid drop-out


def test_infonce_batch_one_is_positive_and_prefers_aligned_views():
    torch.manual_seed(0)
    loss = InfoNCELoss(dim=16, temperature=0.2, queue_size=32)
    q = torch.randn(1, 1, 16)
    random_views = torch.cat([q, torch.randn(2, 1, 16)])
    aligned = torch.cat([q, q, q])
    assert loss(random_views) > 0
    assert loss(aligned) < loss(random_views)
    assert loss(aligned) > 0  # negatives still count at batch size 1


def test_infonce_gradient_and_in_batch_negatives():
    torch.manual_seed(0)
    loss = InfoNCELoss(dim=8, queue_size=4)
    views = torch.randn(2, 3, 8, requires_grad=True)
    loss(views).backward()
    assert views.grad.abs().sum() > 0
    e0 = F.one_hot(torch.tensor(0), 8).float()
    hard = e0.expand(2, 2, 8)  # (V, B, D): sample 1 looks like sample 0
    easy = torch.stack([e0, -e0]).expand(2, 2, 8)  # sample 1 is opposite to sample 0
    assert loss(hard) > loss(easy)


def test_infonce_queue_fifo():
    loss = InfoNCELoss(dim=4, queue_size=3)
    loss.enqueue(torch.eye(4)[:2])
    loss.enqueue(torch.eye(4)[2:])
    assert torch.equal(loss.queue[0], torch.eye(4)[3]) and torch.equal(loss.queue[1:], torch.eye(4)[1:3])
    assert int(loss.queue_ptr) == 1


def test_equivariance_loss():
    loss = EquivarianceLoss()
    target = torch.tensor([0, 3])
    assert loss(torch.zeros(2, 4), target) == pytest.approx(math.log(4))
    assert loss(100 * F.one_hot(target, 4).float(), target) < 1e-6


def test_invariance_loss_and_running_anchor():
    loss = InvarianceLoss()
    a, b = torch.zeros(1, 2, 2, 2, 2), torch.ones(1, 2, 2, 2, 2, requires_grad=True)
    assert loss(a, a) == 0 and loss(b, a) == 1
    anchor = loss.update_anchor(None, a)
    anchor = loss.update_anchor(anchor, b)
    assert torch.equal(anchor, torch.full_like(a, 0.5)) and not anchor.requires_grad
    # across modalities: subject 0 has rows a, b (one comparison = 1), subject 1 one row (no comparison)
    rows = torch.cat([a, b, b])
    value = loss.across_modalities(rows, torch.tensor([0, 0, 1]))
    assert value == 1 and value.requires_grad
    single = loss.across_modalities(rows[:1].requires_grad_(), torch.tensor([0]))
    assert single == 0 and single.requires_grad


def test_decomposition_loss():
    loss = DecompositionLoss(foreground_weight=10)
    x = torch.randn(1, 2, 4, 4, 4)
    assert loss(x, x) == 0
    out = x.clone()
    out[..., 0, 0, 0] += 1  # error inside the mask on both channels
    mask = torch.zeros(1, 1, 4, 4, 4)
    mask[..., :2, :, :] = 1
    expected = 10 * 2 / (2 * 32) + 2 / (2 * 64)
    assert loss(out, x, mask) == pytest.approx(expected)
    out2 = x.clone()
    out2[..., 3, 3, 3] += 1  # error in the background only
    assert loss(out2, x, mask) == pytest.approx(2 / (2 * 64))


def test_translation_loss_ignores_background():
    x = torch.zeros(1, 1, 4, 4, 4)
    mask = torch.zeros_like(x)
    mask[..., :2, :, :] = 1
    out = x.clone()
    out[..., 3, :, :] = 5  # background
    assert TranslationLoss("l1")(out, x, mask) == 0
    out[..., 0, 0, 0] = 2  # foreground
    assert TranslationLoss("l1")(out, x, mask) == pytest.approx(2 / 32)
    assert TranslationLoss("mse")(out, x, mask) == pytest.approx(4 / 32)


def test_labels_to_regions_brats():
    label = torch.tensor([0, 1, 2, 3]).view(1, 1, 4, 1, 1).float()
    regions = labels_to_regions(label, [(1, 2, 3), (1, 3), (3,)])
    assert regions[0, :, :, 0, 0].tolist() == [[0, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 1]]


@pytest.mark.parametrize("regions", [None, [(1, 2, 3), (1, 3), (3,)]])
def test_segmentation_loss(regions):
    torch.manual_seed(0)
    label = torch.randint(0, 4, (2, 1, 8, 8, 8))
    classes = 4 if regions is None else 3
    target = (
        F.one_hot(label[:, 0], 4).permute(0, 4, 1, 2, 3).float()
        if regions is None
        else labels_to_regions(label, regions)
    )
    perfect = 20 * (2 * target - 1)
    loss = SegmentationLoss(regions, class_weights=[1.0] * classes)
    good, bad = loss(perfect, label), loss(torch.randn(2, classes, 8, 8, 8), label)
    assert good < 1e-3 < bad
    weighted = SegmentationLoss(regions, class_weights=[1.0] + [5.0] * (classes - 1))
    assert weighted(torch.zeros(2, classes, 8, 8, 8), label) != loss(torch.zeros(2, classes, 8, 8, 8), label)
