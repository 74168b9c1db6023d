"""The SimPy executor: one forward step of every GPU, each a list scheduler like the runtime's event loop.

Each GPU has a compute stream and a communication engine. A GPU's process is the runtime's loop
(emu/runtime.py): whenever its stream is free it starts the most urgent runnable task, and when nothing
is runnable it sleeps until something lands. Tasks of micro-batch i at layer l:
  front     attention (+ TP collectives); then, in a dense layer, the dense FFN (the layer is done), in a
            MoE layer the gate and the packing of the dispatch, which is posted at its end (the GPU joins
            the dispatch collective) once the host has planned and posted it, then the shared expert
            while the shards travel;
  shards    routed-expert work on rows that have landed (below);
  combine   once the combine's results are all in: the sum into the tokens; the layer is done.
Order of urgency, by `runtime` (the plan's, from sim.runtime):
  messages  (the MPI emulator: one message per peer) shards > combine > front. A GPU computes its own
            rows as soon as it has posted them, each arrival chunk as it lands (with overlap), and sends
            the results of a (layer, micro-batch) once it has computed all of them;
  grouped   (collectives: DeepEP, NCCL; the real backend) front > shards > combine; MoE fronts in key
            order (layer-major, then micro-batch) and a key's shards before the next key's, as a device
            runs work in the order the host queued it. Expert work takes the arrival chunks that have
            landed when it starts, as one grouped kernel (`expert_runs` in sim.backend).
Switches, as the runtime reads them:
  overlap false          one micro-batch in flight at a time (no front while another micro-batch's
                         exchange is open) and a layer's shards computed at once, after all have landed;
  layer_pipeline false   a micro-batch starts layer l + 1 only when every micro-batch finished layer l;
  chunked prefill        micro-batch i runs a layer's attention only after micro-batch `after[i]` did.
The host (sim.costs' host model): each GPU's host issues the tasks in the order its stream runs them, each
taking its issue cost (`LayerCosts.host_*`, `ExpertWork.host_G`, times its `StepPlan.host_factor_G`) from
the end of the previous one; a task's work on the stream cannot end before its issue, and the stream
idles until then (the task's own HOST_ kind; Op.HOST for the exchange's bookkeeping). Without the host model the
costs are 0 and the host always keeps up.
When nothing is runnable the stream sleeps until something lands, and that wait is recorded against the
exchange it waits for (Op.WAIT_DISPATCH / WAIT_COMBINE, the runtimes' blocked waits).
Dispatch and combine are collectives over every GPU: one starts at the latest GPU's ready time, once
every comm engine is free, plus its sync; each GPU's part then takes its solved offsets (sim.network).
While a GPU's part runs, its communication kernels hold SMs and HBM bandwidth: compute inside that window
takes 1 + `cluster.comm_compute_slowdown` times as long (`stretched`; calibrated by real.interference).
SimPy events per GPU per layer and micro-batch: one per task that takes time, and a wake-up when a
collective starts or an awaited chunk lands; never one per flow or token. Everything that ran is
appended to a `StepRecord`.
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass, field

import numpy as np
import simpy

from sim.costs import LayerCosts
from sim.events import CollectiveRecord, Op, StepRecord
from sim.network import PhaseTiming

RUNTIMES = ("grouped", "messages")
ATTENTION_TP = int(Op.ATTENTION_TP)
"""A TP collective on the stream: communication itself, not slowed by the transfers (`stretched`)."""


def stretched(start: float, work: float, windows: list[tuple[float, float]], slowdown: float) -> float:
    """When a compute task of `work` seconds (alone) started at `start` ends: inside each of the GPU's
    transfer windows (disjoint, ascending) it runs 1 + slowdown times slower (`StepPlan.comm_slowdown`)."""
    t, left = start, work
    for a, b in windows:
        if b <= t:
            continue
        if a > t:
            if t + left <= a:
                return t + left
            left -= a - t
            t = a
        inside = (b - t) / (1 + slowdown)  # the work done by the window's end
        if left <= inside:
            return t + left * (1 + slowdown)
        left -= inside
        t = b
    return t + left


@dataclass(frozen=True)
class ExpertWork:
    """Routed-expert seconds of one micro-batch per GPU for one traffic pattern."""

    runs_GCC1: np.ndarray
    """Arrival chunks i..j-1 of the dispatch as one task ([g, i, j], j > i)."""
    whole_G: np.ndarray
    """Every row at once (without overlap)."""
    local_G: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """messages: the GPU's own rows, ready when it posts them (the chunks then hold only remote rows);
    empty in grouped mode, where the chunks hold them."""
    host_G: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """Host seconds of issuing one micro-batch's expert calls on each GPU (empty: none)."""
    fixed_G: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """grouped: device seconds of a key's shard fixed work on each GPU, with its first task (empty: none)."""


@dataclass(frozen=True)
class StepPlan:
    """Everything the executor needs, precomputed: per-micro-batch costs and solved phases per pattern."""

    gpus: int
    micro_batches: int
    moe_layer_pattern: tuple[int, ...]
    """Per layer: -1 for a dense layer, else the traffic pattern its MoE part carries."""
    costs: tuple[LayerCosts, ...]
    """Per micro-batch."""
    dispatch: tuple[PhaseTiming, ...]
    combine: tuple[PhaseTiming, ...]
    expert: tuple[ExpertWork, ...]
    overlap: bool
    layer_pipeline: bool
    runtime: str = "grouped"
    after: tuple[int | None, ...] = ()
    """Per micro-batch: the one whose attention of a layer must come first (chunked prefill), or None."""
    setup_s: float = 0.0
    """Per-step setup on every GPU before the first layer."""
    host_factor_G: tuple[float, ...] = ()
    """Per GPU, its host's issue costs relative to the costs' (sim.costs' host model; empty: 1)."""
    comm_slowdown: float = 0.0
    """Compute inside one of its GPU's transfer windows takes 1 + this times as long
    (`cluster.comm_compute_slowdown`)."""


class _Pending:
    __slots__ = ("count", "last_join", "layer", "mb", "op", "pattern", "timing")

    def __init__(self, layer: int, mb: int, op: Op, pattern: int, timing: PhaseTiming):
        self.count = 0
        self.last_join = 0.0
        self.layer, self.mb, self.op, self.pattern, self.timing = layer, mb, op, pattern, timing


class _Ex:
    """A (layer, micro-batch) exchange on one GPU, from its post until its combine is summed."""

    __slots__ = ("chunk", "done", "issued", "layer", "local", "mb", "pattern", "post")

    def __init__(self, layer: int, mb: int, pattern: int, post: float, local: bool):
        self.layer, self.mb, self.pattern, self.post = layer, mb, pattern, post
        self.chunk = 0  # arrival chunks computed
        self.local = local  # own rows still to compute (messages)
        self.done = False  # every shard computed and the combine joined
        self.issued = False  # the host issued its expert calls (with its first shard task)


class _GpuState:
    """One GPU's view of its micro-batches (the runtime's loop state)."""

    __slots__ = ("after", "att_done", "busy_until", "ex_of", "first_moe", "g", "host_factor", "host_t", "layer",
                 "n_layers", "next_key")

    def __init__(self, g: int, plan: StepPlan):
        n_mb = plan.micro_batches
        self.g = g
        self.n_layers = len(plan.moe_layer_pattern)
        self.first_moe = next((i for i, p in enumerate(plan.moe_layer_pattern) if p >= 0), self.n_layers)
        self.after = plan.after or (None,) * n_mb
        self.layer = [0] * n_mb  # the layer each micro-batch is in
        self.att_done = [-1] * n_mb  # the last layer whose attention it ran
        self.ex_of: list[_Ex | None] = [None] * n_mb  # its open exchange
        self.next_key = 0  # grouped: the next MoE front's key
        self.busy_until = 0.0
        self.host_t = plan.setup_s  # when the host has issued everything picked so far
        self.host_factor = plan.host_factor_G[g] if plan.host_factor_G else 1.0


class Executor:
    def __init__(self, plan: StepPlan):
        if plan.runtime not in RUNTIMES:
            raise ValueError(f"runtime {plan.runtime!r} is not one of {RUNTIMES}")
        self.plan = plan
        self.env = simpy.Environment()
        self.record = StepRecord()
        g = plan.gpus
        self.comm_free = [0.0] * g
        self.pending: dict[tuple[int, int, int], _Pending] = {}
        self.started: dict[tuple[int, int, int], float] = {}
        self.sleeping: list[simpy.Event | None] = [None] * g
        self.gpu_end = [0.0] * g
        self.windows: list[list[tuple[float, float]]] = [[] for _ in range(g)]
        """Per GPU, the (start, end) of its part of each collective that started and may still run."""
        # per pattern, per GPU, as Python lists (the processes read them millions of times)
        self.d_arrive = [t.arrive_GC.tolist() for t in plan.dispatch]
        self.c_last = [t.arrive_GC[:, -1].tolist() for t in plan.combine]
        self.runs = [w.runs_GCC1.tolist() for w in plan.expert]
        self.whole = [w.whole_G.tolist() for w in plan.expert]
        self.local = [w.local_G.tolist() if len(w.local_G) else None for w in plan.expert]
        self.host_expert = [w.host_G.tolist() if len(w.host_G) else [0.0] * g for w in plan.expert]
        self.fixed = [w.fixed_G.tolist() if len(w.fixed_G) else [0.0] * g for w in plan.expert]
        self._add = self.record.spans.add_row

    # ------------------------------------------------------------------------------------- collectives
    def _join(self, layer: int, mb: int, op: Op, pattern: int, timing: PhaseTiming, ready: float) -> None:
        """Tell a collective when this GPU will be ready for it; once every GPU has told, its start is
        scheduled at the latest ready time (`_start`)."""
        key = (layer, mb, int(op))
        p = self.pending.get(key)
        if p is None:
            p = self.pending[key] = _Pending(layer, mb, op, pattern, timing)
        p.count += 1
        if ready > p.last_join:
            p.last_join = ready
        if p.count == self.plan.gpus:
            del self.pending[key]
            self.env.timeout(max(p.last_join - self.env.now, 0.0)).callbacks.append(
                lambda _event, p=p: self._start(p))

    def _start(self, p: _Pending) -> None:
        """At the latest ready time: the collective takes every comm engine when all are free."""
        timing = p.timing
        start = max(p.last_join, max(self.comm_free)) + timing.sync_s
        self.comm_free = (start + timing.done_G).tolist()
        if self.plan.comm_slowdown > 0:
            now = self.env.now
            for g, end in enumerate(self.comm_free):
                self.windows[g] = [w for w in self.windows[g] if w[1] > now] + [(start, end)]
        self.started[(p.layer, p.mb, int(p.op))] = start
        self.record.collectives.append(CollectiveRecord(layer=p.layer, mb=p.mb, op=p.op, pattern=p.pattern,
                                                        last_join_s=p.last_join, start_s=start))
        for g, ev in enumerate(self.sleeping):  # every GPU takes part: wake the idle ones to look
            if ev is not None:
                self.sleeping[g] = None
                if not ev.triggered:
                    ev.succeed()

    def _sleep(self, g: int, until: float) -> simpy.Event:
        """An event that fires at `until` (if finite) or when the next collective starts."""
        ev = self.env.event()
        self.sleeping[g] = ev
        if until < math.inf:
            self.env.timeout(max(until - self.env.now, 0.0)).callbacks.append(
                lambda _e, ev=ev: None if ev.triggered else ev.succeed())
        return ev

    # ------------------------------------------------------------------------------------- tasks
    def _spans(self, g: int, layer: int, mb: int, t: float, parts) -> float:
        add, windows = self._add, self.windows[g]
        for op, dur in parts:
            if dur > 0:
                end = stretched(t, dur, windows, self.plan.comm_slowdown) \
                    if windows and op != ATTENTION_TP else t + dur
                add((g, layer, mb, op, t, end))
                t = end
        return t

    def _issued(self, st: _GpuState, layer: int, mb: int, t: float, host_s: float, wait: Op) -> float:
        """The host issues a task's work, taking host_s from the end of its previous issue (it runs ahead of
        the device and never waits for it); the stream's work on it, ending at t, cannot end before: the
        stream then idles (`wait`, the task's Op.HOST kind) until the host is done. Returns when the task
        ends on the stream."""
        st.host_t += host_s * st.host_factor
        if st.host_t <= t:
            return t
        self._add((st.g, layer, mb, int(wait), t, st.host_t))
        return st.host_t

    def _shard_task(self, g: int, ex: _Ex, now: float, first: bool):
        """(seconds, final) of the routed-expert work of `ex` runnable at `now`, or None. Marks it done."""
        plan, p = self.plan, ex.pattern
        d = self.started.get((ex.layer, ex.mb, int(Op.DISPATCH)))
        arrive = self.d_arrive[p][g]
        chunks = len(arrive)
        if not plan.overlap:  # every row at once, after all have landed
            if d is None or d + arrive[-1] > now or ex.post > now:
                return None
            ex.chunk, ex.local = chunks, False
            return self.whole[p][g], True
        if plan.runtime == "grouped" and not first:
            return None  # the device runs a key's shards before the next key's
        j = ex.chunk
        if d is not None:
            while j < chunks and d + arrive[j] <= now:
                j += 1
        own = ex.local and ex.post <= now
        if j == ex.chunk and not own:
            return None
        dur = (self.local[p][g] if own else 0.0) + (self.runs[p][g][ex.chunk][j] if j > ex.chunk else 0.0)
        ex.chunk = j
        if own:
            ex.local = False
        return dur, ex.chunk == chunks and not ex.local

    def _next_time(self, g: int, exs: list[_Ex]) -> tuple[float, _Ex | None]:
        """The earliest known future instant at which something of this GPU lands, and the exchange it
        belongs to (without one: the earliest exchange in flight, whose collective has not started)."""
        t, of = math.inf, None
        for ex in exs:
            if not ex.done:
                d = self.started.get((ex.layer, ex.mb, int(Op.DISPATCH)))
                arrive = self.d_arrive[ex.pattern][g]
                if d is not None:
                    c = len(arrive) - 1 if not self.plan.overlap else min(ex.chunk, len(arrive) - 1)
                    lands = d + arrive[c]
                    if lands < t:
                        t, of = lands, ex
            else:
                c = self.started.get((ex.layer, ex.mb, int(Op.COMBINE)))
                lands = math.inf if c is None else c + self.c_last[ex.pattern][g]
                if lands < t:
                    t, of = lands, ex
        if of is None and exs:
            of = min(exs, key=lambda e: (e.layer, e.mb))
        return t, of

    # ------------------------------------------------------------------------------------- process
    def _pick_shard(self, st: _GpuState, now: float) -> bool:
        """Start the routed-expert work runnable now (earliest key first), if any."""
        first = True
        for e in sorted((e for e in st.ex_of if e is not None and not e.done), key=lambda e: (e.layer, e.mb)):
            got = self._shard_task(st.g, e, now, first)
            first = False
            if got is not None:
                dur, final = got
                end = self._spans(st.g, e.layer, e.mb, now,
                                  [(int(Op.EXPERT), dur + (0.0 if e.issued else self.fixed[e.pattern][st.g]))])
                if not e.issued:  # the key's shard: its fixed work and the host's loop, once
                    e.issued = True
                    end = self._issued(st, e.layer, e.mb, end, self.host_expert[e.pattern][st.g], Op.HOST_EXPERT)
                if final:
                    e.done = True
                    self._join(e.layer, e.mb, Op.COMBINE, e.pattern, self.plan.combine[e.pattern], end)
                st.busy_until = end
                return True
        return False

    def _pick_combine(self, st: _GpuState, now: float) -> bool:
        """Sum a micro-batch whose results are all in (lowest index first); its layer is then done."""
        for i, e in enumerate(st.ex_of):
            if e is not None and e.done:
                c = self.started.get((e.layer, i, int(Op.COMBINE)))
                if c is not None and c + self.c_last[e.pattern][st.g] <= now:
                    cost = self.plan.costs[i]
                    end = self._spans(st.g, e.layer, i, now, [(int(Op.COMBINE_SUM), cost.combine_sum_s)])
                    st.busy_until = self._issued(st, e.layer, i, end, cost.host_combine_s, Op.HOST_COMBINE)
                    st.ex_of[i] = None
                    st.layer[i] += 1
                    return True
        return False

    def _ready(self, st: _GpuState, i: int) -> bool:
        plan, li = self.plan, st.layer[i]
        if li >= st.n_layers or st.ex_of[i] is not None:
            return False
        if not plan.layer_pipeline and min(st.layer) < li:
            return False
        if st.after[i] is not None and st.att_done[st.after[i]] < li:
            return False
        if not plan.overlap and any(e is not None for e in st.ex_of):
            return False
        if plan.runtime == "grouped" and plan.moe_layer_pattern[li] >= 0 \
                and (li - st.first_moe) * plan.micro_batches + i != st.next_key:
            return False
        return True

    def _pick_front(self, st: _GpuState, now: float) -> bool:
        """Run the front of the ready micro-batch with the lowest (layer, index)."""
        ready = [i for i in range(self.plan.micro_batches) if self._ready(st, i)]
        if not ready:
            return False
        i = min(ready, key=lambda i: (st.layer[i], i))
        plan, g, li = self.plan, st.g, st.layer[i]
        c, tp = plan.costs[i], int(Op.ATTENTION_TP)
        t = self._spans(g, li, i, now, [(int(Op.ATTENTION), c.attention_s), (tp, c.attention_tp_comm_s)])
        t = self._issued(st, li, i, t, c.host_attention_s, Op.HOST_ATTENTION)
        st.att_done[i] = li
        p = plan.moe_layer_pattern[li]
        if p < 0:
            t = self._spans(g, li, i, t, [(int(Op.DENSE_FFN), c.dense_ffn_s), (tp, c.attention_tp_comm_s)])
            st.busy_until = self._issued(st, li, i, t, c.host_dense_s, Op.HOST_DENSE)
            st.layer[i] += 1
            return True
        for op, dev_s, host_s, wait in ((Op.GATE, c.gate_s, c.host_gate_s, Op.HOST_GATE),
                                        (Op.PACK, c.pack_s, c.host_pack_s, Op.HOST_PACK)):
            t = self._issued(st, li, i, self._spans(g, li, i, t, [(int(op), dev_s)]), host_s, wait)
        # planned and posted (the exchange's bookkeeping): the GPU joins the dispatch
        post = self._issued(st, li, i, t, c.host_exchange_s, Op.HOST)
        self._join(li, i, Op.DISPATCH, p, plan.dispatch[p], post)
        st.ex_of[i] = _Ex(li, i, p, post, local=plan.runtime == "messages" and self.local[p] is not None)
        st.next_key = (li - st.first_moe) * plan.micro_batches + i + 1
        t = self._spans(g, li, i, post, [(int(Op.SHARED_EXPERT), c.shared_expert_s)])
        st.busy_until = self._issued(st, li, i, t, c.host_shared_s, Op.HOST_EXPERT)
        return True

    def _gpu(self, g: int):
        plan, env = self.plan, self.env
        st = _GpuState(g, plan)
        order = (self._pick_shard, self._pick_combine, self._pick_front) if plan.runtime == "messages" \
            else (self._pick_front, self._pick_shard, self._pick_combine)
        if plan.setup_s > 0:
            self._spans(g, 0, 0, 0.0, [(int(Op.SETUP), plan.setup_s)])
            yield env.timeout(plan.setup_s)
        while True:
            now = env.now
            if any(pick(st, now) for pick in order):
                if st.busy_until > now:
                    yield env.timeout(st.busy_until - now)
                continue
            if all(li >= st.n_layers for li in st.layer):
                break
            until, of = self._next_time(g, [e for e in st.ex_of if e is not None])
            yield self._sleep(g, until)
            if of is not None and env.now > now:  # the stream was blocked on that exchange (Op.WAIT_*)
                self._add((g, of.layer, of.mb, int(Op.WAIT_COMBINE if of.done else Op.WAIT_DISPATCH), now, env.now))
        self.gpu_end[g] = max(env.now, self.comm_free[g])

    def run(self) -> StepRecord:
        plan = self.plan
        for g in range(plan.gpus):
            self.env.process(self._gpu(g))
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
