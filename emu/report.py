"""Rank 0: the per-rank records of a run -> one Result and one merged Chrome trace. Pure functions.

Shape letters: R ranks (= GPUs), N recorded steps, Y layers, P routing patterns, J MoE layers, L links.

- step_time_s: per step the slowest rank's time from the step's barrier to its end; median over steps.
- moe_layer_s: per step and layer, the latest time any rank finished the layer; a layer's time is the
  difference to the previous layer's; mean over MoE layers, median over steps.
- breakdown: the critical rank (most time computing or inside MPI calls), its MoE-layer phase seconds
  per MoE layer: dispatch = FP8 packing + blocked waiting for shards, combine = summing results + blocked
  waiting for them, exposed_comm = all blocked waiting (emu.timing names the spans).
- traffic: the measured token matrix (each rank's rows) per pattern and MoE layer; the emulator sends
  every shard directly, so link bytes come from moe.traffic's direct flows of the measured matrix.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from emu.plan import RunPlan
from emu.timing import COMPUTE_PHASES, WAIT_PHASES
from moe.backends import RunOutput
from moe.result import Breakdown, Result, Trace
from moe.spec import scenario_dict, sizes, spec_hash
from moe.spec.schema import Scenario
from moe.topology import build_topology
from moe.traffic.flows import build_flows


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_memory_GB() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024 / 1e9
    return 8.0


def measured_pairs(records) -> np.ndarray:
    """[P, J, R, R]: row r from rank r."""
    return np.stack([r.pair_rows_PJR for r in records], axis=2)


def bookkeeping_fraction(rec) -> float:
    """Share of a rank's recorded step time spent outside compute spans, waits and MPI calls."""
    total = sum(rec.step_s)
    inside = sum(v for k, v in rec.phase_s.items() if k in COMPUTE_PHASES + WAIT_PHASES) + rec.mpi_s
    return max(0.0, total - inside) / total if total > 0 else 0.0


def link_figures(scenario: Scenario, pairs_PJGG: np.ndarray) -> dict:
    """Mean bytes per MoE layer on each link for direct transfers of the measured matrix."""
    topo = build_topology(scenario.cluster)
    db, cb = sizes.dispatch_bytes_per_token(scenario), sizes.combine_bytes_per_token(scenario)
    link_L = np.zeros(topo.links)
    flat = pairs_PJGG.reshape(-1, *pairs_PJGG.shape[-2:])
    for pair_GG in flat:
        d, c = build_flows(topo, "direct", pair_GG, None, db, cb)
        link_L += d.link_bytes_L + c.link_bytes_L
    link_L /= max(1, len(flat))
    top = int(np.argmax(link_L))
    nic_out = topo.link_kind == 2
    return {"max_link_bytes": float(link_L[top]), "max_link": topo.link_names[top],
            "inter_node_bytes": float(link_L[nic_out].sum())}


def build_output(scenario: Scenario, plan: RunPlan, records: list, transport_name: str, backend: str = "emu",
                 machine: str | None = None) -> RunOutput:
    """`backend` and `machine` name what measured (the real backend reuses this reduction)."""
    m, ranks = scenario.model, len(records)
    step_RN = np.array([r.step_s for r in records])
    step_N = step_RN.max(axis=0)
    step_time = float(np.median(step_N))
    ends_NY = np.array([r.layer_end_s for r in records]).max(axis=0)
    per_layer_NY = np.diff(np.concatenate([np.zeros((len(ends_NY), 1)), ends_NY], axis=1), axis=1)
    moe_layer = float(np.median(per_layer_NY[:, m.dense_layers:].mean(axis=1))) if m.moe_layers else 0.0

    busy_R = [sum(r.phase_s.get(k, 0.0) for k in COMPUTE_PHASES) + r.mpi_s for r in records]
    crit = records[int(np.argmax(busy_R))]
    per = 1.0 / (len(crit.step_s) * max(1, m.moe_layers))
    ph = {k: crit.moe_phase_s.get(k, 0.0) * per for k in COMPUTE_PHASES + WAIT_PHASES}
    breakdown = Breakdown(attention_s=ph["attention"], gate_s=ph["gate"],
                          dispatch_s=ph["dispatch"] + ph["wait_dispatch"], expert_s=ph["expert"],
                          combine_s=ph["combine"] + ph["wait_combine"],
                          exposed_comm_s=ph["wait_dispatch"] + ph["wait_combine"])

    pairs = measured_pairs(records)
    requests_PJR = np.stack([r.requests_PJ for r in records], axis=2).astype(np.float64)
    mean_PJ = requests_PJR.mean(axis=2)
    imbalance = float(np.mean(np.where(mean_PJ > 0, requests_PJR.max(axis=2) / np.maximum(mean_PJ, 1e-30), 1.0)))
    links = link_figures(scenario, pairs) if m.moe_layers else {"max_link_bytes": 0.0, "max_link": "",
                                                                "inter_node_bytes": 0.0}
    t = scenario.workload.tokens_per_gpu
    extra = {
        "transport": transport_name,
        "comm": "direct",
        "ranks": ranks,
        "hosts": sorted({r.host for r in records}),
        "devices": sorted({r.device for r in records}),
        "critical_rank": crit.rank,
        "step_s_per_rank": [[float(x) for x in r.step_s] for r in records],
        "phase_s_per_rank": [{k: float(v) for k, v in r.phase_s.items()} for r in records],
        "mpi_s_per_rank": [float(r.mpi_s) for r in records],
        "bookkeeping_fraction_per_rank": [bookkeeping_fraction(r) for r in records],
        "messages_per_step": [r.messages / max(1, len(r.step_s)) for r in records],
        "host_probe_s": float(np.median([r.host_probe_s for r in records])),
        "host_probe_s_per_rank": [float(r.host_probe_s) for r in records],
        "traffic_matches_model": bool(np.array_equal(pairs, plan.pair_tokens_PJGG)),
        "measured_pair_tokens_total": int(pairs.sum()),
    }
    if ranks <= 64:
        extra["pair_tokens_GG"] = pairs.sum(axis=(0, 1)).tolist()
    result = Result(
        backend=backend, machine=machine or f"{ranks} MPI ranks on {', '.join(extra['hosts'])} ({cpu_name()})",
        spec_hash=spec_hash(scenario), spec=scenario_dict(scenario), step_time_s=step_time,
        tokens_per_s=t * ranks / step_time, tokens_per_s_per_gpu=t / step_time, moe_layer_s=moe_layer,
        breakdown=breakdown, **links, expert_load_imbalance=imbalance,
        dropped_tokens=int(round(plan.dropped_PJ.sum(axis=1).mean())) if m.moe_layers else 0,
        kv_cache_bytes_per_token=sizes.kv_cache_bytes_per_token(m),
        peak_memory_bytes_per_gpu=max(r.peak_memory_bytes for r in records),
        repeats=len(step_N), step_time_s_all=[float(x) for x in step_N], extra=extra)
    trace = Trace(rank_names={r.rank: f"rank {r.rank} ({r.host}, {r.device})" for r in records})
    for r in records:
        trace.spans.extend(r.spans)
    return RunOutput(result=result, trace=trace)
