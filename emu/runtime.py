"""One rank's forward step: every layer of every micro-batch, driven by one event loop over a Transport.

Shape letters: T tokens of a micro-batch, D hidden, K = top_k, M micro-batches.

The loop never blocks while it has work. In order of priority it
  1. takes completed transport operations (a shard -> queue it; a result -> mark it), which also drives
     the library's progress for everything in flight;
  2. computes one queued shard for another rank (earliest layer and micro-batch first) and sends it back;
  3. combines a micro-batch whose results are all in, and moves it to its next layer;
  4. runs the front of a layer for a ready micro-batch: attention, gate, grouping, FP8 packing, and posts
     its dispatch; the shared expert then runs while the shards travel;
and only when nothing is runnable it waits (bounded) for any operation to complete. Schedule switches:
  schedule.overlap = false      one micro-batch at a time; a shard is computed only once every shard of
                                its (layer, micro-batch) is in; nothing else runs while one is in flight
  schedule.layer_pipeline=false a micro-batch starts layer l + 1 only when every micro-batch finished l
A step ends on a rank when its micro-batches are through every layer and it has served every shard
sent to it and every send has completed.

With a grouped transport (`emu.transport`; real/), whose shards of a (layer, micro-batch) move in one
collective per direction, three things change so that every rank issues the collectives in one order:
the shards of a (layer, micro-batch) are computed together, even when a rank has none (its empty result
still joins the collective); MoE layer fronts start in key order (layer-major, then micro-batch); and
fronts come before shards in the loop, since on a GPU the host only enqueues work and the enqueue order
is the order the device runs it: micro-batch i + 1's front and dispatch are queued before micro-batch
i's experts, so its transfer overlaps them. Received buffers are read only after `Transport.ready`. A
device-split transport (NVSHMEM) has its receives posted when the shards are computed: only then does
the host wait for the counts, which it derives from the rows that landed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from emu import dispatch as dp
from emu.faults import maybe_fail
from emu.microbatch import Layout, new_caches, rewind
from emu.plan import RunPlan
from emu.timing import PhaseClock
from emu.transport import Pending, Transport, host_to
from moe.model.graphs import ModelCalls
from moe.spec.schema import Scenario

ALL_SOURCES = -1
"""Shard-queue marker: compute every source's rows of a (layer, micro-batch) at once (no overlap)."""


@dataclass
class MBState:
    """A micro-batch's progress through the layers."""

    layer: int = 0
    x_TD: torch.Tensor | None = None
    exchange: dp.Exchange | None = None
    shared_TD: torch.Tensor | None = None
    attention_done: int = -1
    """Last layer whose attention this micro-batch ran."""


@dataclass
class StepStats:
    """What one rank measured in one step (traffic rows are this rank's row of the pair matrix)."""

    pair_rows_JR: np.ndarray
    requests_J: np.ndarray
    layer_end_s: list[float] = field(default_factory=list)
    end_s: float = 0.0


class RankRuntime:
    def __init__(self, scenario: Scenario, transport: Transport, plan: RunPlan, model, lay: Layout,
                 clock: PhaseClock, device: torch.device):
        self.s, self.tr, self.plan, self.model, self.lay = scenario, transport, plan, model, lay
        self.clock, self.device = clock, device
        self.cfg = scenario.model
        self.sched = scenario.schedule
        self.opts = scenario.emu
        self.slots = plan.placement.slots_per_gpu
        self.expert_of_slot = plan.expert_of_slot(transport.rank)
        self.fault_armed = True
        self.absorbed = None if scenario.workload.phase == "decode" else False
        self.caches, self.caches_seed = None, None
        self.calls = ModelCalls(device, transport.rank, graphs=False)
        """The fixed-shape model calls (`moe.model.graphs`): eager here; the real backend replays them."""
        self.layer_outputs: dict[int, list] | None = None
        """When a dict: layer -> hidden states after it, per micro-batch, of the last step (tests)."""

    # ------------------------------------------------------------------------------------ one step
    def step(self, x_TD: torch.Tensor, pattern: int, seed: int) -> tuple[torch.Tensor, StepStats]:
        """One forward step of the rank's tokens x_TD through every layer; returns the output hidden
        states and the step's statistics."""
        lay, layers = self.lay, self.cfg.layers
        if self.caches_seed != seed:  # built once per seed, rewound at every step (emu.microbatch.rewind)
            self.caches, self.caches_seed = new_caches(self.model, lay, seed), seed
            self.calls.clear()  # graphs captured over the old caches
        rewind(self.caches, lay)
        self.pattern = pattern
        self.mbs = [MBState(x_TD=x_TD.index_select(0, host_to(mb.tokens_T, x_TD.device))) for mb in lay.micro_batches]
        self.next_key = 0
        """Key of the next MoE layer front (grouped transports start them in this order)."""
        self.exchanges: dict[int, dp.Exchange] = {}
        self.pending: list[Pending] = []
        self.shard_queue: deque[tuple[int, int]] = deque()
        self.queued_all: set[int] = set()
        self.computed: set[int] = set()
        """Keys whose shards (all sources at once) this rank has computed."""
        self.stats = StepStats(np.zeros((self.cfg.moe_layers, self.tr.size), dtype=np.int64),
                               np.zeros(self.cfg.moe_layers, dtype=np.int64), [0.0] * layers)
        if self.tr.grouped:  # fronts first: see the module docstring
            actions = (self._take_completions, self._start_ready, self._compute_one_shard, self._combine_ready)
        else:
            actions = (self._take_completions, self._compute_one_shard, self._combine_ready, self._start_ready)
        while True:
            if any(action() for action in actions):
                continue
            if all(st.layer == layers for st in self.mbs) and not self.shard_queue and self._all_served():
                break
            self._block()
        self.stats.end_s = self.clock.elapsed()
        out = torch.empty_like(x_TD)
        for mb, st in zip(lay.micro_batches, self.mbs, strict=True):
            out[host_to(mb.tokens_T, out.device)] = st.x_TD
        return out, self.stats

    # ----------------------------------------------------------------------------- loop pieces
    def _take_completions(self) -> bool:
        done = self.tr.test_some(self.pending)
        for i in done:
            self._on_complete(self.pending[i])
        if done:
            self.pending = [p for p in self.pending if not p.done]
        return bool(done)

    def _on_complete(self, p: Pending) -> None:
        kind, key = p.meta[0], p.meta[1]
        if kind == "shard":
            ex, src = self.exchanges[key], p.meta[2]
            if dp.shard_in(self.tr, ex, src, p.buf):
                self._arrived(ex, src)
            else:  # an empty shard (message transports): nothing to compute
                self._queue_all(ex)
        elif kind == "result":
            self.exchanges[key].results_missing.discard(p.meta[2])
        elif kind == "sent":
            self._release_send(self.exchanges[key])

    def _release_send(self, ex: dp.Exchange) -> None:
        """Hand the payload buffer back once MPI and the local shard are done with it."""
        if ex.send_buf is not None and self.tr.rank not in ex.shard_bufs and all(p.done for p in ex.sends):
            self.tr.give_buffer(ex.send_buf)
            ex.send_buf = None

    def _arrived(self, ex: dp.Exchange, src: int) -> None:
        """Every part of src's shard is in: with overlap it can be computed at once."""
        if self.sched.overlap and not self.tr.grouped:
            self.shard_queue.append((ex.key, src))
        else:
            self._queue_all(ex)

    def _queue_all(self, ex: dp.Exchange) -> None:
        """Without overlap (or with a grouped transport): queue an exchange's shards once every one of them
        is in; a grouped transport's exchange is queued even without shards (its result joins the group)."""
        posted = ex.receives_posted or self.tr.device_splits  # device splits: posted when computed
        if (self.sched.overlap and not self.tr.grouped) or ex.key in self.queued_all or not posted \
                or ex.shards_missing:
            return
        self.queued_all.add(ex.key)
        if ex.shard_bufs or self.tr.grouped:
            self.shard_queue.append((ex.key, ALL_SOURCES))

    def _compute_one_shard(self) -> bool:
        if not self.shard_queue:
            return False
        key, src = min(self.shard_queue)
        self.shard_queue.remove((key, src))
        ex = self.exchanges[key]
        if not ex.receives_posted:  # device splits: the host learns the sizes now, the rows are on their way
            self.pending += dp.post_receives(self.tr, ex)
        layer = self._layer_of_key(key)
        block = self.model.block(layer)
        sources = sorted(ex.shard_bufs) if src == ALL_SOURCES else [src]
        parts = [ex.shard_bufs[s] for s in sources]  # removed only once computed (see _release_send)
        if self.fault_armed:
            maybe_fail(self.opts, self.tr.rank, "expert", self.opts.timeout_s)
        self.tr.ready(*parts)  # the received rows are there for the compute
        slot_rows_S = dp.slot_rows(self.tr, ex, sources, self.slots)  # no host sync on a GPU
        rows_R = np.zeros(self.tr.size, dtype=np.int64)
        for s, rows_MB in zip(sources, parts, strict=True):
            rows_R[s] = rows_MB.shape[0]
        if parts:
            with self.clock.span("expert", layer, key % len(self.mbs)):
                # one shard, or (without overlap) every source's rows at once: one GEMM per local expert
                result_MV = dp.compute_shard(block, self.expert_of_slot, self.tr.rank * self.slots,
                                             dp.cat_rows(parts), self.cfg.hidden, self.sched.dispatch_dtype,
                                             self.sched.combine_dtype, self.device,
                                             progress=self._take_completions, slot_rows_S=slot_rows_S,
                                             calls=self.calls)
        else:  # a grouped transport's exchange that brought this rank nothing: an empty result joins it
            result_MV = torch.empty(0, ex.result_row_bytes, dtype=torch.uint8, device=self.device)
        for s in sources:
            del ex.shard_bufs[s]
        if src == ALL_SOURCES:
            self.computed.add(key)
        self.stats.requests_J[layer - self.cfg.dense_layers] += int(slot_rows_S.sum())
        for s, rows_MB in zip(sources, parts, strict=True):
            if s != self.tr.rank:  # compute_shard copied what it needed out of the receive buffers
                self.tr.give_buffer(rows_MB)
        self.pending += dp.send_results(self.tr, ex, rows_R, result_MV)
        self._release_send(ex)
        return True

    def _combine_ready(self) -> bool:
        for i, st in enumerate(self.mbs):
            ex = st.exchange
            if ex is None or not ex.combined:
                continue
            if self.tr.grouped and ex.key not in self.computed:
                continue  # a rank that sent nothing still combines where the others do: after its shards
            layer = st.layer
            if self.fault_armed:
                maybe_fail(self.opts, self.tr.rank, "combine", self.opts.timeout_s)
            self.tr.ready(*ex.result_bufs.values())  # the returned rows are there for the compute
            with self.clock.span("combine", layer, i):
                routed_TD = dp.combine_rows(ex, st.x_TD.shape[0], self.device)
                for dst, buf in ex.result_bufs.items():
                    if dst != self.tr.rank:
                        self.tr.give_buffer(buf)
                out = st.x_TD.float() + routed_TD
                if st.shared_TD is not None:
                    out = out + st.shared_TD.float()
                st.x_TD = out.to(st.x_TD.dtype)
            st.exchange, st.shared_TD = None, None
            self._finish_layer(i, st)
            return True
        return False

    def _finish_layer(self, i: int, st: MBState) -> None:
        if self.layer_outputs is not None:
            self.layer_outputs.setdefault(st.layer, [None] * len(self.mbs))[i] = st.x_TD
        if st.layer >= self.cfg.dense_layers and self.fault_armed and i == len(self.mbs) - 1:
            self.fault_armed = False  # faults fire in the first MoE layer only
        st.layer += 1
        self.stats.layer_end_s[st.layer - 1] = self.clock.elapsed()

    def _ready(self, i: int, st: MBState) -> bool:
        if st.layer == self.cfg.layers or st.exchange is not None:
            return False
        if not self.sched.layer_pipeline and any(o.layer < st.layer for o in self.mbs):
            return False
        after = self.lay.micro_batches[i].after
        if after is not None and self.mbs[after].attention_done < st.layer:
            return False
        if not self.sched.overlap and any(o.exchange is not None for o in self.mbs):
            return False
        if self.tr.grouped and st.layer >= self.cfg.dense_layers \
                and (st.layer - self.cfg.dense_layers) * len(self.mbs) + i != self.next_key:
            return False  # MoE fronts in key order: every rank issues its collectives in one order
        return True

    def _start_ready(self) -> bool:
        ready = [(st.layer, i) for i, st in enumerate(self.mbs) if self._ready(i, st)]
        if not ready:
            return False
        layer, i = min(ready)
        self._layer_front(i, self.mbs[i], layer)
        return True

    def _layer_front(self, i: int, st: MBState, layer: int) -> None:
        block, mb = self.model.block(layer), self.lay.micro_batches[i]
        with self.clock.span("attention", layer, i):
            # prefill chunks keep the prefill form of MLA (the reference runs the whole prompt at once)
            x_TD = self.calls.attention(block, st.x_TD, self.caches[mb.group][layer], self.absorbed, (layer, i))
        st.attention_done = layer
        self._take_completions()  # progress between the layer's compute pieces
        if not block.is_moe:
            with self.clock.span("dense", layer, i):
                st.x_TD = self.calls.dense(block, x_TD, (layer, i))
            self._finish_layer(i, st)
            return
        j = layer - self.cfg.dense_layers
        r = self.plan.routing_PJ[self.pattern][j]
        rows = mb.tokens_T.numpy()
        with self.clock.span("gate", layer, i):
            # the plan's ids are valid by construction: no range check (a host synchronization)
            ids_TK = host_to(torch.from_numpy(r.ids_TK[rows]), x_TD.device)
            z_TD, w_TK = self.calls.gate(block, x_TD, ids_TK, (layer, i))
        key = j * len(self.mbs) + i
        self.next_key = key + 1
        plan = dp.plan_dispatch(key, r.slot_TK[rows], r.keep_TK[rows], w_TK, self.slots, self.tr.size)
        self.stats.pair_rows_JR[j] += plan.counts_R
        n, b = len(plan.token_N), dp.row_bytes(self.cfg.hidden, self.sched.dispatch_dtype, self.cfg.top_k)
        with self.clock.span("dispatch", layer, i):
            # pooled: MPI reuses its registration of the buffer and no page faults are paid per layer
            out = self.tr.take_buffer(n * b).view(n, b) if z_TD.device == self.tr.device else None
            rows_NB = dp.pack_rows(z_TD, plan, self.sched.dispatch_dtype, out)
        if self.fault_armed:
            maybe_fail(self.opts, self.tr.rank, "dispatch", self.opts.timeout_s)
        ex = dp.Exchange(key, plan, self.cfg.hidden, self.sched.dispatch_dtype, self.sched.combine_dtype)
        ex.send_buf = out
        self.exchanges[key] = ex
        self.pending += dp.post_dispatch(self.tr, ex, rows_NB)
        self.pending += dp.post_result_receives(self.tr, ex)
        if self.tr.grouped:  # the counts are in: receive the shards (device splits: when computed)
            if not self.tr.device_splits:
                self.pending += dp.post_receives(self.tr, ex)
            self._queue_all(ex)
        elif self.tr.rank in ex.shard_bufs:  # local rows
            self._arrived(ex, self.tr.rank)
        st.x_TD, st.exchange = x_TD, ex
        with self.clock.span("expert", layer, i):
            st.shared_TD = self.calls.shared(block, z_TD, (layer, i))

    # ---------------------------------------------------------------------------------- waiting
    def _layer_of_key(self, key: int) -> int:
        return self.cfg.dense_layers + key // len(self.mbs)

    def _shards_outstanding(self, ex: dp.Exchange) -> bool:
        return not ex.receives_posted or bool(ex.shards_missing)

    def _all_served(self) -> bool:
        """Every exchange's shards computed and every send completed."""
        return not self.pending and all(ex.receives_posted and not ex.shard_bufs for ex in self.exchanges.values())

    def _block(self) -> None:
        waiting_shards = any(self._shards_outstanding(ex) for ex in self.exchanges.values())
        name = "wait_dispatch" if waiting_shards else "wait_combine"
        what = (f"{'dispatch shards' if waiting_shards else 'combine results'} (step pattern {self.pattern}, "
                f"{len(self.pending)} transfers in flight)")
        start = self.clock.now()
        done = self.tr.wait_any(self.pending, self.opts.timeout_s, what)
        self.clock.add(name, start, self.clock.now())
        for idx in done:
            self._on_complete(self.pending[idx])
        self.pending = [p for p in self.pending if not p.done]

