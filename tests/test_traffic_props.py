"""Property tests of the traffic model: token conservation, byte accounting on links, nearest replicas,
checked against a per-token brute force on small random scenarios."""

from __future__ import annotations

import numpy as np
from conftest import small_spec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moe.placement import place
from moe.routing import expert_ids
from moe.spec import load_scenario, sizes
from moe.topology import build_topology
from moe.traffic import TrafficParams, compute_traffic
from moe.traffic.linkload import link_bytes_from_counts


@st.composite
def scenarios(draw):
    nodes, gpn = draw(st.integers(1, 4)), draw(st.sampled_from([1, 2, 4]))
    experts = draw(st.integers(4, 20))
    strategy = draw(st.sampled_from(["contiguous", "random", "replicate_hot", "topology_aware", "one_per_gpu"]))
    if strategy == "one_per_gpu" and experts > nodes * gpn:
        strategy = "replicate_hot"
    replicas = draw(st.integers(0, min(6, experts * (nodes * gpn - 1)))) if strategy in (
        "replicate_hot", "topology_aware") else 0
    capacity = draw(st.sampled_from([None, 0.6, 1.0, 1.5]))
    spec = small_spec(
        model={"experts": experts, "top_k": draw(st.integers(1, min(4, experts))), "groups": 1, "topk_groups": 1},
        cluster={"nodes": nodes, "gpus_per_node": gpn, "gpus_per_leaf": draw(st.sampled_from([1, 2, 32])),
                 "fabric_oversubscription": draw(st.sampled_from([1.0, 3.0]))},
        placement={"strategy": strategy, "replicas": replicas, "search_iters": 10},
        workload={"tokens_per_gpu": draw(st.integers(1, 24)),
                  "routing": {"distribution": "zipf", "skew": draw(st.floats(0, 2)),
                              "coactivation": draw(st.sampled_from([0.0, 0.5]))},
                  "load_balance": {"method": "capacity" if capacity else "none", "capacity_factor": capacity or 1.0}},
        schedule={"comm": draw(st.sampled_from(["direct", "hierarchical"])), "micro_batches": 1,
                  "dispatch_dtype": draw(st.sampled_from(["fp8", "bf16"]))})
    spec["seed"] = draw(st.integers(0, 1000))
    return load_scenario(spec)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_traffic_invariants(s):
    topo, pl = build_topology(s.cluster), place(s)
    ids = expert_ids(s, 0)
    t = compute_traffic(s, topo, pl, ids)
    a = t.assignment
    g_count, gpn, k = topo.gpus, topo.gpus_per_node, s.model.top_k
    n = g_count * s.workload.tokens_per_gpu
    dropped = np.zeros((k, n), dtype=bool) if a.dropped_KN is None else a.dropped_KN

    # every request lands on a slot holding its expert, nearest replica first
    assert np.array_equal(pl.expert_of_slot_X[a.slot_KN], a.expert_KN)
    src = np.repeat(np.arange(g_count), s.workload.tokens_per_gpu)
    holds = (pl.slot_expert_GS[src][None, :, :] == a.expert_KN[:, :, None]).any(axis=2)
    assert (a.gpu_KN[holds] == np.broadcast_to(src, holds.shape)[holds]).all()
    node_holds = np.zeros_like(holds)
    for j in range(k):
        for i in range(n):
            node_holds[j, i] = len(set((pl.gpus_of(a.expert_KN[j, i]) // gpn).tolist()) & {src[i] // gpn}) > 0
    assert (a.gpu_KN[node_holds] // gpn == np.broadcast_to(src // gpn, holds.shape)[node_holds]).all()

    # every token reaches exactly top_k slots unless capacity drops it, and drops are counted
    assert t.slot_tokens_X.sum() + t.dropped == k * n == t.assignment.slot_KN.size
    if s.workload.load_balance.method == "none":
        assert t.dropped == 0

    # distinct (token, GPU) and (token, node) pairs, by brute force
    pair = np.zeros((g_count, g_count), dtype=np.int64)
    node = np.zeros((g_count, topo.nodes), dtype=np.int64)
    for i in range(n):
        gpus = {int(a.gpu_KN[j, i]) for j in range(k) if not dropped[j, i]}
        for d in gpus:
            pair[src[i], d] += 1
        for m in {d // gpn for d in gpus}:
            node[src[i], m] += 1
    assert np.array_equal(t.pair_tokens_GG, pair)
    if s.schedule.comm == "hierarchical":
        assert np.array_equal(t.node_tokens_GD, node)

    # bytes on links add up to the traffic matrix, both path kinds
    p = TrafficParams.from_scenario(s)
    bd, bc = sizes.dispatch_bytes_per_token(s), sizes.combine_bytes_per_token(s)
    d_L, c_L = link_bytes_from_counts(topo, s.schedule.comm, t.pair_tokens_GG, t.node_tokens_GD,
                                      p.dispatch_bytes_per_token, p.combine_bytes_per_token)
    assert np.allclose(d_L, t.dispatch.link_bytes_L) and np.allclose(c_L, t.combine.link_bytes_L)
    for flows in (t.dispatch, t.combine):
        assert np.isclose(flows.link_bytes_L.sum(), (flows.bytes_F * flows.links_per_flow_F).sum())
    same = (np.arange(g_count)[:, None] // gpn) == (np.arange(g_count)[None, :] // gpn)
    nic_out = t.dispatch.link_bytes_L[topo.nic_out(np.arange(g_count))].sum()
    if s.schedule.comm == "direct":
        assert nic_out == pair[~same].sum() * bd
    else:
        remote = np.arange(topo.nodes)[None, :] != (np.arange(g_count) // gpn)[:, None]
        assert nic_out == node[remote].sum() * bd
    np.fill_diagonal(same, False)
    assert t.combine.link_bytes_L[topo.nvlink_in(np.arange(g_count))].sum() >= pair[same].sum() * bc
    assert t.inter_node_bytes == (nic_out / bd) * (bd + bc)
