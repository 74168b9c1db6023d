"""Traffic: per-token expert choices x placement -> tokens and bytes per GPU pair, per flow and per link.

Shape letters: B source GPUs in a batch, T tokens per source, K = top_k, G GPUs, D nodes, X slots,
E logical experts, L links.

    topo = build_topology(scenario.cluster)
    t = compute_traffic(scenario, topo, placement, ids_BTK)                   # a whole layer
    t = compute_traffic(scenario, topo, placement, ids_BTK[:, a:b], tokens=np.arange(a, b))  # a micro-batch

The most loaded link is the one busiest for longest (bytes / capacity); `max_link_bytes` is its bytes.

Steps: `assign` picks each request's slot (nearest replica) and applies capacity drops; `batch_counts`
counts distinct (token, GPU) and (token, node) pairs; `build_flows` turns the counts into dispatch and
combine flows with their link routes (see moe.traffic.flows for direct and hierarchical paths).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from moe.placement.types import Placement
from moe.spec import sizes
from moe.spec.schema import Scenario
from moe.topology import Topology
from moe.traffic.assign import Assignment, assign, capacity_drops, slot_capacity
from moe.traffic.counts import batch_counts
from moe.traffic.flows import Flows, build_flows

__all__ = ["Assignment", "Flows", "Traffic", "TrafficParams", "assign", "capacity_drops", "compute_traffic",
           "slot_capacity", "traffic_from_ids"]


@dataclass(frozen=True)
class TrafficParams:
    """The part of a scenario traffic depends on."""

    comm: str
    """direct | hierarchical (schedule.comm)."""
    dispatch_bytes_per_token: int
    combine_bytes_per_token: int
    tokens_per_gpu: int
    capacity_factor: float | None = None
    """Set when workload.load_balance.method is capacity."""

    @classmethod
    def from_scenario(cls, s: Scenario) -> TrafficParams:
        lb = s.workload.load_balance
        return cls(comm=s.schedule.comm, dispatch_bytes_per_token=sizes.dispatch_bytes_per_token(s),
                   combine_bytes_per_token=sizes.combine_bytes_per_token(s),
                   tokens_per_gpu=s.workload.tokens_per_gpu,
                   capacity_factor=lb.capacity_factor if lb.method == "capacity" else None)


@dataclass(frozen=True, eq=False)
class Traffic:
    """Traffic of one batch of one MoE layer. Token counts are per batch; bytes include both phases
    where a name does not say dispatch or combine."""

    comm: str
    topology: Topology
    placement: Placement
    assignment: Assignment
    pair_tokens_GG: np.ndarray
    """Distinct tokens of source s that GPU d computes for (dispatch copies s -> d; diagonal: local)."""
    node_tokens_GD: np.ndarray | None
    """Distinct tokens of source s with an expert on node n (hierarchical only; RDMA copies)."""
    slot_tokens_X: np.ndarray
    """(token, expert) requests each slot computes (tokens received per expert slot)."""
    dispatch: Flows
    combine: Flows

    # --------------------------------------------------------------------------- per GPU / expert
    @cached_property
    def gpu_tokens_G(self) -> np.ndarray:
        """(token, expert) requests computed per GPU: the expert compute load."""
        return self.slot_tokens_X.reshape(self.topology.gpus, -1).sum(axis=1)

    @cached_property
    def received_tokens_G(self) -> np.ndarray:
        """Distinct tokens each GPU receives (its own included)."""
        return self.pair_tokens_GG.sum(axis=0)

    @cached_property
    def expert_tokens_E(self) -> np.ndarray:
        """(token, expert) requests computed per logical expert, over all its replicas."""
        x = self.placement.expert_of_slot_X
        used = x >= 0
        return np.bincount(x[used], weights=self.slot_tokens_X[used], minlength=self.placement.experts)

    @property
    def dropped(self) -> int:
        """(token, expert) requests dropped by capacity."""
        return self.assignment.dropped

    @property
    def imbalance(self) -> float:
        """Expert-load imbalance: max / mean computed requests per GPU (1.0 when perfectly even)."""
        mean = self.gpu_tokens_G.mean()
        return float(self.gpu_tokens_G.max() / mean) if mean > 0 else 1.0

    # ------------------------------------------------------------------------------------- links
    @cached_property
    def link_bytes_L(self) -> np.ndarray:
        """Bytes per link over dispatch and combine."""
        return self.dispatch.link_bytes_L + self.combine.link_bytes_L

    @cached_property
    def link_time_s_L(self) -> np.ndarray:
        """Seconds each link is busy over dispatch and combine: bytes / capacity (no latency)."""
        return self.link_bytes_L / self.topology.link_capacity_Bps

    @property
    def max_link_id(self) -> int:
        """The most loaded link: the largest bytes / capacity. Links differ in capacity (NVLink, NIC, a
        leaf's aggregate uplink serves gpus_per_leaf NICs), so raw bytes would rank an aggregate link
        first; among links of one capacity this is the link with the most bytes."""
        return int(np.argmax(self.link_time_s_L))

    @property
    def max_link(self) -> str:
        return self.topology.link_names[self.max_link_id]

    @property
    def max_link_bytes(self) -> float:
        """Bytes (dispatch + combine) on the most loaded link."""
        return float(self.link_bytes_L[self.max_link_id])

    @property
    def max_link_time_s(self) -> float:
        return float(self.link_time_s_L[self.max_link_id])

    def _bytes_on(self, kinds: tuple[int, ...]) -> float:
        mask = np.isin(self.topology.link_kind, kinds)
        return float(self.link_bytes_L[mask].sum())

    @property
    def inter_node_bytes(self) -> float:
        """Bytes leaving their node (on NIC egress links), both phases."""
        return self._bytes_on((2,))

    @property
    def intra_node_bytes(self) -> float:
        """Bytes over NVLink (egress links), both phases."""
        return self._bytes_on((0,))

    def summary(self) -> dict:
        """Plain-data figures (JSON-able)."""
        return {"max_link_bytes": self.max_link_bytes, "max_link": self.max_link,
                "max_link_time_s": self.max_link_time_s,
                "inter_node_bytes": self.inter_node_bytes, "intra_node_bytes": self.intra_node_bytes,
                "expert_load_imbalance": self.imbalance, "dropped_tokens": self.dropped,
                "dispatch_flows": self.dispatch.count, "combine_flows": self.combine.count}


def traffic_from_ids(params: TrafficParams, topo: Topology, placement: Placement, ids_BTK, *,
                     sources=None, tokens=None) -> Traffic:
    """Traffic of a batch: ids_BTK are the experts chosen by tokens `tokens` (default 0..T-1) of source
    GPUs `sources` (default all GPUs)."""
    a = assign(placement, ids_BTK, sources, tokens, params.tokens_per_gpu, params.capacity_factor)
    pair_GG, node_GD, slot_X = batch_counts(a, topo.gpus, topo.gpus_per_node, params.comm == "hierarchical")
    dispatch, combine = build_flows(topo, params.comm, pair_GG, node_GD, params.dispatch_bytes_per_token,
                                    params.combine_bytes_per_token)
    return Traffic(comm=params.comm, topology=topo, placement=placement, assignment=a, pair_tokens_GG=pair_GG,
                   node_tokens_GD=node_GD, slot_tokens_X=slot_X, dispatch=dispatch, combine=combine)


def compute_traffic(scenario: Scenario, topo: Topology, placement: Placement, ids_BTK, *, sources=None,
                    tokens=None) -> Traffic:
    """`traffic_from_ids` with the scenario's comm, dtypes, batch size and capacity limit."""
    return traffic_from_ids(TrafficParams.from_scenario(scenario), topo, placement, ids_BTK,
                            sources=sources, tokens=tokens)
