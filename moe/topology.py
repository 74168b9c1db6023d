"""The cluster as links: NVLink per GPU, one NIC per GPU on its rail, a leaf/spine fabric per rail.

Shape letters: G GPUs, F flows (point-to-point transfers between two GPUs), L links, R rails
(= gpus_per_node: the NIC of local GPU r sits on rail r), V leaves per rail.

GPU g lives on node g // gpus_per_node with local index (rail) g % gpus_per_node. A node's GPUs share an
NVSwitch: each GPU has one NVLink egress and one NVLink ingress link of `cluster.nvlink_GBps`. Each GPU has
one NIC (egress and ingress links of `cluster.nic_GBps`) on the rail of its local index. Each rail is a
leaf/spine network: a leaf switch serves the NICs of `cluster.gpus_per_leaf` consecutive nodes on that rail,
and has one aggregate uplink and one aggregate downlink to the spine of capacity
(NICs under the leaf x nic_GBps) / fabric_oversubscription.

A transfer between two GPUs (`Topology.route`) uses:
- same node: nvlink_out[src], nvlink_in[dst];
- other node, same rail and same leaf: nic_out[src], nic_in[dst];
- otherwise (another leaf, or another rail: rails meet only at the spine): nic_out[src],
  leaf_up[rail(src), leaf(src)], leaf_down[rail(dst), leaf(dst)], nic_in[dst].
`hierarchical` communication (DeepEP's normal kernels) is built from these single transfers by
`moe.traffic`: RDMA to the GPU with the sender's local index on the target node (same rail), then NVLink.

Latency: the profile gives one latency per transfer kind (nvlink_latency_us, nic_latency_us), charged on
the egress link (nvlink_out, nic_out); ingress and leaf links carry 0 so that the sum over a route's links
is the transfer's latency. Capacities are bytes per second per direction (GB = 1e9 bytes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from moe.spec.schema import Cluster

LINK_KINDS = ("nvlink_out", "nvlink_in", "nic_out", "nic_in", "leaf_up", "leaf_down")
"""Link kind names, indexed by `Topology.link_kind`."""


@dataclass(frozen=True, eq=False)
class Topology:
    """Links of a cluster as parallel arrays; link ids are positions in them.

    Layout of link ids: [0, G) nvlink_out, [G, 2G) nvlink_in, [2G, 3G) nic_out, [3G, 4G) nic_in,
    then R*V leaf_up links (rail-major), then R*V leaf_down links.
    """

    nodes: int
    gpus_per_node: int
    gpus_per_leaf: int
    """Nodes (one NIC each) under one leaf switch of a rail."""
    link_capacity_Bps: np.ndarray
    """Capacity per link, bytes per second per direction."""
    link_latency_s: np.ndarray
    """Latency charged per link (egress links carry the transfer latency, the others 0)."""
    link_kind: np.ndarray = field(repr=False)
    """Index into LINK_KINDS per link."""

    # ------------------------------------------------------------------------------------ geometry
    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def leaves_per_rail(self) -> int:
        return math.ceil(self.nodes / self.gpus_per_leaf)

    @property
    def links(self) -> int:
        return len(self.link_capacity_Bps)

    def node_of(self, gpu):
        """Node of each GPU id (int or array)."""
        return np.asarray(gpu) // self.gpus_per_node

    def local_of(self, gpu):
        """Local index (= rail) of each GPU id (int or array)."""
        return np.asarray(gpu) % self.gpus_per_node

    def leaf_of(self, gpu):
        """Leaf (within its rail) of each GPU id (int or array)."""
        return self.node_of(gpu) // self.gpus_per_leaf

    # ----------------------------------------------------------------------------------- link ids
    def nvlink_out(self, gpu):
        return np.asarray(gpu)

    def nvlink_in(self, gpu):
        return self.gpus + np.asarray(gpu)

    def nic_out(self, gpu):
        return 2 * self.gpus + np.asarray(gpu)

    def nic_in(self, gpu):
        return 3 * self.gpus + np.asarray(gpu)

    def leaf_up(self, gpu):
        """Uplink of the leaf that serves this GPU's NIC."""
        return 4 * self.gpus + self.local_of(gpu) * self.leaves_per_rail + self.leaf_of(gpu)

    def leaf_down(self, gpu):
        """Downlink of the leaf that serves this GPU's NIC."""
        return (4 * self.gpus + self.gpus_per_node * self.leaves_per_rail
                + self.local_of(gpu) * self.leaves_per_rail + self.leaf_of(gpu))

    @cached_property
    def link_names(self) -> tuple[str, ...]:
        """Human names: 'nvlink_out[g12]', 'nic_in[g40]', 'leaf_up[rail3.leaf1]', ..."""
        g = self.gpus
        names = [f"{kind}[g{i}]" for kind in LINK_KINDS[:4] for i in range(g)]
        for kind in LINK_KINDS[4:]:
            names += [f"{kind}[rail{r}.leaf{v}]" for r in range(self.gpus_per_node)
                      for v in range(self.leaves_per_rail)]
        return tuple(names)

    # ------------------------------------------------------------------------------------- routes
    def route(self, src_F, dst_F) -> tuple[np.ndarray, np.ndarray]:
        """Links of many single transfers at once, as CSR: links of transfer f are
        `links_X[indptr_F1[f]:indptr_F1[f + 1]]`, in path order. src == dst gives an empty route."""
        src_F = np.asarray(src_F, dtype=np.int64).ravel()
        dst_F = np.asarray(dst_F, dtype=np.int64).ravel()
        g, r = self.gpus, self.gpus_per_node
        node_s, node_d = src_F // r, dst_F // r
        inter = node_s != node_d
        moving = src_F != dst_F
        spine = inter & ((src_F - node_s * r != dst_F - node_d * r)
                         | (node_s // self.gpus_per_leaf != node_d // self.gpus_per_leaf))
        count_F = 2 * moving + 2 * spine
        indptr_F1 = np.zeros(len(src_F) + 1, dtype=np.int64)
        np.cumsum(count_F, out=indptr_F1[1:])
        links_X = np.empty(indptr_F1[-1], dtype=np.int64)
        start, end = indptr_F1[:-1][moving], indptr_F1[1:][moving] - 1
        hop_inter = inter[moving]
        links_X[start] = src_F[moving] + np.where(hop_inter, 2 * g, 0)  # nvlink_out or nic_out
        links_X[end] = dst_F[moving] + np.where(hop_inter, 3 * g, g)  # nvlink_in or nic_in
        first = indptr_F1[:-1][spine]
        links_X[first + 1] = self.leaf_up(src_F[spine])
        links_X[first + 2] = self.leaf_down(dst_F[spine])
        return indptr_F1, links_X

    def link_bytes(self, src_F, dst_F, bytes_F) -> np.ndarray:
        """Bytes per link (length L) when transfer f carries bytes_F[f] from src_F[f] to dst_F[f]."""
        indptr_F1, links_X = self.route(src_F, dst_F)
        per_hop = np.repeat(np.asarray(bytes_F, dtype=np.float64), np.diff(indptr_F1))
        return np.bincount(links_X, weights=per_hop, minlength=self.links)


def build_topology(cluster: Cluster) -> Topology:
    """Links and their capacities from a cluster profile (see the module docstring for the model)."""
    g, r = cluster.gpus, cluster.gpus_per_node
    leaves = math.ceil(cluster.nodes / cluster.gpus_per_leaf)
    nvlink_Bps, nic_Bps = cluster.nvlink_GBps * 1e9, cluster.nic_GBps * 1e9
    nics_per_leaf_V = np.minimum(cluster.gpus_per_leaf, cluster.nodes - np.arange(leaves) * cluster.gpus_per_leaf)
    leaf_Bps_V = nics_per_leaf_V * nic_Bps / cluster.fabric_oversubscription
    capacity_L = np.concatenate([np.full(2 * g, nvlink_Bps), np.full(2 * g, nic_Bps),
                                 np.tile(leaf_Bps_V, 2 * r)])
    latency_L = np.zeros(len(capacity_L))
    latency_L[:g] = cluster.nvlink_latency_us * 1e-6
    latency_L[2 * g:3 * g] = cluster.nic_latency_us * 1e-6
    kind_L = np.concatenate([np.repeat(np.arange(4), g), np.repeat([4, 5], r * leaves)]).astype(np.int8)
    return Topology(nodes=cluster.nodes, gpus_per_node=r, gpus_per_leaf=cluster.gpus_per_leaf,
                    link_capacity_Bps=capacity_L, link_latency_s=latency_L, link_kind=kind_L)
