"""PIRLObjective (Algorithm 1 step): switches, optimisation scheme, determinism, overfit check."""

import copy
import json

import pytest
import torch

from pirl_pipeline.losses import TABLE7, PIRLLossConfig, PIRLObjective
from pirl_pipeline.losses.objective import TERMS
from pirl_pipeline.networks import PIRLNet

PATCH = (64, 32, 32)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _setup(seed=0, modalities=2, **config):
    torch.manual_seed(seed)
    config = {"views": 1} | config
    net = PIRLNet(modalities, modalities, PATCH, feature_size=12, depths=(1, 1, 1, 1), window_size=4, proj_dim=32,
                  use_prior=config.get("prior", True))  # fmt: skip
    objective = PIRLObjective.for_model(net, PIRLLossConfig(**config))
    images = torch.randn(1, modalities, *PATCH)
    mask = (torch.rand(1, 1, *PATCH) > 0.3).float()
    return net, objective, images, mask


def test_table7_rows():
    assert PIRLLossConfig.table7(6).enabled() == ["contrastive", "equivariance", "invariance", "decomposition"]
    row5 = PIRLLossConfig.table7(5, temperature=0.5)
    assert row5.prior and not row5.equivariance and row5.temperature == 0.5
    assert not any(TABLE7[r]["prior"] for r in (1, 2, 3))
    config = PIRLLossConfig.table7(2, weights={"invariance": 0.5})
    config.augmentation.cuboids = 1
    assert PIRLLossConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_configuration_errors():
    net, objective, images, mask = _setup(prior=False)
    with pytest.raises(ValueError, match="use_prior"):
        PIRLObjective.for_model(net, PIRLLossConfig(views=1))(net, images, mask)
    with pytest.raises(ValueError, match="outputs"):
        objective(net, torch.randn(1, 3, *PATCH))
    with pytest.raises(ValueError, match="at least one"):
        PIRLObjective(
            PIRLLossConfig(contrastive=False, equivariance=False, invariance=False, decomposition=False), PATCH
        )


def test_full_step_batch_one():
    net, objective, images, mask = _setup()
    result = objective(net, images, mask)
    assert set(result.terms) == {"contrastive", "equivariance", "invariance", "decomposition"}
    assert result.terms["contrastive"] > 0  # real signal at batch size 1
    assert sorted(result.order) == [0, 1] and result.loss.requires_grad
    total = sum(result.terms.values())  # default weights 1
    assert torch.allclose(result.loss.detach(), total)
    assert int(objective.contrastive.queue_ptr) == 2  # one query per modality enqueued


def test_ablation_switches_drop_terms():
    net, objective, images, mask = _setup(equivariance=False, decomposition=False, prior=False)
    result = objective(net, images, mask, backward=lambda loss: loss.backward())
    assert set(result.terms) == {"contrastive", "invariance"}
    assert net.out.conv.conv.weight.grad is None  # decoder skipped without L_decom
    assert net.equivariance_head.fc.weight.grad is None


def test_per_modality_backward_equals_one_backward():
    """The documented scheme: per-modality backward passes accumulate exactly the gradient of the sum."""
    net, objective, images, mask = _setup(view_grad=True)
    twin, twin_objective = copy.deepcopy(net), copy.deepcopy(objective)
    torch.manual_seed(5)
    streamed = objective(net, images, mask, backward=lambda loss: loss.backward())
    torch.manual_seed(5)
    whole = twin_objective(twin, images, mask)
    whole.loss.backward()
    assert torch.allclose(streamed.loss, whole.loss.detach(), rtol=1e-5)
    for (name, p), q in zip(net.named_parameters(), twin.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-7), name


def test_determinism_under_seed():
    results = []
    for _ in range(2):
        net, objective, images, mask = _setup(seed=11)
        result = objective(net, images, mask, backward=lambda loss: loss.backward())
        results.append((result, net.prior.grad.clone()))
    (a, grad_a), (b, grad_b) = results
    assert a.order == b.order and torch.equal(a.loss, b.loss) and torch.equal(grad_a, grad_b)


def test_algorithm1_step_overfits_a_fixed_input():
    """20 optimiser steps on one fixed subject must lower the loss measured with fixed randomness."""
    net, objective, images, mask = _setup()

    def evaluate():
        queue, rng = copy.deepcopy(objective.state_dict()), torch.get_rng_state()
        torch.manual_seed(123)
        with torch.no_grad():
            result = objective(net, images, mask)
        objective.load_state_dict(queue)
        torch.set_rng_state(rng)
        return result

    before = evaluate()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    for _ in range(20):
        optimizer.zero_grad(set_to_none=True)
        objective(net, images, mask, backward=lambda loss: loss.backward())
        optimizer.step()
    after = evaluate()
    assert after.loss < 0.7 * before.loss
    assert after.terms["decomposition"] < 0.8 * before.terms["decomposition"]
    assert after.terms["equivariance"] < before.terms["equivariance"]


def test_every_objective_term_has_a_config_weight_and_a_switch():
    from pirl_pipeline.trainer_config import ABLATIONS, TrainerConfig
    from pirl_pipeline.training.pretrainer import loss_config_from

    for term in TERMS:  # a new term in the objective needs exactly one more thing: its w_<term> field
        assert hasattr(TrainerConfig(task="pretrain"), f"w_{term}") and term in ABLATIONS
    config = loss_config_from(TrainerConfig(task="pretrain", w_equivariance=0.5, disabled=["invariance"]))
    assert config.weights["equivariance"] == 0.5 and not config.invariance and config.equivariance
