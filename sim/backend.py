"""The `sim` backend: scenario -> routing and traffic (moe) -> solved phases -> SimPy step -> Result.

    moetb run SPEC --backend sim

Steps: build the topology and placement; route `sim.layer_samples` MoE layers (patterns) with the real
routing workload (moe.routing, load balancing over `workload.steps`) and turn each into traffic
(moe.traffic); solve each pattern's dispatch and combine once for a micro-batch (sim.network: every
micro-batch carries 1/micro_batches of every flow, an even split of each GPU pair's tokens); precompute
compute costs (sim.costs); run the executor (sim.executor); reduce the records (sim.reduce). With several
steps, each step is simulated with its own routing (the bias moves between steps); the Result describes
the last step and lists every step's time.
"""

from __future__ import annotations

import time

import numpy as np

from moe.backends import RunOutput
from moe.placement import STRATEGIES, place
from moe.routing import balanced_steps
from moe.spec import sizes, spec_hash
from moe.spec.loader import scenario_dict
from moe.spec.schema import Scenario
from moe.topology import LINK_KINDS, build_topology
from moe.traffic import compute_traffic
from sim.costs import expert_s, layer_costs
from sim.executor import StepPlan, run_step
from sim.network import PhaseTiming, phase_input, solve_phase
from sim.reduce import StepFacts, reduce_result, reduce_trace

AUTO_VARIED_SAMPLES = 8
"""Routed layer samples when layers differ (layer_variation > 0 or a trace) and sim.layer_samples is 0."""


def layer_samples(s: Scenario) -> int:
    moe_layers = s.model.moe_layers
    if moe_layers == 0:
        return 0
    if s.sim.layer_samples:
        return max(1, min(s.sim.layer_samples, moe_layers))
    r = s.workload.routing
    same = r.layer_variation == 0 and r.distribution != "trace"
    return 1 if same else max(1, min(moe_layers, AUTO_VARIED_SAMPLES))


def placement_for(s: Scenario):
    """The scenario's placement; strategies that ignore routing skip sampling it."""
    if s.placement.strategy in ("contiguous", "random"):
        return STRATEGIES[s.placement.strategy](s)
    return place(s)


def expert_runs(s: Scenario, traffic, timing: PhaseTiming, micro_batches: int) -> np.ndarray:
    """(G, C, C + 1) seconds of routed-expert work of one micro-batch when arrival chunks i..j-1 run as
    one grouped kernel ([g, i, j], j > i): the executor merges the chunks that have landed by the time
    it starts. Each slot runs its share of the run's tokens (sim.costs.expert_s)."""
    g = traffic.topology.gpus
    slot_GS = traffic.slot_tokens_X.reshape(g, -1).astype(np.float64) / micro_batches
    chunks = timing.share_GC.shape[1]
    cum_GC1 = np.concatenate([np.zeros((g, 1)), np.cumsum(timing.share_GC, axis=1)], axis=1)
    runs = np.zeros((g, chunks, chunks + 1))
    for i in range(chunks):
        for j in range(i + 1, chunks + 1):
            share_G = cum_GC1[:, j] - cum_GC1[:, i]
            runs[:, i, j] = expert_s(s, slot_GS * share_G[:, None])
    return runs


def build_plan(s: Scenario, topo, traffics: list) -> StepPlan:
    mb = s.schedule.micro_batches
    scale = 1.0 / mb
    dispatch, combine, experts = [], [], []
    record = s.sim.link_timeline
    for t in traffics:
        d = solve_phase(phase_input(t.dispatch, t, topo, s.cluster, "dispatch", sizes.dispatch_bytes_per_token(s),
                                    scale), s.cluster, s.sim.network, topo.gpus, record)
        c = solve_phase(phase_input(t.combine, t, topo, s.cluster, "combine", sizes.combine_bytes_per_token(s),
                                    scale), s.cluster, s.sim.network, topo.gpus, record)
        dispatch.append(d)
        combine.append(c)
        experts.append(expert_runs(s, t, d, mb))
    m = s.model
    n = max(len(traffics), 1)
    pattern = tuple(-1 if i < m.dense_layers else (i - m.dense_layers) % n for i in range(m.layers))
    return StepPlan(gpus=topo.gpus, micro_batches=mb, moe_layer_pattern=pattern,
                    costs=layer_costs(s, s.workload.tokens_per_gpu / mb), dispatch=tuple(dispatch),
                    combine=tuple(combine), expert_GCC1=tuple(experts), overlap=s.schedule.overlap,
                    layer_pipeline=s.schedule.layer_pipeline)


def route_steps(s: Scenario, topo, placement) -> list[list]:
    """Traffic per step per pattern (pattern p routes MoE layer p)."""
    per_pattern = []
    for p in range(layer_samples(s)):
        per_pattern.append([compute_traffic(s, topo, placement, st.ids_BTK) for st in balanced_steps(s, p)])
    if not per_pattern:  # a dense model: nothing to route
        return [[] for _ in range(s.workload.steps)]
    return [list(step) for step in zip(*per_pattern, strict=True)]


def simulate(s: Scenario):
    """(plan, record, facts) of every simulated step, for the backend and for tests."""
    topo = build_topology(s.cluster)
    placement = placement_for(s)
    steps = []
    for traffics in route_steps(s, topo, placement):
        plan = build_plan(s, topo, traffics)
        record = run_step(plan)
        facts = StepFacts(
            tokens_per_gpu=s.workload.tokens_per_gpu, link_names=topo.link_names,
            link_capacity_L=topo.link_capacity_Bps, link_kind_L=topo.link_kind, link_kinds=LINK_KINDS,
            inter_node_bytes_P=[t.inter_node_bytes for t in traffics], imbalance_P=[t.imbalance for t in traffics],
            dropped_P=[t.dropped for t in traffics],
            extra={"network": s.sim.network, "layer_samples": len(traffics), "placement": placement.strategy,
                   "node_tokens_rank0": [float(t.node_tokens_GD[0].sum()) if t.node_tokens_GD is not None
                                         else 0.0 for t in traffics],
                   "received_tokens_rank0": [float(t.received_tokens_G[0]) for t in traffics]})
        steps.append((plan, record, facts, placement))
    return topo, steps


def run(scenario: Scenario, *, ranks: int | None = None) -> RunOutput:
    """Simulate the scenario (ranks is ignored: the simulator is one process)."""
    t0 = time.perf_counter()
    topo, steps = simulate(scenario)
    plan, record, facts, placement = steps[-1]
    result = reduce_result(plan, record, facts, scenario_dict(scenario), spec_hash(scenario),
                           scenario.cluster.name or scenario.cluster.preset)
    result.kv_cache_bytes_per_token = sizes.kv_cache_bytes_per_token(scenario.model)
    result.peak_memory_bytes_per_gpu = sizes.memory_per_gpu(scenario, placement.slots_per_gpu)["total_bytes"]
    result.step_time_s_all = [rec.end_s for _, rec, _, _ in steps] if len(steps) > 1 else []
    trace = reduce_trace(plan, record, facts, topo.gpus_per_node, scenario.sim.link_timeline)
    result.wall_s = time.perf_counter() - t0
    return RunOutput(result=result, trace=trace)
