"""moe.routing: synthetic workloads, the numpy gate, determinism and slicing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import small_spec

from moe.errors import SpecError
from moe.routing import expert_ids, gate
from moe.routing.popularity import clusters, log_weights, probabilities
from moe.routing.rng import token_state
from moe.routing.synthetic import sample_ids
from moe.spec import load_scenario


def _scenario(routing=None, **model):
    return load_scenario(small_spec(model={"experts": 16, "groups": 1, "topk_groups": 1, **model},
                                    workload={"tokens_per_gpu": 256, "routing": routing or {}}))


def test_ids_are_deterministic_and_a_slice_equals_the_whole():
    s = _scenario({"distribution": "zipf", "skew": 1.0, "coactivation": 0.3})
    full = expert_ids(s, 1, 2)
    assert full.shape == (16, 256, 4)
    part = expert_ids(s, 1, 2, gpus=[3, 5], tokens=np.arange(10, 20))
    assert np.array_equal(part, full[[3, 5]][:, 10:20])
    assert np.array_equal(expert_ids(s, 1, 2), full)
    assert not np.array_equal(expert_ids(s, 0, 2), full)
    assert not np.array_equal(expert_ids(s, 1, 3), full)


@pytest.mark.parametrize("distribution", ["uniform", "zipf", "gate"])
def test_every_token_chooses_top_k_distinct_experts(distribution):
    s = _scenario({"distribution": distribution, "skew": 2.0, "coactivation": 0.5})
    ids = expert_ids(s, 0)
    assert ids.min() >= 0 and ids.max() < 16
    srt = np.sort(ids, axis=2)
    assert not (srt[..., 1:] == srt[..., :-1]).any()


def test_sampling_matches_the_plackett_luce_model():
    """First choice ~ p; a pair {a, b} appears with sum over orders of p_a p_b / (1 - p_a) (exact)."""
    logw = np.log(np.array([0.5, 0.25, 0.15, 0.1]))
    p = probabilities(logw)
    ids = sample_ids(logw, 2, token_state(np.arange(200_000), 7))
    np.testing.assert_allclose(np.bincount(ids[0], minlength=4) / ids.shape[1], p, atol=0.005)
    for a, b in itertools.combinations(range(4), 2):
        expected = p[a] * p[b] / (1 - p[a]) + p[b] * p[a] / (1 - p[b])
        seen = np.mean(((ids[0] == a) & (ids[1] == b)) | ((ids[0] == b) & (ids[1] == a)))
        assert seen == pytest.approx(expected, abs=0.005)


def test_extreme_skew_still_gives_distinct_experts():
    """Weights r^-12: redraws almost always repeat a chosen expert, so the Gumbel fallback decides."""
    logw = -12.0 * np.log(np.arange(1, 9))
    ids = sample_ids(logw, 6, token_state(np.arange(20_000), 1))
    assert not (np.sort(ids, axis=0)[1:] == np.sort(ids, axis=0)[:-1]).any()
    first_five = (np.sort(ids[:5], axis=0) == np.arange(5)[:, None]).all(axis=0)
    p = probabilities(logw)
    exact = 0.0  # Plackett-Luce probability that the first five choices are {0..4}, over their orders
    for order in itertools.permutations(range(5)):
        left, prob = 1.0, 1.0
        for e in order:
            prob, left = prob * p[e] / left, left - p[e]
        exact += prob
    assert first_five.mean() == pytest.approx(exact, abs=0.01)
    w = np.exp(logw[5:])
    assert np.mean(ids[5, first_five] == 5) == pytest.approx(w[0] / w.sum(), abs=0.02)


def test_zipf_skew_concentrates_load_and_uniform_spreads_it():
    zipf = np.bincount(expert_ids(_scenario({"distribution": "zipf", "skew": 1.5}), 0).ravel(), minlength=16)
    flat = np.bincount(expert_ids(_scenario({"distribution": "uniform"}), 0).ravel(), minlength=16)
    assert zipf.max() / zipf.mean() > 2.0
    assert flat.max() / flat.mean() < 1.1
    # the hottest expert is the one the popularity ranks first
    s = _scenario({"distribution": "zipf", "skew": 1.5})
    assert np.argmax(zipf) == np.argmax(log_weights(s, 0, 0))


def test_layer_variation_and_drift():
    same = _scenario({"distribution": "zipf", "skew": 1.0, "layer_variation": 0.0})
    diff = _scenario({"distribution": "zipf", "skew": 1.0, "layer_variation": 1.0})
    assert np.array_equal(log_weights(same, 0, 0), log_weights(same, 5, 0))
    assert np.corrcoef(log_weights(diff, 0, 0), log_weights(diff, 5, 0))[0, 1] < 0.9
    still = _scenario({"distribution": "zipf", "skew": 1.0})
    moving = _scenario({"distribution": "zipf", "skew": 1.0, "drift": 0.5})
    assert np.array_equal(log_weights(still, 0, 0), log_weights(still, 0, 7))
    assert np.abs(log_weights(moving, 0, 7) - log_weights(moving, 0, 0)).max() > 0.5
    assert np.array_equal(log_weights(moving, 0, 0), log_weights(still, 0, 0))


def test_coactivated_tokens_take_a_whole_cluster():
    s = _scenario({"distribution": "uniform", "coactivation": 0.4})
    ids = expert_ids(s, 0).reshape(-1, 4)
    cl = {frozenset(c) for c in clusters(s.seed, 16, 4).tolist()}
    whole = np.mean([frozenset(row) in cl for row in ids.tolist()])
    assert 0.35 < whole < 0.45  # chance alone gives ~4 / C(16, 4) = 0.2%


def test_gate_softmax_without_groups_by_hand():
    logits = np.log(np.array([[0.1, 0.4, 0.2, 0.3]]))
    ids, w = gate(logits, score="softmax", top_k=2)
    assert ids.tolist() == [[1, 3]]
    np.testing.assert_allclose(w, [[0.4, 0.3]])


def test_gate_sigmoid_groups_and_selection_only_bias_by_hand():
    scores = np.array([[0.9, 0.1, 0.5, 0.45, 0.2, 0.3]])  # groups {0,1} {2,3} {4,5}
    logits = np.log(scores / (1 - scores))
    ids, w = gate(logits, score="sigmoid", top_k=2, groups=3, topk_groups=1, route_scale=2.0)
    assert ids.tolist() == [[0, 1]]  # group max: 0.9 wins
    np.testing.assert_allclose(w, [[2 * 0.9 / 1.0, 2 * 0.1 / 1.0]])
    bias = np.zeros(6)  # with a bias, groups rank by the sum of their top two: {2,3} = 0.95 > 1.0? no
    ids, _ = gate(logits, score="sigmoid", top_k=2, groups=3, topk_groups=1, bias_E=bias)
    assert ids.tolist() == [[0, 1]]
    bias = np.array([0, 0, 0.1, 0.1, 0, 0])
    ids, w = gate(logits, score="sigmoid", top_k=2, groups=3, topk_groups=1, bias_E=bias)
    assert ids.tolist() == [[2, 3]]  # {2,3}: 0.6 + 0.55 beats {0,1}: 1.0
    np.testing.assert_allclose(w, [[0.5 / 0.95, 0.45 / 0.95]])  # weights ignore the bias


def test_gate_distribution_respects_the_group_limit():
    s = _scenario({"distribution": "gate", "skew": 1.0}, groups=4, topk_groups=2)
    groups_used = np.array([len(set(row)) for row in (expert_ids(s, 0) // 4).reshape(-1, 4).tolist()])
    assert groups_used.max() <= 2


def test_negative_skew_is_rejected_with_its_key():
    with pytest.raises(SpecError, match=r"workload\.routing\.skew=-0\.5"):
        load_scenario(small_spec(workload={"routing": {"skew": -0.5}}))


def test_bad_bias_and_batch_arguments():
    s = _scenario()
    with pytest.raises(SpecError, match="bias_E"):
        expert_ids(s, 0, bias_E=np.zeros(3))
    with pytest.raises(SpecError, match="tokens"):
        expert_ids(s, 0, tokens=[300])
    with pytest.raises(SpecError, match="gpus"):
        expert_ids(s, 0, gpus=[16])
