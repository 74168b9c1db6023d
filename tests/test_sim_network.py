"""Phases on the network: analytic vs flow, bytes conserved, pruning, forwarding, copy engines."""

from __future__ import annotations

import numpy as np
import pytest

from moe.placement import make_placement
from moe.spec.schema import Cluster
from moe.topology import build_topology
from moe.traffic import TrafficParams, traffic_from_ids
from sim import network
from sim.network import phase_input, prune_unbinding, solve_phase

BD, BC = 7392, 14336  # FP8 and BF16 bytes per token of hidden 7168


def balanced(comm: str, nodes: int = 2, gpn: int = 4, per_pair: int = 8, **cluster):
    """Every GPU sends `per_pair` tokens to every GPU (itself included): a perfectly balanced all-to-all."""
    c = Cluster(nodes=nodes, gpus_per_node=gpn, **cluster)
    topo = build_topology(c)
    g = topo.gpus
    ids_BTK = np.tile(np.arange(g), (g, per_pair))[:, :, None]  # token t of each source -> expert t % g
    params = TrafficParams(comm=comm, dispatch_bytes_per_token=BD, combine_bytes_per_token=BC,
                           tokens_per_gpu=g * per_pair)
    t = traffic_from_ids(params, topo, make_placement("x", np.arange(g).reshape(g, 1), g, gpn), ids_BTK)
    return c, topo, t


def solve(c, topo, t, kind: str, model: str, scale: float = 1.0):
    flows, bpt = (t.dispatch, BD) if kind == "dispatch" else (t.combine, BC)
    return solve_phase(phase_input(flows, t, topo, c, kind, bpt, scale), c, model, topo.gpus)


@pytest.mark.parametrize("comm", ["direct", "hierarchical"])
@pytest.mark.parametrize("copy_GBps", [0.0, 300.0])
def test_analytic_and_flow_agree_on_a_balanced_all_to_all(comm, copy_GBps):
    c, topo, t = balanced(comm, comm_copy_GBps=copy_GBps)
    assert len(set(t.pair_tokens_GG.ravel().tolist())) == 1
    for kind in ("dispatch", "combine"):
        a, f = solve(c, topo, t, kind, "analytic"), solve(c, topo, t, kind, "flow")
        assert f.done_G == pytest.approx(a.done_G, rel=1e-6)
        if not copy_GBps:  # every flow alone on its bottleneck: arrivals agree too (with copy engines the
            # flow model lets NVLink copies use what NIC-bound copies leave of an engine; analytic does not)
            assert f.arrive_GC == pytest.approx(a.arrive_GC, rel=1e-6)


def test_balanced_direct_phase_time_by_hand():
    """2 x 4 GPUs, 8 tokens per pair, direct: each NIC sends 4 remote GPUs x 8 tokens; NVLink 3 x 8."""
    c, topo, t = balanced("direct", message_overhead_us=0.0)
    nic = 4 * 8 * BD / (c.nic_GBps * 1e9) + c.nic_latency_us * 1e-6
    nvl = 3 * 8 * BD / (c.nvlink_GBps * 1e9) + c.nvlink_latency_us * 1e-6
    ph = solve(c, topo, t, "dispatch", "flow")
    assert ph.duration_s == pytest.approx(max(nic, nvl), rel=1e-9)
    assert ph.sync_s == pytest.approx(c.launch_overhead_us * 1e-6 + 2 * c.nic_latency_us * 1e-6)


def test_link_bytes_are_conserved_between_traffic_and_simulated_links():
    # 4 nodes on leaves of 2: leaf links exist (and are pruned from the solver, never from the bytes)
    c, topo, t = balanced("hierarchical", nodes=4, gpn=4, gpus_per_leaf=2, comm_copy_GBps=300.0)
    for kind, flows in (("dispatch", t.dispatch), ("combine", t.combine)):
        ph = solve(c, topo, t, kind, "flow", scale=0.5)
        assert ph.link_bytes_L == pytest.approx(flows.link_bytes_L * 0.5)
        solved = ph.seg_bytes_SL.sum(axis=0)
        kept = solved > 0
        assert solved[kept] == pytest.approx(ph.link_bytes_L[kept])
        assert (ph.link_bytes_L[~kept] == 0).all() or all(
            topo.link_names[i].startswith("leaf") for i in np.flatnonzero(~kept & (ph.link_bytes_L > 0)))


def test_pruning_drops_only_links_that_cannot_bind():
    c, topo, t = balanced("direct", nodes=4, gpn=2, gpus_per_leaf=2)
    flows = t.dispatch
    _, links = prune_unbinding(flows.link_indptr_F1, flows.link_ids_X, topo.link_capacity_Bps)
    names = {topo.link_names[i].split("[")[0] for i in set(links.tolist())}
    assert names == {"nvlink_out", "nvlink_in", "nic_out", "nic_in"}  # leaves carry at most their NICs
    c2, topo2, t2 = balanced("direct", nodes=4, gpn=2, gpus_per_leaf=2, fabric_oversubscription=2.0)
    _, links2 = prune_unbinding(t2.dispatch.link_indptr_F1, t2.dispatch.link_ids_X, topo2.link_capacity_Bps)
    assert any(topo2.link_names[i].startswith("leaf") for i in set(links2.tolist()))
    # an oversubscribed uplink binds: the phase is slower than with a non-blocking fabric
    slow, fast = solve(c2, topo2, t2, "dispatch", "flow"), solve(c, topo, t, "dispatch", "flow")
    assert slow.duration_s > fast.duration_s * 1.1


def test_forwarded_tokens_never_arrive_before_what_feeds_the_forwarder():
    c, topo, t = balanced("hierarchical", nodes=2, gpn=4, message_overhead_us=0.0)
    p = phase_input(t.dispatch, t, topo, c, "dispatch", BD)
    ph = solve_phase(p, c, "flow", topo.gpus)
    rdma_end = max(ph.done_G)  # done_G includes the RDMA senders and the forwarders
    assert rdma_end >= ph.arrive_GC.max() - 1e-12
    # with the NVLink nearly free, forwarding ends one NVLink latency after the RDMA flows
    fast = c.model_copy(update={"nvlink_GBps": 1e6})
    ph2 = solve_phase(phase_input(t.dispatch, t, topo, fast, "dispatch", BD), fast, "flow", topo.gpus)
    rdma_only = 8 * 4 * BD / (c.nic_GBps * 1e9) + c.nic_latency_us * 1e-6
    assert ph2.arrive_GC.max() == pytest.approx(rdma_only + fast.nvlink_latency_us * 1e-6, rel=1e-3)


def test_copy_engines_bound_an_nvlink_phase():
    """One node: each GPU copies its 8 tokens to each of 4 GPUs (itself included) and copies 4 x 8 out."""
    c, topo, t = balanced("direct", nodes=1, gpn=4, comm_copy_GBps=100.0, message_overhead_us=0.0)
    ph = solve(c, topo, t, "dispatch", "flow")
    copy_s = 2 * 4 * 8 * BD / 100e9
    assert ph.duration_s == pytest.approx(copy_s + c.nvlink_latency_us * 1e-6, rel=1e-6)
    free = c.model_copy(update={"comm_copy_GBps": 0.0})
    assert solve(free, topo, t, "dispatch", "flow").duration_s < ph.duration_s


def test_solver_tolerances_stay_within_one_and_a_half_percent_of_exact(monkeypatch):
    """A skewed 4 x 8 hierarchical phase: the speed tolerances against an exact solve."""
    c = Cluster(nodes=4, gpus_per_node=8, comm_copy_GBps=317.0)
    topo = build_topology(c)
    g = topo.gpus
    rng = np.random.default_rng(0)
    weights = rng.zipf(1.6, size=g).astype(float)
    ids_BTK = rng.choice(g, size=(g, 256, 4), p=weights / weights.sum())
    for k in range(1, 4):  # distinct experts per token
        clash = (ids_BTK[:, :, k:k + 1] == ids_BTK[:, :, :k]).any(axis=2)
        ids_BTK[:, :, k] = np.where(clash, (ids_BTK[:, :, k] + k) % g, ids_BTK[:, :, k])
    params = TrafficParams(comm="hierarchical", dispatch_bytes_per_token=BD, combine_bytes_per_token=BC,
                           tokens_per_gpu=256)
    t = traffic_from_ids(params, topo, make_placement("x", np.arange(g).reshape(g, 1), g, 8), ids_BTK)
    approx = solve(c, topo, t, "dispatch", "flow")
    monkeypatch.setattr(network, "FLOW_BATCH_RTOL", 0.0)
    monkeypatch.setattr(network, "FLOW_RATE_RTOL", 0.0)
    exact = solve(c, topo, t, "dispatch", "flow")
    assert exact.rounds > approx.rounds
    assert approx.done_G == pytest.approx(exact.done_G, rel=0.015)
