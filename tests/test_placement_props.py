"""Property tests of placements: every expert placed, slots and memory respected, and topology_aware never
worse than contiguous or random on skewed workloads."""

from __future__ import annotations

import numpy as np
from conftest import small_spec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moe.placement import STRATEGIES, expected_load, place
from moe.spec import load_scenario, sizes
from moe.topology import build_topology
from moe.traffic import compute_traffic


@st.composite
def skewed(draw):
    nodes, gpn = draw(st.integers(1, 4)), draw(st.sampled_from([2, 4]))
    experts = draw(st.integers(4, 3 * nodes * gpn))
    spec = small_spec(
        model={"experts": experts, "top_k": draw(st.integers(1, min(4, experts))), "groups": 1, "topk_groups": 1},
        cluster={"nodes": nodes, "gpus_per_node": gpn, "gpus_per_leaf": draw(st.sampled_from([1, 32]))},
        placement={"strategy": "topology_aware", "replicas": draw(st.integers(0, min(8, experts * (nodes * gpn - 1)))),
                   "search_iters": 20},
        workload={"tokens_per_gpu": draw(st.integers(4, 48)),
                  "routing": {"distribution": "zipf", "skew": draw(st.floats(0.8, 2.0)),
                              "coactivation": draw(st.sampled_from([0.0, 0.3, 0.7])),
                              "layer_variation": 0.0}},
        schedule={"comm": draw(st.sampled_from(["direct", "hierarchical"])), "micro_batches": 1})
    spec["seed"] = draw(st.integers(0, 10_000))
    return load_scenario(spec)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(skewed())
def test_topology_aware_is_never_worse_than_contiguous_or_random(s):
    load = expected_load(s)  # at these sizes the sample is the whole batch of layer 0, step 0
    topo = build_topology(s.cluster)
    ids = load.ids_BTK
    time_s = {name: compute_traffic(s, topo, place(s, load, name), ids).max_link_time_s
              for name in ("contiguous", "random", "topology_aware")}
    assert time_s["topology_aware"] <= min(time_s["contiguous"], time_s["random"]) * (1 + 1e-12)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(skewed(), st.sampled_from(sorted(STRATEGIES)))
def test_every_expert_placed_within_slots_and_memory(s, strategy):
    if strategy == "one_per_gpu" and s.model.experts > s.cluster.gpus:
        strategy = "replicate_hot"
    if strategy in ("contiguous", "random", "one_per_gpu"):
        s = s.model_copy(update={"placement": s.placement.model_copy(update={"strategy": strategy, "replicas": 0})})
    pl = place(s, expected_load(s), strategy)
    assert (pl.replicas_E >= 1).all() and len(pl.replicas_E) == s.model.experts
    if strategy == "replicate_hot":
        assert pl.replicas_E.sum() == s.model.experts + s.placement.replicas
    if strategy == "topology_aware":  # the replica count is a budget (one_per_gpu may use fewer)
        assert pl.replicas_E.sum() <= s.model.experts + s.placement.replicas
    assert pl.used_slots_G.max() <= sizes.slots_per_gpu(s)
    for g in range(pl.gpus):  # never two replicas of one expert on one GPU
        row = pl.slot_expert_GS[g][pl.slot_expert_GS[g] >= 0]
        assert len(np.unique(row)) == len(row)
    mem = sizes.memory_per_gpu(s, slots=int(pl.used_slots_G.max()))
    assert mem["total_bytes"] <= s.cluster.memory_GB * 1e9
