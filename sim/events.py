"""Typed event records of a simulated step: what ran where and when, appended by the executor.

The executor only appends; `sim.reduce` turns the records into the Result and the trace (a pure function).
Records are columnar (one array per field) so a step of 1024 GPUs x 61 layers stays compact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from itertools import chain

import numpy as np


class Op(IntEnum):
    """Kinds of work on a GPU. Compute ops run on the compute stream; collectives on the comm engine."""

    ATTENTION = 0
    ATTENTION_TP = 1
    """The TP group's all-gather and reduce-scatter around attention (or the dense FFN)."""
    GATE = 2
    DENSE_FFN = 3
    SHARED_EXPERT = 4
    EXPERT = 5
    """One chunk of routed-expert work, on tokens that have arrived."""
    DISPATCH = 6
    COMBINE = 7
    PACK = 8
    """Grouping a micro-batch's rows by destination and quantizing them for the dispatch (compute)."""
    COMBINE_SUM = 9
    """Summing the returned rows into the tokens, with the residual and the shared expert (compute)."""
    SETUP = 10
    """The runtime's per-step setup (building the step's KV caches), once at the start of a step."""
    HOST = 11
    """The compute stream idle until the host has done a MoE layer's exchange bookkeeping (counts, posting
    the collectives; sim.executor's host model): in no phase, as the real backend's spans leave the
    protocol's host work between them. The same wait for a task has the task's own kind below, so that the
    breakdown counts it in that task's phase, as the real backend's CUDA events count a host-bound call's
    issue in its span."""
    HOST_ATTENTION = 12
    HOST_DENSE = 13
    HOST_EXPERT = 14
    """Routed and shared experts."""
    HOST_COMBINE = 15
    WAIT_DISPATCH = 16
    """The compute stream idle, nothing else to run, until a micro-batch's shards land (the dispatch may not
    have started yet): the runtimes' blocked wait for shards."""
    WAIT_COMBINE = 17
    """The same until a micro-batch's results are all back."""
    HOST_GATE = 18
    HOST_PACK = 19
    """The dispatch's planning and the pack's issue."""


WAIT_OPS = (Op.WAIT_DISPATCH, Op.WAIT_COMBINE)


def is_wait(op_N: np.ndarray) -> np.ndarray:
    """Whether each span (its `op` column) is the stream's blocked wait (WAIT_OPS), not work."""
    return np.isin(op_N, [int(o) for o in WAIT_OPS])

COMPUTE_OPS = (Op.ATTENTION, Op.ATTENTION_TP, Op.GATE, Op.DENSE_FFN, Op.SHARED_EXPERT, Op.EXPERT, Op.PACK,
               Op.COMBINE_SUM, Op.SETUP)
NAMES = {op: op.name.lower() for op in Op}


class SpanLog:
    """Compute spans: (gpu, layer, micro-batch, op, start, end) rows, appended as tuples (cheap) and read
    back as columns."""

    FIELDS = ("gpu", "layer", "mb", "op", "start", "end")

    def __init__(self):
        self.rows: list[tuple[int, int, int, int, float, float]] = []
        self.add_row = self.rows.append  # add_row((gpu, layer, mb, op, start, end))

    def add(self, gpu: int, layer: int, mb: int, op: int, start: float, end: float) -> None:
        self.rows.append((gpu, layer, mb, int(op), start, end))

    def columns(self) -> dict[str, np.ndarray]:
        if not self.rows:
            return {f: np.zeros(0, dtype=np.float64 if f in ("start", "end") else np.int64) for f in self.FIELDS}
        table = np.fromiter(chain.from_iterable(self.rows), dtype=np.float64,
                            count=len(self.rows) * len(self.FIELDS)).reshape(-1, len(self.FIELDS))
        return {f: (table[:, i] if f in ("start", "end") else table[:, i].astype(np.int64))
                for i, f in enumerate(self.FIELDS)}

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(frozen=True)
class CollectiveRecord:
    """One dispatch or combine of one micro-batch of one layer, over every GPU.

    GPU g's part runs from `start_s - sync_s` (launch and barrier) to `start_s + done_G[g]`, where done_G
    is the solved phase `timing` (sim.network.PhaseTiming)."""

    layer: int
    mb: int
    op: Op
    pattern: int
    """Which routed traffic sample the layer carries."""
    last_join_s: float
    """When the last GPU was ready for it."""
    start_s: float
    """First byte moves (after sync)."""


@dataclass
class StepRecord:
    spans: SpanLog = field(default_factory=SpanLog)
    collectives: list[CollectiveRecord] = field(default_factory=list)
    gpu_end: list[float] = field(default_factory=list)
    """When each GPU finished its last work of the step."""

    @property
    def end_s(self) -> float:
        return max(self.gpu_end, default=0.0)
