"""Records of a simulated step -> the Result record and the Chrome trace. Pure functions.

Shape letters: G GPUs, L links, S solution segments, C arrival chunks.

Definitions (per MoE layer means; the critical GPU is the one with the most time on its compute stream,
host waits included: the straggler the others wait for, as the emulator's and the real backend's critical
rank is the one with the most time computing, emu.report):
- moe_layer_s: (end of the last MoE layer - end of the layer before the first MoE layer) / MoE layers,
  where a layer ends when its last op or collective part ends on any GPU;
- breakdown: summed span durations of the critical GPU over MoE layers and micro-batches / MoE layers, as
  the runtimes define them (emu.report): expert_s includes the shared expert; dispatch_s is the packing
  plus the stream's blocked wait for the micro-batch's shards (Op.WAIT_DISPATCH: a dispatch hidden behind
  other work costs nothing here), combine_s the sum into the tokens plus the wait for the results
  (WAIT_COMBINE); in the host model each phase also holds the stream's waits for the host to issue its
  tasks (HOST_ATTENTION, HOST_GATE, HOST_PACK: the dispatch's planning and the pack, HOST_EXPERT,
  HOST_COMBINE), as a real run's CUDA events hold a host-bound call's issue; the wait for the exchange's
  bookkeeping (Op.HOST) is in no phase, as the runtimes' spans leave it out;
  exposed_comm_s: time in the MoE layers when its compute stream is idle (waiting for data or for a
  collective) / MoE layers; extra.dispatch_transfer_s / combine_transfer_s: the critical GPU's part of
  each dispatch / combine collective, sync included, hidden or not, per MoE layer;
- max_link: the link busy longest per MoE layer (bytes / capacity, dispatch + combine of every
  micro-batch), and max_link_bytes its bytes per MoE layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from moe.result import Breakdown, Result, Sample, Span, Trace
from sim.events import NAMES, Op, StepRecord, is_wait
from sim.executor import StepPlan

TRACE_GPUS = 8
"""GPUs with lanes in the trace: the first node's first GPUs plus the critical one."""
TRACE_LINKS = 8
"""Links with utilisation counters in the trace: the busiest ones."""


@dataclass(frozen=True)
class StepFacts:
    """What the reduction needs besides the records: traffic figures per pattern, topology names."""

    tokens_per_gpu: int
    link_names: tuple[str, ...]
    link_capacity_L: np.ndarray
    link_kind_L: np.ndarray
    link_kinds: tuple[str, ...]
    inter_node_bytes_P: list[float]
    imbalance_P: list[float]
    dropped_P: list[int]
    extra: dict = field(default_factory=dict)


def _layer_ends(plan: StepPlan, record: StepRecord, cols) -> np.ndarray:
    n = len(plan.moe_layer_pattern)
    end = np.zeros(n)
    np.maximum.at(end, cols["layer"], cols["end"])
    for c in record.collectives:
        timing = (plan.dispatch if c.op == Op.DISPATCH else plan.combine)[c.pattern]
        end[c.layer] = max(end[c.layer], c.start_s + timing.duration_s)
    return np.maximum.accumulate(end)


def _link_bytes_per_moe_layer(plan: StepPlan) -> np.ndarray:
    """Mean over MoE layers of the bytes each link carries in one layer (all micro-batches, both phases)."""
    moe = [p for p in plan.moe_layer_pattern if p >= 0]
    if not moe:
        return np.zeros(0)
    per_pattern = [plan.micro_batches * (d.link_bytes_L + c.link_bytes_L) for d, c in zip(plan.dispatch, plan.combine,
                                                                                       strict=True)]
    return np.mean([per_pattern[p] for p in moe], axis=0)


def critical_gpu(record: StepRecord, cols: dict[str, np.ndarray], gpus: int) -> int:
    """The GPU with the most compute-stream time (module docstring); the last to finish where none ran."""
    work = ~is_wait(cols["op"])
    if not work.any():
        return int(np.argmax(record.gpu_end)) if record.gpu_end else 0
    return int(np.argmax(np.bincount(cols["gpu"][work], weights=(cols["end"] - cols["start"])[work],
                                     minlength=gpus)))


def reduce_result(plan: StepPlan, record: StepRecord, facts: StepFacts, spec: dict, spec_hash: str,
                  machine: str) -> Result:
    cols = record.spans.columns()
    step = record.end_s
    gpus = plan.gpus
    moe_layers = [i for i, p in enumerate(plan.moe_layer_pattern) if p >= 0]
    n_moe = max(len(moe_layers), 1)
    ends = _layer_ends(plan, record, cols)
    critical = critical_gpu(record, cols, gpus)
    breakdown = Breakdown()
    moe_layer_s = 0.0
    transfer = {Op.DISPATCH: 0.0, Op.COMBINE: 0.0}  # the critical GPU's part of every collective, sync included
    for c in record.collectives:
        timing = (plan.dispatch if c.op == Op.DISPATCH else plan.combine)[c.pattern]
        transfer[c.op] += (timing.sync_s + float(timing.done_G[critical])) / n_moe
    if moe_layers:
        w0 = ends[moe_layers[0] - 1] if moe_layers[0] > 0 else 0.0
        w1 = ends[moe_layers[-1]]
        moe_layer_s = (w1 - w0) / n_moe
        is_moe = np.zeros(len(plan.moe_layer_pattern), dtype=bool)
        is_moe[moe_layers] = True
        mine = (cols["gpu"] == critical) & is_moe[cols["layer"]]
        dur, op = (cols["end"] - cols["start"])[mine], cols["op"][mine]

        def total(*ops) -> float:
            return float(dur[np.isin(op, [int(o) for o in ops])].sum()) / n_moe

        work = mine & ~is_wait(cols["op"])
        busy = float(np.clip(np.minimum(cols["end"][work], w1) - np.maximum(cols["start"][work], w0), 0, None).sum())
        breakdown = Breakdown(attention_s=total(Op.ATTENTION, Op.ATTENTION_TP, Op.HOST_ATTENTION),
                              gate_s=total(Op.GATE, Op.HOST_GATE),
                              dispatch_s=total(Op.PACK, Op.HOST_PACK, Op.WAIT_DISPATCH),
                              expert_s=total(Op.EXPERT, Op.SHARED_EXPERT, Op.HOST_EXPERT),
                              combine_s=total(Op.COMBINE_SUM, Op.HOST_COMBINE, Op.WAIT_COMBINE),
                              exposed_comm_s=max(w1 - w0 - busy, 0.0) / n_moe)
    link_bytes = _link_bytes_per_moe_layer(plan)
    max_link, max_link_bytes, max_link_busy = "", 0.0, 0.0
    if len(link_bytes) and link_bytes.max() > 0:
        top = int(np.argmax(link_bytes / facts.link_capacity_L))
        max_link, max_link_bytes = facts.link_names[top], float(link_bytes[top])
        max_link_busy = max_link_bytes / float(facts.link_capacity_L[top])
    pattern_of = [plan.moe_layer_pattern[i] for i in moe_layers]
    mean_over_layers = (lambda v: float(np.mean([v[p] for p in pattern_of]))) if pattern_of else (lambda v: 0.0)
    tokens = gpus * facts.tokens_per_gpu
    extra = dict(facts.extra)
    extra.update(_extra(plan, record, facts, link_bytes, step, critical))
    extra["max_link_busy_s"] = max_link_busy  # per MoE layer, at the link's capacity
    # per MoE layer on the critical GPU, hidden or not (the breakdown holds only the waits for them)
    extra["dispatch_transfer_s"], extra["combine_transfer_s"] = transfer[Op.DISPATCH], transfer[Op.COMBINE]
    return Result(
        backend="sim", machine=machine, spec_hash=spec_hash, spec=spec, step_time_s=step,
        tokens_per_s=tokens / step if step > 0 else 0.0,
        tokens_per_s_per_gpu=facts.tokens_per_gpu / step if step > 0 else 0.0, moe_layer_s=moe_layer_s,
        breakdown=breakdown, max_link_bytes=max_link_bytes, max_link=max_link,
        inter_node_bytes=mean_over_layers(facts.inter_node_bytes_P),
        expert_load_imbalance=mean_over_layers(facts.imbalance_P) if pattern_of else 1.0,
        dropped_tokens=int(sum(facts.dropped_P[p] for p in pattern_of)), extra=extra)


def _extra(plan: StepPlan, record: StepRecord, facts: StepFacts, link_bytes: np.ndarray, step: float,
           critical: int) -> dict:
    phases = []
    for p, (d, c) in enumerate(zip(plan.dispatch, plan.combine, strict=True)):
        phases.append({kind: {"sync_s": t.sync_s, "duration_s": t.duration_s, "mean_done_s": float(t.done_G.mean()),
                              "rank0_s": t.sync_s + float(t.done_G[0]), "solver_rounds": t.rounds}
                       for kind, t in (("dispatch", d), ("combine", c))} | {"pattern": p})
    util = {}
    if len(link_bytes) and step > 0:
        n_moe = sum(1 for p in plan.moe_layer_pattern if p >= 0)
        busy_L = link_bytes * n_moe / facts.link_capacity_L / step
        for k, name in enumerate(facts.link_kinds):
            sel = facts.link_kind_L == k
            if sel.any():
                util[name] = {"mean": float(busy_L[sel].mean()), "max": float(busy_L[sel].max())}
    return {"critical_gpu": critical, "micro_batches": plan.micro_batches, "phases": phases,
            "link_utilisation": util, "spans": len(record.spans), "collectives": len(record.collectives)}


def reduce_trace(plan: StepPlan, record: StepRecord, facts: StepFacts, gpus_per_node: int,
                 link_timeline: bool = True) -> Trace:
    """Compute and comm lanes for a few GPUs; utilisation counters of the busiest links."""
    cols = record.spans.columns()
    critical = critical_gpu(record, cols, plan.gpus)
    shown = sorted(set(range(min(TRACE_GPUS, plan.gpus))) | {critical})
    trace = Trace(rank_names={g: f"GPU {g} (node {g // gpus_per_node}, local {g % gpus_per_node})"
                              + (" critical" if g == critical else "") for g in shown})
    for i in np.flatnonzero(np.isin(cols["gpu"], shown)):
        op = Op(int(cols["op"][i]))
        trace.spans.append(Span(rank=int(cols["gpu"][i]), lane="compute", name=NAMES[op],
                                start_s=float(cols["start"][i]), end_s=float(cols["end"][i]),
                                args={"layer": int(cols["layer"][i]), "mb": int(cols["mb"][i])}))
    for c in record.collectives:
        timing = (plan.dispatch if c.op == Op.DISPATCH else plan.combine)[c.pattern]
        for g in shown:
            trace.spans.append(Span(rank=g, lane="comm", name=NAMES[c.op], start_s=c.start_s - timing.sync_s,
                                    end_s=c.start_s + float(timing.done_G[g]),
                                    args={"layer": c.layer, "mb": c.mb, "pattern": c.pattern}))
    link_bytes = _link_bytes_per_moe_layer(plan)
    if not link_timeline or not len(link_bytes):
        return trace
    busiest = np.argsort(-(link_bytes / facts.link_capacity_L))[:TRACE_LINKS]
    for c in record.collectives:
        timing = (plan.dispatch if c.op == Op.DISPATCH else plan.combine)[c.pattern]
        t_S1, b_SL = timing.seg_t_S1, timing.seg_bytes_SL
        if not len(b_SL):
            continue
        width_S = np.maximum(np.diff(t_S1), 1e-15)
        for link in busiest:
            util_S = b_SL[:, link] / (facts.link_capacity_L[link] * width_S)
            name = facts.link_names[link]
            for s in range(len(util_S)):
                trace.samples.append(Sample(group="links", name=name, t_s=c.start_s + float(t_S1[s]),
                                            values={"utilisation": round(float(util_S[s]), 4)}))
            trace.samples.append(Sample(group="links", name=name, t_s=c.start_s + float(t_S1[-1]),
                                        values={"utilisation": 0.0}))
    return trace
