"""moe.traffic on hand-sized cases: direct and hierarchical paths, dedupe, nearest replica, capacity."""

from __future__ import annotations

import numpy as np
import pytest

from moe.errors import SpecError
from moe.placement import make_placement
from moe.spec.schema import Cluster
from moe.topology import build_topology
from moe.traffic import TrafficParams, assign, traffic_from_ids

BD, BC = 100, 200  # bytes per token of dispatch and combine


def _topo(nodes=2, gpn=2):
    return build_topology(Cluster(nodes=nodes, gpus_per_node=gpn, gpus_per_leaf=32))


def _params(comm, capacity=None, tokens_per_gpu=2):
    return TrafficParams(comm=comm, dispatch_bytes_per_token=BD, combine_bytes_per_token=BC,
                         tokens_per_gpu=tokens_per_gpu, capacity_factor=capacity)


def _named(topo, link_bytes):
    return {topo.link_names[i]: float(b) for i, b in enumerate(link_bytes) if b}


# GPU 0 (node 0, rail 0) sends token 0 to experts {1, 2} and token 1 to experts {2, 3}; expert i on GPU i.
IDS = np.array([[[1, 2], [2, 3]]])
ONE_PER_GPU = np.arange(4).reshape(4, 1)


def test_direct_by_hand():
    topo = _topo()
    t = traffic_from_ids(_params("direct"), topo, make_placement("x", ONE_PER_GPU, 4, 2), IDS, sources=[0])
    assert t.pair_tokens_GG[0].tolist() == [0, 1, 2, 1]
    assert _named(topo, t.dispatch.link_bytes_L) == {
        "nvlink_out[g0]": BD, "nvlink_in[g1]": BD, "nic_out[g0]": 3 * BD, "nic_in[g2]": 2 * BD, "nic_in[g3]": BD,
        "leaf_up[rail0.leaf0]": BD, "leaf_down[rail1.leaf0]": BD}  # rail 0 -> rail 1 crosses the spine
    assert _named(topo, t.combine.link_bytes_L) == {
        "nvlink_out[g1]": BC, "nvlink_in[g0]": BC, "nic_out[g2]": 2 * BC, "nic_out[g3]": BC, "nic_in[g0]": 3 * BC,
        "leaf_up[rail1.leaf0]": BC, "leaf_down[rail0.leaf0]": BC}
    assert set(t.dispatch.hop_F.tolist()) == {0}
    assert t.inter_node_bytes == 3 * BD + 3 * BC and t.intra_node_bytes == BD + BC
    assert t.gpu_tokens_G.tolist() == [0, 1, 2, 1] and t.imbalance == pytest.approx(2.0)


def test_hierarchical_by_hand_sends_rdma_once_per_node():
    topo = _topo()
    t = traffic_from_ids(_params("hierarchical"), topo, make_placement("x", ONE_PER_GPU, 4, 2), IDS, sources=[0])
    assert t.node_tokens_GD[0].tolist() == [1, 2]
    flows = {(int(s), int(d), int(h)): int(n) for s, d, h, n in
             zip(t.dispatch.src_F, t.dispatch.dst_F, t.dispatch.hop_F, t.dispatch.tokens_F, strict=True)}
    assert flows == {(0, 1, 0): 1, (0, 2, 0): 2, (2, 3, 1): 1}  # GPU 2 forwards token 1 to GPU 3
    back = {(int(s), int(d), int(h)): int(n) for s, d, h, n in
            zip(t.combine.src_F, t.combine.dst_F, t.combine.hop_F, t.combine.tokens_F, strict=True)}
    assert back == {(1, 0, 0): 1, (3, 2, 0): 1, (2, 0, 1): 2}  # partial sums reduced on GPU 2
    assert _named(topo, t.dispatch.link_bytes_L) == {
        "nvlink_out[g0]": BD, "nvlink_in[g1]": BD, "nic_out[g0]": 2 * BD, "nic_in[g2]": 2 * BD,
        "nvlink_out[g2]": BD, "nvlink_in[g3]": BD}
    assert t.inter_node_bytes == 2 * BD + 2 * BC
    assert t.dispatch.latency_s_F.tolist() == pytest.approx([2e-6, 3e-6, 2e-6])  # profile defaults


def test_a_token_is_sent_once_to_a_gpu_holding_two_of_its_experts():
    topo = _topo()
    table = [[0, -1], [1, 2], [3, -1], [-1, -1]]
    t = traffic_from_ids(_params("direct"), topo, make_placement("x", table, 4, 2), IDS, sources=[0])
    assert t.pair_tokens_GG[0].tolist() == [0, 2, 1, 0]  # token 0 once to GPU 1 for experts 1 and 2
    assert t.slot_tokens_X.tolist() == [0, 0, 1, 2, 1, 0, 0, 0]  # but GPU 1 computes 3 requests
    assert t.gpu_tokens_G.tolist() == [0, 3, 1, 0]


def test_nearest_replica_same_gpu_then_same_node():
    table = [[0], [1], [2], [0]]  # 3 experts on 2 nodes x 2 GPUs: expert 0 on GPU 0 and on GPU 3
    pl = make_placement("x", table, 3, 2)
    ids = np.zeros((4, 5, 1), dtype=np.int64)  # every GPU's tokens choose expert 0
    a = assign(pl, ids, tokens_per_gpu=5)
    assert a.gpu_KN.reshape(4, 5)[:, 0].tolist() == [0, 0, 3, 3]


def test_remote_replicas_are_water_filled():
    topo = _topo(nodes=3, gpn=2)
    # expert 0 twice on node 0, once on node 1; node 2 has none
    table = [[0], [0], [0], [1], [2], [3]]
    pl = make_placement("x", table, 4, 2)
    ids = np.zeros((6, 1000, 1), dtype=np.int64)
    gpu = assign(pl, ids, tokens_per_gpu=1000).gpu_KN.reshape(6, 1000)
    assert (gpu[0] == 0).all() and (gpu[1] == 1).all() and (gpu[3] == 2).all()
    # node 0's replicas get 1 unit each from home, node 1's gets 2: node 2's 2 units level them at 2
    assert set(np.unique(gpu[4:]).tolist()) == {0, 1}
    assert np.mean(gpu[4:] == 0) == pytest.approx(0.5, abs=0.05)
    t = traffic_from_ids(_params("direct", tokens_per_gpu=1000), topo, pl, ids)
    assert t.expert_tokens_E.tolist() == [6000, 0, 0, 0]
    assert t.gpu_tokens_G[:3].tolist() == pytest.approx([2000, 2000, 2000], rel=0.05)


def test_capacity_drops_the_overflow_in_token_order_and_counts_it():
    topo = _topo()
    pl = make_placement("x", ONE_PER_GPU, 4, 2)
    ids = np.array([[[0, 1], [0, 2], [0, 3], [1, 2]]] * 4)  # 16 tokens x 2 = 32 requests; expert 0 gets 12
    t = traffic_from_ids(_params("direct", capacity=1.0, tokens_per_gpu=4), topo, pl, ids)
    cap = 8  # ceil(1.0 * 32 / 4)
    assert t.dropped == 12 - cap
    assert t.slot_tokens_X.tolist() == [8, 8, 8, 4]
    dropped = t.assignment.dropped_KN.T.reshape(4, 4, 2)
    assert dropped[:2].sum() == 0 and dropped[3, :3, 0].all()  # the last source's expert-0 requests go
    assert t.pair_tokens_GG[:, 0].sum() == cap


def test_micro_batches_agree_with_the_whole_batch():
    topo = _topo(nodes=3, gpn=2)
    table = [[0, 1], [2, 3], [0, 4], [5, 1], [0, 2], [3, 5]]
    pl = make_placement("x", table, 6, 2)
    rng = np.random.default_rng(0)
    ids = np.stack([np.stack([rng.choice(6, 3, replace=False) for _ in range(40)]) for _ in range(6)])
    p = _params("hierarchical", tokens_per_gpu=40)
    whole = traffic_from_ids(p, topo, pl, ids)
    halves = [traffic_from_ids(p, topo, pl, ids[:, a:b], tokens=np.arange(a, b)) for a, b in ((0, 25), (25, 40))]
    assert np.array_equal(whole.pair_tokens_GG, sum(h.pair_tokens_GG for h in halves))
    assert np.array_equal(whole.node_tokens_GD, sum(h.node_tokens_GD for h in halves))
    assert np.array_equal(whole.assignment.slot_KN.reshape(3, 6, 40)[:, :, 25:],
                          halves[1].assignment.slot_KN.reshape(3, 6, 15))


def test_slot_requests_of_token_subsets_match_the_subsets_own_traffic():
    """slot_requests_of on a batch's assignment equals each subset's own traffic (dropped requests
    excluded), and subsets that partition the tokens sum to the batch's slot requests."""
    from moe.traffic.counts import slot_requests_of

    topo = _topo(nodes=3, gpn=2)
    pl = make_placement("x", [[0, 1], [2, 3], [0, 4], [5, 1], [0, 2], [3, 5]], 6, 2)
    rng = np.random.default_rng(1)
    ids = np.stack([np.stack([rng.choice(6, 3, replace=False) for _ in range(40)]) for _ in range(6)])
    p = _params("direct", tokens_per_gpu=40)
    whole = traffic_from_ids(p, topo, pl, ids)
    subsets = [np.arange(0, 40, 2), np.arange(1, 40, 2)]  # not ranges: any positions
    got = slot_requests_of(whole.assignment, subsets, len(whole.slot_tokens_X))
    assert np.array_equal(got.sum(axis=0), whole.slot_tokens_X)
    own = traffic_from_ids(p, topo, pl, ids[:, subsets[0]], tokens=subsets[0])
    assert np.array_equal(got[0], own.slot_tokens_X)
    capped = traffic_from_ids(_params("direct", capacity=1.0, tokens_per_gpu=40), topo, pl, ids)
    assert capped.dropped > 0
    assert np.array_equal(slot_requests_of(capped.assignment, subsets, 12).sum(axis=0), capped.slot_tokens_X)


def test_for_source_gives_a_rank_its_destinations():
    topo = _topo()
    t = traffic_from_ids(_params("direct"), topo, make_placement("x", ONE_PER_GPU, 4, 2), IDS, sources=[0])
    mine = t.assignment.for_source(0)
    assert mine["token_T"].tolist() == [0, 1]
    assert mine["expert_TK"].tolist() == [[1, 2], [2, 3]] and mine["gpu_TK"].tolist() == [[1, 2], [2, 3]]
    assert not mine["dropped_TK"].any()
    with pytest.raises(KeyError):
        t.assignment.for_source(1)


def test_bad_ids_are_rejected():
    pl = make_placement("x", ONE_PER_GPU, 4, 2)
    with pytest.raises(SpecError, match="out of range"):
        assign(pl, np.array([[[0, 4]]]), sources_B=[0])
    with pytest.raises(SpecError, match="shape"):
        assign(pl, np.array([[0, 1]]))
