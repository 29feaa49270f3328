"""Representation health (evaluation/health.py): each metric tells a bypassed, a collapsed and a healthy toy
PIRLNet apart, and the prior metrics tell a uniform attention from one that attends."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pirl_pipeline.evaluation.health import HEALTH_KEYS, representation_health, spread
from pirl_pipeline.networks import PIRLNet

TINY = {"feature_size": 12, "depths": (1, 1, 1, 1), "proj_dim": 16, "window_size": 4}
PATCH = (64, 64, 64)
SUBJECTS = 3

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def patches() -> torch.Tensor:
    """(3 subjects, 2 modalities, 64^3): smooth subject-specific anatomy; modality 2 = 0.8 x modality 1 + noise."""
    g = torch.Generator().manual_seed(1)
    anatomy = torch.nn.functional.avg_pool3d(torch.randn(SUBJECTS, 1, *PATCH, generator=g), 9, 1, 4) * 5
    return torch.cat([anatomy, 0.8 * anatomy + 0.05 * torch.randn(SUBJECTS, 1, *PATCH, generator=g)], dim=1)


def net(**kwargs) -> PIRLNet:
    torch.manual_seed(0)
    return PIRLNet(2, 2, PATCH, **TINY, **kwargs)


def healthy() -> PIRLNet:
    """The decoder's skips are zero: its output is a function of X_h' alone."""
    network = net()
    real = network._skips
    network._skips = lambda x, hidden: [s * 0 for s in real(x, hidden)]
    return network


def bypassed() -> PIRLNet:
    """encoder10 (the decoder's only door to X_h') outputs zeros: the skips decide everything."""
    network = net()
    network.encoder10.forward = lambda x: torch.zeros(x.shape[0], 16 * 12, *x.shape[2:])
    return network


def collapsed() -> PIRLNet:
    """X_h' is the same constant for every subject and modality."""
    network = net()
    with torch.no_grad():
        network.prior_fusion.fuse.weight.zero_()
        network.prior_fusion.fuse.bias.fill_(0.3)
    return network


@pytest.fixture(scope="module")
def health(patches) -> dict[str, dict[str, float]]:
    return {name: representation_health(build(), patches)
            for name, build in (("healthy", healthy), ("bypassed", bypassed), ("collapsed", collapsed))}


def test_every_key_is_reported(health):
    assert all(set(h) == set(HEALTH_KEYS) for h in health.values())


def test_swap_tells_a_decoder_that_reads_x_h_from_one_that_bypasses_it(health):
    assert health["healthy"]["health_swap"] == pytest.approx(1.0)  # the output is a function of X_h' alone
    assert health["bypassed"]["health_swap"] == 0.0
    assert health["collapsed"]["health_swap"] == 0.0  # every X_h' is the same: swapping changes nothing


def test_spread_and_retrieval_tell_collapse_from_subject_structure(health):
    assert health["collapsed"]["health_spread"] == 0.0
    assert health["collapsed"]["health_retrieval"] == pytest.approx(1 / SUBJECTS)  # tied: chance exactly
    for name in ("healthy", "bypassed"):  # the anatomy differs between subjects, the modalities agree
        assert health[name]["health_spread"] > 1.5
        assert health[name]["health_retrieval"] == 1.0
    assert health["collapsed"]["health_spread_z"] > 1.5  # z, before the prior, is intact


def test_spread_is_free_of_a_shared_component_and_of_scale():
    rng = np.random.default_rng(0)
    subjects = rng.standard_normal((4, 1, 50))
    e = subjects + 0.1 * rng.standard_normal((4, 3, 50))
    shifted = 100 + 0.01 * e  # a huge shared component (e.g. after a LayerNorm'd bias), tiny spread
    assert spread(shifted) == pytest.approx(spread(e))
    assert spread(e) > 5
    no_structure = rng.standard_normal((40, 4, 200))
    assert spread(no_structure) == pytest.approx(0.5, abs=0.05)  # sqrt(1/M)
    assert math.isnan(spread(e[:, :1]))


def test_prior_metrics_tell_uniform_attention_from_attention_that_attends(patches):
    dot, cosine = (representation_health(net(prior_attention=a), patches) for a in ("dot", "cosine"))
    assert dot["health_prior_entropy"] > 0.95  # the reference's dot product: near uniform
    assert cosine["health_prior_entropy"] < 0.8
    assert dot["health_prior_share"] < 0.01 < cosine["health_prior_share"]
    no_prior = representation_health(net(use_prior=False), patches)
    assert math.isnan(no_prior["health_prior_entropy"]) and math.isnan(no_prior["health_prior_share"])


def test_health_leaves_the_network_in_its_mode(patches):
    network = net().train()
    representation_health(network, patches[:2, :1])
    assert network.training
    with pytest.raises(ValueError, match="S>=2"):
        representation_health(network, patches[:1])
