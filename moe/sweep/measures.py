"""Per-point measures: quantities a sweep computes beside the backend's Result, from the `moe` API.

A measure is a pure function scenario -> {column: value}; its columns enter the table as
`measure.<column>`. They exist for what a Result does not carry: the simulator's Result describes the
last step of a multi-step workload (its `step_time_s_all` lists every step's time, but the load
imbalance and dropped tokens are only the last step's), so `per_step_load` re-routes the steps with
moe.routing (bias updates included) and counts them with moe.traffic.

Shape letters: E experts, G GPUs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from moe.errors import SpecError
from moe.spec.schema import Scenario


def per_step_load(s: Scenario) -> dict[str, Any]:
    """For every step of MoE layer 0 (workload.steps, routed as moe.routing.balanced_steps routes them,
    so the bias moves between steps): `step_gpu_imbalance` = max/mean (token, expert) requests computed
    per GPU after placement and capacity (moe.traffic: the compute load the critical GPU sees),
    `step_expert_imbalance` = max/mean requests per logical expert before placement, and
    `step_dropped_fraction` = requests dropped by the capacity limit / all requests."""
    from moe.placement import place
    from moe.routing import balanced_steps, load_imbalance
    from moe.topology import build_topology
    from moe.traffic import compute_traffic

    topo = build_topology(s.cluster)
    placement = place(s)
    gpu, expert, dropped = [], [], []
    for step in balanced_steps(s, 0):
        t = compute_traffic(s, topo, placement, step.ids_BTK)
        requests = int(np.asarray(step.expert_load_E).sum())
        gpu.append(t.imbalance)
        expert.append(load_imbalance(step.expert_load_E))
        dropped.append(t.dropped / requests if requests else 0.0)
    return {"step_gpu_imbalance": gpu, "step_expert_imbalance": expert, "step_dropped_fraction": dropped}


MEASURES: dict[str, Callable[[Scenario], dict[str, Any]]] = {"per_step_load": per_step_load}


def check_measures(names: tuple[str, ...]) -> None:
    for i, name in enumerate(names):
        if name not in MEASURES:
            raise SpecError(f"measures[{i}]", name, f"unknown measure; known: {', '.join(MEASURES)}")


def run_measures(names: tuple[str, ...], s: Scenario) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        out.update(MEASURES[name](s))
    return out
