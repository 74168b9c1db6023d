"""moe.topology: link layout, capacities from the profile, and routes of single transfers."""

from __future__ import annotations

import numpy as np
import pytest

from moe.spec.schema import Cluster
from moe.topology import LINK_KINDS, build_topology


def _cluster(**kw) -> Cluster:
    base = dict(nodes=4, gpus_per_node=2, nvlink_GBps=160.0, nic_GBps=50.0, nvlink_latency_us=2.0,
                nic_latency_us=3.0, gpus_per_leaf=2, fabric_oversubscription=2.0)
    return Cluster(**{**base, **kw})


def _route(topo, src, dst):
    indptr, links = topo.route([src], [dst])
    return [topo.link_names[i] for i in links[indptr[0]:indptr[1]]]


def test_link_layout_and_capacities():
    topo = build_topology(_cluster())
    g = 8
    # 4 kinds per GPU, then up and down per (rail, leaf): 2 rails x 2 leaves
    assert topo.links == 4 * g + 2 * 2 * 2 == len(topo.link_names)
    assert [LINK_KINDS[k] for k in topo.link_kind[[0, g, 2 * g, 3 * g, 4 * g, 4 * g + 4]]] == list(LINK_KINDS)
    assert topo.link_capacity_Bps[topo.nvlink_out(3)] == 160e9
    assert topo.link_capacity_Bps[topo.nic_in(3)] == 50e9
    # a leaf serves 2 NICs of its rail; uplink = 2 x 50 GB/s / oversubscription 2
    assert topo.link_capacity_Bps[topo.leaf_up(0)] == pytest.approx(50e9)
    assert topo.link_latency_s[topo.nvlink_out(0)] == pytest.approx(2e-6)
    assert topo.link_latency_s[topo.nic_out(0)] == pytest.approx(3e-6)
    assert topo.link_latency_s[topo.nic_in(0)] == 0 and topo.link_latency_s[topo.leaf_up(0)] == 0


def test_last_leaf_with_fewer_nics_has_a_smaller_uplink():
    topo = build_topology(_cluster(nodes=3, gpus_per_leaf=2, fabric_oversubscription=1.0))
    # rail 0: leaf 0 serves nodes 0-1, leaf 1 serves node 2 only
    assert topo.link_capacity_Bps[topo.leaf_up(0)] == pytest.approx(100e9)
    assert topo.link_capacity_Bps[topo.leaf_up(4)] == pytest.approx(50e9)


def test_routes_inside_a_node_same_leaf_other_leaf_other_rail():
    topo = build_topology(_cluster())
    assert _route(topo, 0, 1) == ["nvlink_out[g0]", "nvlink_in[g1]"]
    assert _route(topo, 0, 2) == ["nic_out[g0]", "nic_in[g2]"]  # node 1, same rail 0, same leaf 0
    assert _route(topo, 0, 4) == ["nic_out[g0]", "leaf_up[rail0.leaf0]", "leaf_down[rail0.leaf1]", "nic_in[g4]"]
    assert _route(topo, 0, 3) == ["nic_out[g0]", "leaf_up[rail0.leaf0]", "leaf_down[rail1.leaf0]", "nic_in[g3]"]
    assert _route(topo, 5, 5) == []


def test_route_is_vectorized_csr_and_link_bytes_sum_over_hops():
    topo = build_topology(_cluster())
    src, dst = np.array([0, 0, 0, 6]), np.array([1, 2, 4, 6])
    indptr, links = topo.route(src, dst)
    assert indptr.tolist() == [0, 2, 4, 8, 8]
    per_link = topo.link_bytes(src, dst, [10.0, 20.0, 30.0, 99.0])
    assert per_link.sum() == pytest.approx(2 * 10 + 2 * 20 + 4 * 30)
    assert per_link[topo.nic_out(0)] == pytest.approx(50.0)
    assert per_link[topo.leaf_down(4)] == pytest.approx(30.0)


def test_geometry_helpers():
    topo = build_topology(_cluster(nodes=6, gpus_per_node=4, gpus_per_leaf=4))
    assert topo.gpus == 24 and topo.leaves_per_rail == 2
    assert topo.node_of(13) == 3 and topo.local_of(13) == 1 and topo.leaf_of(13) == 0 and topo.leaf_of(17) == 1
