"""The `sim` backend: scenario -> routing and traffic (moe) -> solved phases -> SimPy step -> Result.

    moetb run SPEC --backend sim

Steps: build the topology and placement; route `sim.layer_samples` MoE layers (patterns) with the real
routing workload (moe.routing, load balancing over `workload.steps`) and turn each into traffic
(moe.traffic); solve each pattern's dispatch and combine once for a micro-batch (sim.network: every
micro-batch carries 1/micro_batches of every flow, an even split of each GPU pair's tokens; flows inside
a node at the measured curve of the transport, `transport_curve`); precompute compute costs per
micro-batch of the runtime's layout (sim.costs: the op table, else physics) and the routed-expert work
of the runtime being predicted (`resolve_runtime`, `expert_work`); run the executor (sim.executor);
reduce the records (sim.reduce). With several
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
from moe.traffic.counts import slot_requests_of
from sim.costs import (
    expert_issue_s,
    expert_s,
    graph_padding,
    host_factors,
    layer_costs,
    micro_batches,
    setup_s,
    shard_s,
)
from sim.executor import ExpertWork, StepPlan, run_step
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


def resolve_runtime(s: Scenario) -> str:
    """sim.runtime, with auto = messages for a profile whose op table was measured on CPU ranks (the MPI
    emulator's calibration), else grouped."""
    if s.sim.runtime != "auto":
        return s.sim.runtime
    return "messages" if any(p.per_node > 0 for p in s.cluster.op_table) else "grouped"


def transport_curve(s: Scenario, runtime: str) -> str:
    """The measured curve of the transport that runs the phases: MPI messages (p2p), NCCL's all-to-all
    or batched point-to-point (real.transport)."""
    if runtime == "messages":
        return "p2p"
    return "alltoall" if s.real.transport == "all_to_all" else "p2p"


def expert_work(s: Scenario, traffic, timing: PhaseTiming, micro_batches: int, runtime: str,
                slot_mGS: np.ndarray | None = None) -> ExpertWork:
    """Routed-expert seconds of one micro-batch per GPU (sim.costs.expert_s on rows per slot).

    grouped: arrival chunks i..j-1 as one task, each slot running the chunks' share of its rows;
    messages: the GPU's own rows alone (its share of every slot's rows), and each other source's rows
    as one task per source (one expert call per slot per source, as the runtime computes a shard),
    spread over the remote arrival chunks by their token share. Both: every row at once (no overlap).
    A shard's fixed work (sim.costs.shard_s, on the rows it holds) is paid once per computed shard: per key
    in grouped mode (`fixed_G`, with its first task), per source's shard in messages mode (in its task).
    host_G: the host's cost of issuing that work (sim.costs.expert_issue_s).
    `slot_mGS`: each micro-batch's own rows per slot (grouped), given where calls run on padded rows
    (sim.costs.graph_padding): each pads its own, which their mean does not tell (a mean of exactly 2048
    rows pads nothing, micro-batches of 2040 and 2056 rows pad to 2048 and 2176); every task is scaled by
    the mean of the micro-batches' times over the mean rows' time."""
    g = traffic.topology.gpus
    slot_GS = traffic.slot_tokens_X.reshape(g, -1).astype(np.float64) / micro_batches
    pair_GG = traffic.pair_tokens_GG.astype(np.float64) / micro_batches  # [src, dst]: rows of one micro-batch
    rows_G = pair_GG.sum(axis=0)
    share_GC = timing.share_GC
    chunks = share_GC.shape[1]
    cum_GC1 = np.concatenate([np.zeros((g, 1)), np.cumsum(share_GC, axis=1)], axis=1)
    whole = expert_s(s, slot_GS)
    runs = np.zeros((g, chunks, chunks + 1))
    if runtime == "grouped":
        for i in range(chunks):
            for j in range(i + 1, chunks + 1):
                runs[:, i, j] = expert_s(s, slot_GS * (cum_GC1[:, j] - cum_GC1[:, i])[:, None])
        if slot_mGS is not None:
            padded = np.mean([expert_s(s, x) for x in slot_mGS], axis=0)
            runs *= np.divide(padded, whole, out=np.ones_like(whole), where=whole > 0)[:, None, None]
            whole = padded
        return ExpertWork(runs_GCC1=runs, whole_G=whole, host_G=expert_issue_s(s, slot_GS, rows_G),
                          fixed_G=shard_s(s, rows_G))
    frac_GG = pair_GG / np.maximum(rows_G, 1e-300)[None, :]  # [src, dst]: share of dst's rows
    per_src_GG = np.stack([expert_s(s, slot_GS * frac_GG[src][:, None]) + shard_s(s, pair_GG[src])
                           for src in range(g)])
    local = np.diagonal(per_src_GG).copy()
    remote = per_src_GG.sum(axis=0) - local
    for i in range(chunks):
        for j in range(i + 1, chunks + 1):
            runs[:, i, j] = remote * (cum_GC1[:, j] - cum_GC1[:, i])
    if s.schedule.overlap:  # a shard per source, else one of every source's rows
        host = sum(expert_issue_s(s, slot_GS * frac_GG[src][:, None], pair_GG[src]) for src in range(g))
    else:
        host = expert_issue_s(s, slot_GS, rows_G)
    return ExpertWork(runs_GCC1=runs, whole_G=whole + shard_s(s, rows_G), local_G=local,
                      host_G=np.asarray(host, dtype=np.float64))


def build_plan(s: Scenario, topo, traffics: list) -> StepPlan:
    mb = s.schedule.micro_batches
    scale = 1.0 / mb
    runtime = resolve_runtime(s)
    curve = transport_curve(s, runtime)
    dispatch, combine, experts = [], [], []
    record = s.sim.link_timeline
    own_rows = sizes.micro_batch_tokens(s) if mb > 1 and runtime == "grouped" and graph_padding(s) else None
    for t in traffics:
        d = solve_phase(phase_input(t.dispatch, t, topo, s.cluster, "dispatch", sizes.dispatch_bytes_per_token(s),
                                    scale, curve), s.cluster, s.sim.network, topo.gpus, record,
                        chunk_local=runtime == "grouped")
        c = solve_phase(phase_input(t.combine, t, topo, s.cluster, "combine", sizes.combine_bytes_per_token(s),
                                    scale, curve), s.cluster, s.sim.network, topo.gpus, record)
        dispatch.append(d)
        combine.append(c)
        slot_mGS = None if own_rows is None else \
            slot_requests_of(t.assignment, own_rows, len(t.slot_tokens_X)).reshape(mb, topo.gpus, -1)
        experts.append(expert_work(s, t, d, mb, runtime, slot_mGS))
    m = s.model
    n = max(len(traffics), 1)
    pattern = tuple(-1 if i < m.dense_layers else (i - m.dense_layers) % n for i in range(m.layers))
    layout = micro_batches(s)
    rows = float(np.mean(traffics[0].pair_tokens_GG.sum(axis=1))) / mb if traffics else 0.0
    return StepPlan(gpus=topo.gpus, micro_batches=mb, moe_layer_pattern=pattern,
                    costs=tuple(layer_costs(s, x, rows * x.tokens * mb / s.workload.tokens_per_gpu) for x in layout),
                    dispatch=tuple(dispatch), combine=tuple(combine), expert=tuple(experts),
                    overlap=s.schedule.overlap, layer_pipeline=s.schedule.layer_pipeline, runtime=runtime,
                    after=tuple(x.after for x in layout), setup_s=setup_s(s), host_factor_G=host_factors(s),
                    comm_slowdown=s.cluster.comm_compute_slowdown)


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
