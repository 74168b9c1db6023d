"""The router (moe.model.gate): group limit, selection-only bias, weights, given ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moe.model.gate import Gate
from moe.model.model import hidden_states
from moe.spec import load_scenario


def model(**over):
    return load_scenario({"model": {"preset": "tiny", **over}, "cluster": {"nodes": 2, "gpus_per_node": 8}},
                         check=False).model


def _gate_and_input(tokens=200, **over):
    m = model(**over)
    return m, Gate(m, 0, 1, "cpu"), hidden_states(m, tokens, 9, dtype=torch.float32)


def test_choices_stay_inside_the_best_groups():
    m, gate, x = _gate_and_input(experts=16, groups=4, topk_groups=2, top_k=4)
    ids, w = gate(x)
    assert ids.shape == w.shape == (200, 4) and ids.dtype == torch.int64
    groups_per_token = [len(set((row // 4).tolist())) for row in ids]
    assert max(groups_per_token) <= 2 and len(set(map(tuple, ids.sort(1).values.tolist()))) > 10
    assert all(len(set(row.tolist())) == 4 for row in ids)  # distinct experts per token


def test_group_limit_changes_choices_relative_to_plain_topk():
    _, limited, x = _gate_and_input(groups=4, topk_groups=1, top_k=4)
    _, plain, _ = _gate_and_input(groups=1, topk_groups=1, top_k=4)
    assert not torch.equal(limited(x)[0].sort(1).values, plain(x)[0].sort(1).values)


def test_sigmoid_weights_are_normalized_scores_times_route_scale():
    m, gate, x = _gate_and_input(score="sigmoid", route_scale=2.5)
    ids, w = gate(x)
    scores = (x @ gate.weight.float().t()).sigmoid()
    expect = scores.gather(1, ids)
    torch.testing.assert_close(w, 2.5 * expect / expect.sum(1, keepdim=True))
    torch.testing.assert_close(w.sum(1), torch.full((200,), 2.5))


def test_softmax_weights_are_the_probabilities_of_the_chosen():
    m, gate, x = _gate_and_input(score="softmax", route_scale=1.0, groups=1, topk_groups=1)
    ids, w = gate(x)
    probs = (x @ gate.weight.float().t()).softmax(-1)
    torch.testing.assert_close(w, probs.gather(1, ids))
    assert torch.equal(ids.sort(1).values, probs.topk(m.top_k, dim=1).indices.sort(1).values)


def test_bias_moves_selection_but_never_weights():
    m, gate, x = _gate_and_input()
    ids0, _ = gate(x)
    bias = np.zeros(m.experts, dtype=np.float32)
    bias[13] = 10.0
    gate.set_bias(bias)
    ids1, w1 = gate(x)
    assert (ids1 == 13).any(1).all() and not (ids0 == 13).any(1).all()
    # the weights of the biased choice still come from the unbiased scores
    gate.set_bias(np.zeros(m.experts, dtype=np.float32))
    _, w_given = gate(x, ids1)
    torch.testing.assert_close(w1, w_given)
    with pytest.raises(ValueError, match="shape"):
        gate.set_bias(np.zeros(3))


def test_given_ids_take_their_weights_from_the_scores():
    m, gate, x = _gate_and_input(tokens=50)
    rng = np.random.default_rng(0)
    ids_np = np.stack([rng.choice(m.experts, m.top_k, replace=False) for _ in range(50)]).astype(np.int32)
    ids, w = gate(x, ids_np)
    assert ids.dtype == torch.int64 and torch.equal(ids, torch.from_numpy(ids_np).long())
    torch.testing.assert_close(w, gate.weights(gate.scores(x), ids))
    with pytest.raises(ValueError, match="lie in"):
        gate(x, np.full((50, 4), m.experts))
    with pytest.raises(ValueError, match=r"\[T=50"):
        gate(x, ids_np[:10])


@pytest.mark.parametrize("score,bias", [("sigmoid", True), ("softmax", False)])
def test_agrees_with_the_numpy_gate_of_moe_routing(score, bias):
    """The workload generator's numpy gate and the model's gate implement one rule (DeepSeek-V3's)."""
    routing_gate = pytest.importorskip("moe.routing.gate")
    m, gate, x = _gate_and_input(tokens=300, score=score, groups=4, topk_groups=2, route_scale=2.5)
    bias_E = np.linspace(-0.05, 0.05, m.experts).astype(np.float32) if bias else None
    if bias:
        gate.set_bias(bias_E)
    ids, w = gate(x)
    logits = (x @ gate.weight.float().t()).double().numpy()
    ids_np, w_np = routing_gate.gate(logits, score=score, top_k=m.top_k, groups=m.groups,
                                     topk_groups=m.topk_groups, bias_E=bias_E, route_scale=m.route_scale)
    assert np.array_equal(np.sort(ids.numpy(), 1), np.sort(ids_np, 1))
    order = np.argsort(ids.numpy(), 1), np.argsort(ids_np, 1)
    np.testing.assert_allclose(np.take_along_axis(w.numpy(), order[0], 1),
                               np.take_along_axis(w_np, order[1], 1), rtol=1e-5)
