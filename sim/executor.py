"""The SimPy executor: one forward step of every GPU, with compute streams, comm engines and collectives.

Each GPU has a compute stream and a communication engine; each micro-batch of each GPU is a SimPy process
that walks the layers, issuing work the way a host thread issues kernels. Streams execute work in the order
it is issued (CUDA semantics): issuing reserves the stream from max(ready, stream free) for the op's
duration, so an op issued later waits behind it. With `schedule.overlap: false` the communication runs on
the compute stream (nothing overlaps).

Per layer and micro-batch:
  attention (+ its TP collectives) and, in MoE layers, the gate and the shared expert -> dispatch (a
  collective over every GPU: it starts at the latest GPU's ready time, once every comm engine is free,
  plus its sync; each GPU's part then takes its solved offset, sim.network) -> the routed experts, grouped
  kernels that each take the arrival chunks landed by their start -> combine (collective) -> the next
  layer's attention: on the whole batch once it has all arrived, or with `schedule.layer_pipeline` chunk by
  chunk as the results land. Dense layers run attention and the dense FFN. Micro-batches are separate
  processes, so while one communicates another computes (the shared expert overlaps its own dispatch).

A process waits only for collectives to start: it issues everything up to the next collective at once and
tells the collective when it will be ready. The collective starts by a SimPy event at the latest ready
time, so collectives take the comm engines in simulated-time order. SimPy events per GPU per MoE layer and
micro-batch: two process wake-ups (dispatch and combine start), never one per flow or token. Everything
that happens is appended to a `StepRecord`.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

import numpy as np
import simpy

from sim.costs import LayerCosts
from sim.events import CollectiveRecord, Op, StepRecord
from sim.network import PhaseTiming


@dataclass(frozen=True)
class StepPlan:
    """Everything the executor needs, precomputed: per-micro-batch costs and solved phases per pattern."""

    gpus: int
    micro_batches: int
    moe_layer_pattern: tuple[int, ...]
    """Per layer: -1 for a dense layer, else the traffic pattern its MoE part carries."""
    costs: LayerCosts
    dispatch: tuple[PhaseTiming, ...]
    combine: tuple[PhaseTiming, ...]
    expert_GCC1: tuple[np.ndarray, ...]
    """Per pattern: seconds of routed-expert work of one micro-batch per GPU when arrival chunks i..j-1
    run as one grouped kernel ([g, i, j])."""
    overlap: bool
    layer_pipeline: bool


class _Pending:
    __slots__ = ("count", "last_join", "event", "layer", "mb", "op", "pattern", "timing")

    def __init__(self, env: simpy.Environment, layer: int, mb: int, op: Op, pattern: int, timing: PhaseTiming):
        self.count = 0
        self.last_join = 0.0
        self.event = env.event()
        self.layer, self.mb, self.op, self.pattern, self.timing = layer, mb, op, pattern, timing


class Executor:
    def __init__(self, plan: StepPlan):
        self.plan = plan
        self.env = simpy.Environment()
        self.record = StepRecord()
        g = plan.gpus
        self.free = [0.0] * (2 * g)  # stream free times: compute 2g, comm 2g + 1 (or 2g without overlap)
        self.comm_offset = 1 if plan.overlap else 0
        self.pending: dict[tuple[int, int, int], _Pending] = {}
        self.gpu_end = [0.0] * g
        # per pattern, per GPU, as Python lists (the processes read them millions of times)
        self.d_arrive = [t.arrive_GC.tolist() for t in plan.dispatch]
        self.c_arrive = [t.arrive_GC.tolist() for t in plan.combine]
        self.c_share = []
        for t in plan.combine:
            share = t.share_GC.copy()
            share[share.sum(axis=1) <= 0] = 1.0 / share.shape[1]
            self.c_share.append(share.tolist())
        self.runs = [r.tolist() for r in plan.expert_GCC1]
        self._add = self.record.spans.add_row

    # ------------------------------------------------------------------------------------- helpers
    def _issue(self, g: int, ready: float, layer: int, mb: int, parts: list[tuple[int, float]]) -> float:
        """Reserve the compute stream for consecutive ops from `ready`; log them; return the end."""
        free = self.free
        t = ready if ready > free[2 * g] else free[2 * g]
        add = self._add
        for op, dur in parts:
            if dur > 0:
                add((g, layer, mb, op, t, t + dur))
                t += dur
        free[2 * g] = t
        return t

    def _issue_chunks(self, g: int, ready_C, dur_C, layer: int, mb: int, op: int,
                      tail: list[tuple[int, float]]) -> float:
        """A persistent block on the compute stream: chunk c starts when it has arrived and the previous
        chunk is done; `tail` ops follow. Returns the end."""
        t = self.free[2 * g]
        add = self._add
        for ready, dur in zip(ready_C, dur_C, strict=True):
            if ready > t:
                t = ready
            if dur > 0:
                add((g, layer, mb, op, t, t + dur))
                t += dur
        for top, dur in tail:
            if dur > 0:
                add((g, layer, mb, top, t, t + dur))
                t += dur
        self.free[2 * g] = t
        return t

    def _issue_runs(self, g: int, start: float, offset_C, runs, layer: int, mb: int, op: int) -> float:
        """Like `_issue_chunks` for chunks landing at start + offset_C, but every kernel takes all the
        chunks that have landed when it starts (runs[i][j]: seconds for chunks i..j-1 as one kernel)."""
        t = self.free[2 * g]
        add = self._add
        i, n = 0, len(offset_C)
        while i < n:
            ready = start + offset_C[i]
            if ready > t:
                t = ready
            j = i + 1
            while j < n and start + offset_C[j] <= t:
                j += 1
            dur = runs[i][j]
            if dur > 0:
                add((g, layer, mb, op, t, t + dur))
                t += dur
            i = j
        self.free[2 * g] = t
        return t

    def _join(self, layer: int, mb: int, op: Op, pattern: int, timing: PhaseTiming, ready: float) -> simpy.Event:
        """Tell a collective when this GPU will be ready for it; returns the event of its start. Once every
        GPU has told, the start is scheduled at the latest ready time (`_start`)."""
        key = (layer, mb, int(op))
        p = self.pending.get(key)
        if p is None:
            p = self.pending[key] = _Pending(self.env, layer, mb, op, pattern, timing)
        p.count += 1
        if ready > p.last_join:
            p.last_join = ready
        if p.count == self.plan.gpus:
            del self.pending[key]
            self.env.timeout(max(p.last_join - self.env.now, 0.0)).callbacks.append(
                lambda _event, p=p: self._start(p))
        return p.event

    def _start(self, p: _Pending) -> None:
        """At the latest ready time: the collective takes every comm engine when all are free."""
        free, off, timing = self.free, self.comm_offset, p.timing
        start = max(p.last_join, max(free[off::2])) + timing.sync_s
        free[off::2] = (start + timing.done_G).tolist()
        self.record.collectives.append(CollectiveRecord(layer=p.layer, mb=p.mb, op=p.op, pattern=p.pattern,
                                                        last_join_s=p.last_join, start_s=start))
        p.event.succeed(start)

    # ------------------------------------------------------------------------------------- process
    def _micro_batch(self, g: int, mb: int):
        plan, c = self.plan, self.plan.costs
        att, tp = int(Op.ATTENTION), int(Op.ATTENTION_TP)
        pre = [(att, c.attention_s), (tp, c.attention_tp_comm_s)]
        dense_post = [(int(Op.DENSE_FFN), c.dense_ffn_s), (tp, c.attention_tp_comm_s)]
        moe_post = [(int(Op.GATE), c.gate_s)]
        whole = {True: pre + dense_post, False: pre + moe_post}  # keyed by "dense layer"
        shared = [(int(Op.SHARED_EXPERT), c.shared_expert_s)]
        expert = int(Op.EXPERT)
        ready_C = None  # arrivals of the previous combine (absolute times), None before the first layer
        share_C = [1.0]  # token share of each arrival
        for layer, pattern in enumerate(plan.moe_layer_pattern):
            if ready_C is None:
                end = self._issue(g, 0.0, layer, mb, whole[pattern < 0])
            elif plan.layer_pipeline:
                post = dense_post if pattern < 0 else moe_post
                end = self._issue_chunks(g, ready_C, [c.attention_s * s for s in share_C], layer, mb, att,
                                         [(tp, c.attention_tp_comm_s)] + post)
            else:
                end = self._issue(g, ready_C[-1], layer, mb, whole[pattern < 0])
            if pattern < 0:
                ready_C, share_C = [end], [1.0]
                continue
            dispatch = self._join(layer, mb, Op.DISPATCH, pattern, plan.dispatch[pattern], end)
            self._issue(g, end, layer, mb, shared)
            start = yield dispatch
            end = self._issue_runs(g, start, self.d_arrive[pattern][g], self.runs[pattern][g], layer, mb, expert)
            start = yield self._join(layer, mb, Op.COMBINE, pattern, plan.combine[pattern], end)
            ready_C = [start + a for a in self.c_arrive[pattern][g]]
            share_C = self.c_share[pattern][g]
        last = max(ready_C[-1], self.free[2 * g], self.free[2 * g + self.comm_offset])
        self.gpu_end[g] = max(self.gpu_end[g], last)
        if False:  # a generator even for a model without MoE layers (nothing to wait for)
            yield

    def run(self) -> StepRecord:
        plan = self.plan
        for g in range(plan.gpus):
            for mb in range(plan.micro_batches):
                self.env.process(self._micro_batch(g, mb))
        # the run allocates millions of short-lived objects and no reference cycles: the cyclic garbage
        # collector would rescan the growing span log over and over
        enabled = gc.isenabled()
        gc.disable()
        try:
            self.env.run()
        finally:
            if enabled:
                gc.enable()
        if self.pending:  # every GPU joins every collective; a leftover means a bug in the plan
            raise RuntimeError(f"{len(self.pending)} collectives never started")
        self.record.gpu_end = list(self.gpu_end)
        return self.record


def run_step(plan: StepPlan) -> StepRecord:
    """Simulate one forward step; the records of everything that ran."""
    return Executor(plan).run()
