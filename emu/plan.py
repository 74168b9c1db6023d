"""The routing plan of a run, computed before any step is timed: placement, and for every (step, MoE layer)
each token's expert ids, serving slots and capacity drops, from the same moe.placement / moe.routing /
moe.traffic code the simulator uses.

Shape letters: G GPUs (= ranks), T tokens per GPU, K = top_k, S slots per GPU, J MoE layers, P workload
steps (routing patterns; measured step i uses pattern i mod P).

Every rank computes the whole batch (all GPUs' ids) because capacity drops, replica choice and the
load-balancing bias depend on everyone's tokens; it keeps only its own rows, plus the expected token
matrix of every pattern, which the runtime's measured one must equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moe.placement.types import Placement
from moe.routing import balanced_steps
from moe.spec.schema import Scenario
from moe.topology import build_topology
from moe.traffic import compute_traffic


def placement_for(scenario: Scenario) -> Placement:
    """The scenario's placement (placement.strategy) from moe.placement."""
    from moe.placement import place  # the strategy table lives with the strategies

    return place(scenario)


@dataclass(frozen=True, eq=False)
class LayerRouting:
    """One rank's tokens in one MoE layer at one routing pattern."""

    ids_TK: np.ndarray
    """Logical expert ids (given to the model's gate, which supplies the weights)."""
    slot_TK: np.ndarray
    """Serving slot (gpu * S + local slot) of each choice."""
    keep_TK: np.ndarray
    """False where capacity dropped the choice."""


@dataclass(frozen=True, eq=False)
class RunPlan:
    placement: Placement
    routing_PJ: list[list[LayerRouting]]
    """This rank's routing per pattern and MoE layer."""
    pair_tokens_PJGG: np.ndarray
    """moe.traffic's distinct (token, GPU) counts per pattern and MoE layer (the expected traffic)."""
    dropped_PJ: np.ndarray
    """Requests dropped by capacity over all GPUs."""
    gpu_requests_PJG: np.ndarray
    """(token, expert) requests each GPU computes."""

    @property
    def patterns(self) -> int:
        return len(self.routing_PJ)

    def expert_of_slot(self, rank: int) -> list[int]:
        return [int(e) for e in self.placement.slot_expert_GS[rank]]

    def held_experts(self, rank: int) -> list[int]:
        return [e for e in self.expert_of_slot(rank) if e >= 0]


def build_plan(scenario: Scenario, rank: int, placement: Placement | None = None) -> RunPlan:
    """Route every pattern of every MoE layer for the whole batch; keep rank `rank`'s part."""
    placement = placement_for(scenario) if placement is None else placement
    topo = build_topology(scenario.cluster)
    m, steps = scenario.model, scenario.workload.steps
    g = scenario.cluster.gpus
    routing = [[None] * m.moe_layers for _ in range(steps)]
    pairs = np.zeros((steps, m.moe_layers, g, g), dtype=np.int64)
    dropped = np.zeros((steps, m.moe_layers), dtype=np.int64)
    requests = np.zeros((steps, m.moe_layers, g), dtype=np.int64)
    for j in range(m.moe_layers):
        for bs in balanced_steps(scenario, j, steps):
            traffic = compute_traffic(scenario, topo, placement, bs.ids_BTK)
            mine = traffic.assignment.for_source(rank)
            routing[bs.step][j] = LayerRouting(ids_TK=mine["expert_TK"].astype(np.int64), slot_TK=mine["slot_TK"],
                                               keep_TK=~mine["dropped_TK"])
            pairs[bs.step, j] = traffic.pair_tokens_GG
            dropped[bs.step, j] = traffic.dropped
            requests[bs.step, j] = traffic.gpu_tokens_G
    return RunPlan(placement=placement, routing_PJ=routing, pair_tokens_PJGG=pairs, dropped_PJ=dropped,
                   gpu_requests_PJG=requests)
