"""Representation metrics: the math on hand-made embeddings (personalised, collapsed, shuffled) and the
plumbing through a tiny real PIRLNet (centre patch, one modality at a time, checkpoint loading)."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from pirl_pipeline.checkpoint import save_checkpoint
from pirl_pipeline.evaluation.representation import (
    METRICS,
    center_patch,
    checkpoint_representation,
    embed_cases,
    embedding_metrics,
    load_pirl_network,
    random_init_like,
    representation_metrics,
    write_representation_results,
)
from pirl_pipeline.networks import PIRLNet
from pirl_pipeline.networks.modalities import repeat_modality

TINY = {"feature_size": 12, "depths": (1, 1, 1, 1), "proj_dim": 16, "window_size": 4}
PATCH = (64, 64, 64)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def network() -> PIRLNet:
    torch.manual_seed(0)
    return PIRLNet(2, 2, PATCH, **TINY).eval()


def personalised(n: int, m: int, d: int = 64, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, d)) + noise * rng.standard_normal((n, m, d))


@pytest.mark.parametrize(("n", "m"), [(2, 2), (5, 3), (10, 4)])
def test_a_personalised_invariant_embedding_is_retrieved_perfectly(n, m):
    exact = embedding_metrics(np.repeat(personalised(n, m), m, axis=1))
    assert exact["retrieval_top1"] == 1 and exact["retrieval_top1_centered"] == 1
    assert exact["within_var"] == 0 and exact["variance_ratio"] == 0  # 1e-33 of float rounding counts as 0
    assert exact["cosine_same_subject"] == pytest.approx(1)
    noisy = embedding_metrics(personalised(n, m, noise=0.05))
    assert noisy["retrieval_top1"] == 1 and noisy["variance_ratio"] < 0.01
    assert noisy["retrieval_chance"] == 1 / n and noisy["variance_ratio_no_structure"] == m


def test_a_collapsed_embedding_sits_at_chance_without_division_errors():
    shared = np.random.default_rng(1).standard_normal(32)
    same = embedding_metrics(np.broadcast_to(shared, (4, 3, 32)))
    assert same["retrieval_top1"] == pytest.approx(1 / 4) and same["retrieval_top1_centered"] == pytest.approx(1 / 4)
    assert same["between_var"] == 0 and same["within_var"] == 0 and math.isnan(same["variance_ratio"])
    assert same["cosine_other_subjects"] == pytest.approx(1) and same["between_std_relative"] == 0
    # each modality its own point, the subject ignored: all variance is within subjects
    per_modality = np.random.default_rng(2).standard_normal((1, 3, 32))
    ignored = embedding_metrics(np.broadcast_to(per_modality, (5, 3, 32)))
    assert ignored["variance_ratio"] == math.inf and ignored["retrieval_top1"] == pytest.approx(1 / 5)
    zeros = embedding_metrics(np.zeros((3, 2, 8)))
    assert zeros["retrieval_top1"] == pytest.approx(1 / 3) and math.isnan(zeros["between_std_relative"])


def test_a_prior_dominated_embedding_shows_in_the_collapse_check():
    """X_h' = large shared O + small subject part: cosines across subjects near 1, relative spread small;
    retrieval after centring still finds the subjects."""
    rng = np.random.default_rng(3)
    prior = 50 * rng.standard_normal(256)
    result = embedding_metrics(prior + personalised(6, 3, 256, noise=0.1, seed=4))
    assert result["cosine_other_subjects"] > 0.99 and result["between_std_relative"] < 0.03
    assert result["retrieval_top1_centered"] == 1


def test_shuffled_subjects_retrieve_at_chance():
    """Every modality's subjects permuted independently: no subject structure left."""
    n, m = 10, 4
    scores, ratios = [], []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        e = personalised(n, m, 128, noise=0.05, seed=seed)
        e = np.stack([e[rng.permutation(n), k] for k in range(m)], axis=1)
        result = embedding_metrics(e)
        scores.append(result["retrieval_top1"])
        ratios.append(result["variance_ratio"])
    assert np.mean(scores) == pytest.approx(1 / n, abs=0.03)
    assert np.mean(ratios) == pytest.approx(m, rel=0.15)


def test_bad_embeddings_are_refused():
    for shape in ((1, 3, 4), (3, 1, 4), (3, 4)):
        with pytest.raises(ValueError, match="N>=2 subjects, M>=2 modalities"):
            embedding_metrics(np.ones(shape))
    with pytest.raises(ValueError, match="non-finite"):
        embedding_metrics(np.full((2, 2, 3), np.nan))


def test_center_patch_pads_with_zeros_where_the_case_is_smaller():
    data = np.arange(1, 40 * 70 * 64 + 1, dtype=np.float32).reshape(1, 40, 70, 64)
    patch = center_patch(data, PATCH)
    assert patch.shape == (1, 64, 64, 64)
    assert np.count_nonzero(patch == 0) == 64**3 - 40 * 64 * 64
    assert np.array_equal(patch[0, 12:52], data[0, :, 3:67])


def cases_from(images: list[np.ndarray], second: list[np.ndarray]) -> dict[str, np.ndarray]:
    return {f"case{i}": np.stack([a, b]) for i, (a, b) in enumerate(zip(images, second))}


def test_a_real_network_pins_which_subject_is_which(network):
    """Same image as both modalities: retrieval 1 and within-variance 0 for z and X_h'; modality 1 taken
    from the next subject: modality 0 -> 1 retrieval finds the wrong subject every time."""
    rng = np.random.default_rng(0)
    images = [rng.standard_normal((40, 70, 64)).astype(np.float32) for _ in range(3)]
    same = representation_metrics(network, cases_from(images, images))
    assert (same["subjects"], same["modalities"], same["feature_dim"]) == (3, 2, 16 * 12 * 8)
    for r in ("z", "x_h"):
        assert same[r]["retrieval_top1"] == 1 and same[r]["variance_ratio"] < 1e-9
    shifted = embed_cases(network, cases_from(images, images[1:] + images[:1]))
    z = shifted.z
    assert np.allclose(z[1:, 0], z[:-1, 1]) and shifted.cases == ["case0", "case1", "case2"]
    assert embedding_metrics(z)["retrieval_top1"] == 0
    patch = torch.from_numpy(center_patch(np.stack([images[2], images[0]]), PATCH))[None]
    with torch.no_grad():
        alone = repeat_modality(patch, 1, network.in_channels)
        direct = network(alone, decode=False).x_h.flatten().double().numpy()
    assert np.allclose(shifted.x_h[2, 1], direct, atol=1e-5)  # case2's modality 1; batch 2 vs 1: rounding


def test_checkpoint_and_random_init_baseline(network, tmp_path):
    rng = np.random.default_rng(1)
    cases = {f"c{i}": rng.standard_normal((2, 64, 64, 64)).astype(np.float32) for i in range(2)}
    save_checkpoint({"network_weights": network.state_dict(), "network_kwargs": {"kind": "pirl", **network.config},
                     "trainer_name": "test", "config": {}, "plans": {}, "epoch": 0}, tmp_path / "c.pth")
    expected = embed_cases(network, cases)
    assert np.array_equal(embed_cases(load_pirl_network(tmp_path / "c.pth"), cases).x_h, expected.x_h)
    state = torch.random.get_rng_state()
    a, b, c = random_init_like(network, 0), random_init_like(network, 0), random_init_like(network, 1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.prior, b.prior) and not torch.equal(a.prior, c.prior)
    results = checkpoint_representation(tmp_path / "c.pth", cases, seed=0)
    assert sorted(results) == ["random_init", "trained"]
    assert results["trained"]["x_h"] == embedding_metrics(expected.x_h)
    assert results["random_init"]["z"] == embedding_metrics(embed_cases(a, cases).z)
    written = write_representation_results(results, tmp_path / "out")
    table = pd.read_csv(written[1])
    assert list(table.columns) == ["model", "representation", "subjects", "modalities", *METRICS]
    assert table[["model", "representation"]].values.tolist() == [
        ["trained", "z"], ["trained", "x_h"], ["random_init", "z"], ["random_init", "x_h"]]
    assert json.loads(written[0].read_text())["trained"]["cases"] == ["c0", "c1"]


def test_swinunetr_bottleneck_sees_each_modality_alone_and_loads_trained_or_random_weights(tmp_path):
    from pirl_pipeline.evaluation.representation import load_swinunetr_network, swinunetr_bottleneck
    from pirl_pipeline.networks.factory import build_network

    kwargs = {"kind": "swinunetr", "in_channels": 2, "out_channels": 2, "feature_size": 12, "window_size": 4,
              "depths": (1, 1, 1, 1)}
    torch.manual_seed(3)
    network = build_network(kwargs).eval()
    rng = np.random.default_rng(0)
    cases = {f"c{i}": rng.normal(size=(2, 66, 64, 64)).astype(np.float32) for i in range(2)}
    e = swinunetr_bottleneck(network, cases, (64, 64, 64))
    assert e.shape == (2, 2, 16 * 12 * 8) and e.dtype == np.float64
    changed = {**cases, "c0": cases["c0"].copy()}
    changed["c0"][1] += 5.0  # the second modality of case c0 only
    e2 = swinunetr_bottleneck(network, changed, (64, 64, 64))
    np.testing.assert_allclose(e2[:, 0], e[:, 0])  # modality 0 alone never sees channel 1
    assert not np.allclose(e2[0, 1], e[0, 1])
    path = tmp_path / "swin.pth"
    save_checkpoint({"network_weights": network.state_dict(), "network_kwargs": kwargs,
                     "config": {"patch_size": [64, 64, 64]}, "trainer_name": "SwinUNETRSegTrainer", "plans": {},
                     "epoch": 1}, path)
    loaded, patch = load_swinunetr_network(path)
    assert patch == [64, 64, 64]
    np.testing.assert_allclose(swinunetr_bottleneck(loaded, cases, patch), e)
    fresh, _ = load_swinunetr_network(path, random_init_seed=0)
    assert not np.allclose(swinunetr_bottleneck(fresh, cases, patch), e)
