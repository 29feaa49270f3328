"""The representation fixes of issue 23, each a TrainerConfig field with a "paper" preset: skip dropout, the
subject-contrastive term, subject ids in the contrastive queue, cosine prior attention, and the fusions."""
from __future__ import annotations

import pytest
import torch

from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.losses.contrastive import InfoNCELoss
from pirl_pipeline.losses.objective import PIRLObjective
from pirl_pipeline.losses.subject_contrastive import SubjectContrastiveLoss
from pirl_pipeline.networks import PIRLNet
from pirl_pipeline.networks.modalities import scatter_max, single_modality, split_slots
from pirl_pipeline.trainer_config import REPRESENTATION_FIXES, VARIANTS, TrainerConfig
from pirl_pipeline.training.pretrainer import loss_config_from

TINY = {"feature_size": 12, "depths": (1, 1, 1, 1), "proj_dim": 16, "window_size": 4}
PATCH = (64, 64, 64)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- configuration ------------------------------------------------------------------------------
def test_the_paper_preset_switches_every_fix_off_and_a_field_overrides_its_variant():
    paper = TrainerConfig().with_overrides(["variant=paper"])
    assert paper.representation_fixes() == VARIANTS["paper"]
    assert paper.representation_fixes() != TrainerConfig().representation_fixes()
    mixed = TrainerConfig().with_overrides(["variant=paper", "fusion=max"])
    assert mixed.resolved("fusion") == "max" and mixed.resolved("prior_attention") == "dot"
    # what the checkpoint's config records rebuilds the same run
    assert TrainerConfig.from_dict(mixed.to_dict()).representation_fixes() == mixed.representation_fixes()
    assert set(REPRESENTATION_FIXES) == set(VARIANTS["default"])


def test_a_fix_missing_from_a_saved_config_reads_as_off():
    """A config saved before a fix existed (saved configs write every fix out) ran without it: the paper value,
    not today's default."""
    saved = TrainerConfig().pinned().to_dict()
    del saved["fusion"], saved["skip_dropout"]
    restored = TrainerConfig.from_dict(saved)
    assert (restored.resolved("fusion"), restored.resolved("skip_dropout")) == ("mean", 0.0)
    assert restored.resolved("prior_attention") == "cosine"  # what it recorded stays


@pytest.mark.parametrize("setting", ["variant=best", "fusion=sum", "prior_attention=flash", "skip_dropout=1.5",
                                     "subject_contrastive=-1", "health_subjects=1",
                                     "decoder_skips=6"])
def test_bad_fix_values_are_refused_in_one_line(setting):
    with pytest.raises(PirlInputError, match=setting.split("=")[0]):
        TrainerConfig().with_overrides([setting])


def test_the_pretraining_objective_takes_the_resolved_fixes():
    default, paper = (loss_config_from(TrainerConfig(variant=v)) for v in ("default", "paper"))
    assert (paper.skip_dropout, paper.subject_contrastive, paper.queue_subject_ids) == (0.0, 0.0, False)
    assert default.skip_dropout > 0 and default.subject_contrastive > 0 and default.queue_subject_ids


# ---- losses -------------------------------------------------------------------------------------
def test_the_contrastive_queue_never_offers_a_subject_its_own_projections():
    torch.manual_seed(0)
    loss = InfoNCELoss(8, temperature=0.2, queue_size=4)
    views = torch.nn.functional.normalize(torch.randn(2, 1, 8), dim=-1)
    loss.enqueue(views[0].repeat(4, 1), ids=torch.tensor([7, 7, 7, 7]))  # the query itself, four times
    own = loss(views, ids=torch.tensor([7]))
    blind = loss(views)  # the reference: the whole queue counts, the subject's copies included
    assert own < blind
    assert own == pytest.approx(0.0, abs=1e-6)  # nothing but the subject itself is queued: no negatives
    assert loss.queue_ids.tolist() == [7, 7, 7, 7]


def test_old_checkpoints_without_queue_ids_still_load():
    loss = InfoNCELoss(8, queue_size=4)
    state = {k: v for k, v in loss.state_dict().items() if k != "queue_ids"}
    fresh = InfoNCELoss(8, queue_size=4)
    fresh.load_state_dict(state)
    assert fresh.queue_ids.tolist() == [-1] * 4


def test_the_subject_term_pulls_a_subject_to_its_own_anchor_and_pushes_it_from_others():
    loss = SubjectContrastiveLoss(dim=4, temperature=0.1)
    anchors = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    ids = torch.tensor([10, 20])
    near_own = loss(torch.tensor([[0.9, 0.1, 0, 0]]), torch.tensor([10]), anchors, ids)
    near_other = loss(torch.tensor([[0.1, 0.9, 0, 0]]), torch.tensor([10]), anchors, ids)
    assert near_own < 0.5 and near_other > 1.0
    assert loss(torch.randn(1, 4), torch.tensor([30]), anchors, ids) is None  # no anchor yet: no term
    query = torch.tensor([[0.5, 0.5, 0, 0]], requires_grad=True)
    loss(query, torch.tensor([10]), anchors, ids).backward()
    assert query.grad[0, 0] < 0 < query.grad[0, 1]  # descent moves it toward its own anchor, away from 20's


def test_the_subject_term_is_centred_so_a_shared_component_does_not_hide_subjects():
    loss = SubjectContrastiveLoss(dim=3, temperature=0.1)
    shared = torch.tensor([100.0, 0, 0])
    anchors = shared + torch.tensor([[0, 1.0, 0], [0, -1.0, 0]])
    loss.enqueue(anchors, torch.tensor([1, 2]))  # sets the centre to the shared component
    assert loss.center.tolist() == pytest.approx(shared.tolist())
    value = loss(shared + torch.tensor([[0, 0.8, 0.1]]), torch.tensor([1]), anchors, torch.tensor([1, 2]))
    assert value < 0.01  # un-centred, all three vectors would have cosine ~1 and the loss would be ~log 2


def test_the_subject_term_pushes_shrunken_subjects_apart_whatever_their_direction():
    loss = SubjectContrastiveLoss(dim=2, temperature=0.1, margin=1.0)
    anchors, ids = torch.tensor([[0.01, 0.0], [0.0, 0.01]]), torch.tensor([1, 2])
    query = torch.tensor([[0.011, 0.0]], requires_grad=True)  # its direction names subject 1, but all are tiny
    value = loss(query, torch.tensor([1]), anchors, ids)
    assert value > 0.9  # the margin: subject 2 is 0.01 away, not 1
    value.backward()
    assert query.grad[0, 0] < 0  # descent moves it away from subject 2 (+x and -y) ...
    assert query.grad[0, 1] > 0  # ... whatever the cosines say


def test_the_objective_reports_the_subject_term_only_when_it_is_on():
    torch.manual_seed(0)
    images = torch.randn(2, 2, *PATCH)
    for variant, expect in (("default", True), ("paper", False)):
        config = TrainerConfig(variant=variant)
        net = PIRLNet(2, 2, PATCH, **TINY, prior_attention=config.resolved("prior_attention"),
                      fusion=config.resolved("fusion"))
        objective = PIRLObjective.for_model(net, loss_config_from(config))
        result = objective(net, images, subjects=["a", "b"])
        assert ("subject" in result.terms) is expect
        assert torch.isfinite(result.loss)
    assert objective.subject is None


# ---- network ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def joint() -> PIRLNet:
    torch.manual_seed(0)
    return PIRLNet(2, 2, PATCH, **TINY, fusion="joint", prior_attention="cosine").eval()


def test_dropped_skips_leave_the_decoder_x_h_alone(joint):
    x = torch.randn(2, 2, *PATCH)
    with torch.no_grad():
        out = joint(x, drop_skips=torch.tensor([True, False]), heads=False)
        _, x_h, skips = joint.encode(x)
        alone = joint.decode(x_h, [s * 0 for s in skips])
        full = joint.decode(x_h, skips)
    torch.testing.assert_close(out.output[0], alone[0])
    torch.testing.assert_close(out.output[1], full[1])


def test_joint_fusion_feeds_the_available_modalities_in_their_channels_with_the_missing_zeroed(joint):
    x = torch.randn(2, 2, *PATCH)
    available = torch.tensor([[True, False], [True, True]])
    with torch.no_grad():
        fused = joint(x, available=available, heads=False)
        direct = joint(x * available[:, :, None, None, None], heads=False)
        rows = joint(x, available=available, per_modality=True, heads=False)
    torch.testing.assert_close(fused.output, direct.output)
    assert fused.x_h_modalities is None  # without per_modality no extra encoder passes
    assert rows.x_h_modalities.shape[0] == 3 and rows.owner.tolist() == [0, 1, 1]
    slot = single_modality(x, 1, 2, "joint")
    assert torch.equal(slot[:, 1], x[:, 1]) and not slot[:, 0].any()
    inputs, owner = split_slots(x, available)
    assert owner.tolist() == [0, 1, 1] and not inputs[0, 1].any() and torch.equal(inputs[2, 1], x[1, 1])


def test_max_fusion_is_not_diluted_by_a_weaker_modality():
    strong, weak = torch.tensor([[3.0, 1.0]]), torch.tensor([[0.0, -2.0]])
    fused = scatter_max(torch.cat([strong, weak]), torch.tensor([0, 0]), 2)
    assert fused[0].tolist() == [3.0, 1.0]  # the mean would read [1.5, -0.5]
    assert fused[1].tolist() == [0.0, 0.0]  # no rows: 0


def test_max_fusion_runs_through_the_network():
    torch.manual_seed(0)
    net = PIRLNet(2, 2, PATCH, **TINY, fusion="max").eval()
    x = torch.randn(1, 2, *PATCH)
    with torch.no_grad():
        both = net(x, available=[0, 1], heads=False)
        one = net(x, available=[0], heads=False)
    assert both.output.shape == one.output.shape == (1, 2, *PATCH)
    assert not torch.allclose(both.output, one.output)


def test_paper_defaults_build_the_reference_network():
    net = PIRLNet(2, 2, PATCH, **TINY)
    assert net.config["fusion"] == "mean" and net.config["prior_attention"] == "dot"
    assert net.config["decoder_skips"] == 5 == VARIANTS["paper"]["decoder_skips"]
    assert not hasattr(net.prior_fusion, "logit_scale")  # old checkpoints load strictly
    with pytest.raises(ValueError, match="fusion"):
        PIRLNet(2, 2, PATCH, **TINY, fusion="sum")


def test_a_joint_stem_is_mapped_by_modality_name_not_summed():
    from pirl_pipeline.networks.transfer import STEM_KEYS, adapt_state, head_rows_by_name

    torch.manual_seed(0)
    source = PIRLNet(2, 2, PATCH, **TINY, fusion="joint").state_dict()  # channels FLAIR, T1
    target = PIRLNet(3, 2, PATCH, **TINY, fusion="joint").state_dict()  # channels T1, T2, FLAIR
    rows = head_rows_by_name(["T1", "T2", "FLAIR"], ["FLAIR", "T1"])
    assert rows == [1, None, 0]
    adapted = adapt_state(target, source, stem_rows=rows)
    assert not adapted.problems
    for key in STEM_KEYS:
        torch.testing.assert_close(adapted.state[key][:, 0], source[key][:, 1])  # T1 <- T1
        torch.testing.assert_close(adapted.state[key][:, 2], source[key][:, 0])  # FLAIR <- FLAIR
        torch.testing.assert_close(adapted.state[key][:, 1], target[key][:, 1])  # T2: fresh
    assert any("by modality" in note for note in adapted.notes)


def test_a_repeated_input_stem_is_still_summed_over_the_channels():
    from pirl_pipeline.networks.transfer import adapt_state

    source = PIRLNet(4, 2, PATCH, **TINY).state_dict()  # fusion "mean": every channel holds the same modality
    target = PIRLNet(2, 2, PATCH, **TINY).state_dict()
    stem = "swinViT.patch_embed.proj.weight"
    adapted = adapt_state(target, source)
    torch.testing.assert_close(adapted.state[stem], source[stem].sum(1, keepdim=True).expand(-1, 2, -1, -1, -1) / 2)


def test_a_decoder_without_its_deepest_skip_reads_that_level_from_x_h_alone():
    torch.manual_seed(0)
    full = PIRLNet(2, 2, PATCH, **TINY).eval()
    cut = PIRLNet(2, 2, PATCH, **TINY, decoder_skips=4).eval()
    cut.load_state_dict(full.state_dict())  # the same weights: a paper checkpoint loads either way
    x = torch.randn(2, 2, *PATCH)
    with torch.no_grad():
        _, x_h, skips = cut.encode(x)
        _, _, all_skips = full.encode(x)
        assert not skips[4].any() and all_skips[4].any()  # hidden[3] (LN(x3), what z holds) is not read
        assert all(torch.equal(a, b) for a, b in zip(skips[:4], all_skips[:4]))
        # what varies the deepest level now comes through X_h' only: swapping it changes more of the output
        own, swapped = cut.decode(x_h, skips), cut.decode(x_h.roll(1, 0), skips)
        own_full, swapped_full = full.decode(x_h, all_skips), full.decode(x_h.roll(1, 0), all_skips)
    assert (swapped - own).norm() > (swapped_full - own_full).norm()
    assert TrainerConfig().resolved("decoder_skips") == 5  # measured: no preset gains from it (experiments/table11/DIAGNOSTICS.md)
    with pytest.raises(ValueError, match="decoder_skips"):
        PIRLNet(2, 2, PATCH, **TINY, decoder_skips=6)

