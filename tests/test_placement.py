"""Placement strategies on small scenarios: layouts, replicas of hot experts, EPLB grouping, bad input."""

from __future__ import annotations

import typing

import numpy as np
import pytest
from conftest import small_spec

from moe.errors import SpecError
from moe.placement import STRATEGIES, expected_load, load_from_ids, make_placement, place
from moe.routing import expert_ids
from moe.spec import load_scenario
from moe.spec.schema import Placement as PlacementSection
from moe.topology import build_topology
from moe.traffic import compute_traffic


def _scenario(experts=16, placement=None, routing=None, comm="hierarchical", **model):
    return load_scenario(small_spec(model={"experts": experts, "groups": 1, "topk_groups": 1, **model},
                                    placement=placement or {},
                                    workload={"tokens_per_gpu": 128,
                                              "routing": routing or {"distribution": "zipf", "skew": 1.2}},
                                    schedule={"comm": comm}))


def test_every_schema_strategy_has_a_function():
    names = typing.get_args(PlacementSection.model_fields["strategy"].annotation)
    assert set(names) == set(STRATEGIES)


def test_one_per_gpu_puts_expert_i_on_gpu_i_and_replicas_of_the_hottest_on_spares():
    s = _scenario(experts=12, placement={"strategy": "one_per_gpu"})
    load = expected_load(s)
    pl = place(s, load)
    table = pl.slot_expert_GS[:, 0]
    assert table[:12].tolist() == list(range(12))
    hottest = np.argsort(-load.expert_requests_E)[:2]
    assert set(hottest) <= set(table[12:].tolist())  # the two hottest get the first spare slots
    assert pl.replicas_E.sum() == 16
    for e in np.flatnonzero(pl.replicas_E == 2):
        assert len(set((pl.gpus_of(e) // 4).tolist())) == 2  # a replica goes to another node


def test_contiguous_blocks_and_random_deal():
    s = _scenario(experts=32, placement={"strategy": "contiguous"})
    assert place(s).slot_expert_GS.tolist() == [[2 * g, 2 * g + 1] for g in range(16)]
    r1, r2 = place(s, strategy="random"), place(s, strategy="random")
    assert np.array_equal(r1.slot_expert_GS, r2.slot_expert_GS)
    assert sorted(r1.slot_expert_GS.ravel().tolist()) == list(range(32)) and (r1.used_slots_G == 2).all()
    other = load_scenario({**small_spec(model={"experts": 32, "groups": 1, "topk_groups": 1},
                                        placement={"strategy": "random"}), "seed": 5})
    assert not np.array_equal(place(other, strategy="random").slot_expert_GS, r1.slot_expert_GS)


def test_replicate_hot_balances_expected_load_better_than_contiguous():
    s = _scenario(experts=32, placement={"strategy": "replicate_hot", "replicas": 8})
    load = expected_load(s)
    hot, cont = place(s, load), place(s, load, "contiguous")
    assert hot.replicas_E.sum() == 40 and hot.used_slots_G.max() == 3
    assert hot.replicas_E[np.argmax(load.expert_requests_E)] >= 2
    topo, ids = build_topology(s.cluster), expert_ids(s, 0)
    assert compute_traffic(s, topo, hot, ids).imbalance < 0.8 * compute_traffic(s, topo, cont, ids).imbalance


@pytest.mark.parametrize("groups,nodes_per_group", [(4, 1), (8, None), (2, 2)])
def test_replicate_hot_puts_groups_on_nodes_first(groups, nodes_per_group):
    s = _scenario(experts=32, placement={"strategy": "replicate_hot", "replicas": 8}, groups=groups,
                  topk_groups=1)
    pl = place(s)
    per_node = [set(pl.slot_expert_GS[n * 4:(n + 1) * 4].ravel().tolist()) - {-1} for n in range(4)]
    group_sets = [{e // (32 // groups) for e in experts} for experts in per_node]
    if nodes_per_group is None:  # 8 groups on 4 nodes: two whole groups per node
        assert all(len(g) == 2 for g in group_sets)
        assert sorted(e for experts in per_node for e in experts) == list(range(32))
    else:
        assert all(len(g) == 1 for g in group_sets)
        assert [next(iter(g)) for g in group_sets] == [n // nodes_per_group for n in range(4)]


def test_topology_aware_beats_contiguous_and_random_on_skewed_coactivated_routing():
    s = _scenario(experts=32, placement={"strategy": "topology_aware", "search_iters": 150},
                  routing={"distribution": "zipf", "skew": 1.2, "coactivation": 0.5})
    load = expected_load(s)
    topo, ids = build_topology(s.cluster), expert_ids(s, 0)
    assert np.array_equal(load.ids_BTK, ids)  # the sample is the whole batch at this size
    got = {name: compute_traffic(s, topo, place(s, load, name), ids).max_link_time_s
           for name in ("contiguous", "random", "topology_aware")}
    assert got["topology_aware"] < 0.9 * min(got["contiguous"], got["random"])


def test_expected_load_from_ids_scales_to_the_batch():
    ids = np.zeros((4, 10, 1), dtype=np.int64)
    load = load_from_ids(ids, experts=3, tokens_per_gpu=100)
    assert load.expert_requests_E.tolist() == [400.0, 0.0, 0.0]


def test_replicas_that_do_not_fit_are_rejected_with_their_key():
    with pytest.raises(SpecError, match=r"placement\.(replicas|slots_per_gpu)"):
        _scenario(experts=16, placement={"strategy": "replicate_hot", "replicas": 20, "slots_per_gpu": 2})
    with pytest.raises(SpecError, match=r"placement\.replicas=5"):
        _scenario(experts=12, placement={"strategy": "one_per_gpu", "replicas": 5})
    s = _scenario(experts=16, placement={"strategy": "replicate_hot"})
    with pytest.raises(SpecError, match=r"placement\.replicas=40"):
        unchecked = s.placement.model_copy(update={"replicas": 40, "slots_per_gpu": 2})
        place(s.model_copy(update={"placement": unchecked}))
    with pytest.raises(SpecError, match="one_per_gpu"):
        place(_scenario(experts=32, placement={"strategy": "contiguous"}), strategy="one_per_gpu")


def test_replicas_beyond_one_copy_per_gpu_are_rejected():
    with pytest.raises(SpecError, match=r"placement\.replicas=300: at most one copy"):
        _scenario(experts=16, placement={"strategy": "replicate_hot", "replicas": 300})
    # groups on nodes: a node of 4 GPUs holds at most 4 copies of each of its group's 4 experts
    s = _scenario(experts=16, placement={"strategy": "replicate_hot", "replicas": 60, "slots_per_gpu": 8},
                  groups=4, topk_groups=1)
    with pytest.raises(SpecError, match=r"placement\.replicas=60: the expert groups' nodes hold at most 48"):
        place(s)


def test_make_placement_validates_the_table():
    with pytest.raises(SpecError, match="expert 2 has no slot"):
        make_placement("x", [[0], [1]], 3, 1)
    with pytest.raises(SpecError, match="two replicas of one expert on one GPU"):
        make_placement("x", [[0, 0], [1, -1]], 2, 1)
    with pytest.raises(SpecError, match="in \\[0, 2\\)"):
        make_placement("x", [[0], [2]], 2, 1)
