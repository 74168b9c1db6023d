"""Per-rank timing: spans of compute and waiting on the transport's clock (MPI.Wtime), relative to the step's
start (every rank leaves a barrier, then reads its clock), so ranks line up in one merged trace.

Span names (the simulator's phase words, DESIGN.md): compute lane `attention`, `gate`, `dispatch`
(quantize and pack), `expert` (routed and shared experts), `combine` (unpack and weighted sum), `dense`
(FFN of dense layers), `head`; comm lane `wait_dispatch`, `wait_combine` (blocked on the transport).
Time outside spans and outside MPI calls is bookkeeping (Python, planning, indexing).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from moe.result import Span

COMPUTE_PHASES = ("attention", "gate", "dispatch", "expert", "combine", "dense", "head")
WAIT_PHASES = ("wait_dispatch", "wait_combine")


@dataclass
class PhaseClock:
    """Records spans of one rank; `record` is off during warm-up steps."""

    now: Callable[[], float]
    rank: int
    record: bool = False
    t0: float = 0.0
    step: int = 0
    moe_from: int = 0
    """First MoE layer: spans of layers >= moe_from (and every wait) also count into `moe_totals_s`."""
    spans: list[Span] = field(default_factory=list)
    totals_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    moe_totals_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def start_step(self, step: int, record: bool) -> None:
        """Call right after the step's barrier: time zero of this rank for the step."""
        self.step, self.record = step, record
        self.spans = [] if record else self.spans
        self.t0 = self.now()

    def elapsed(self) -> float:
        return self.now() - self.t0

    @contextmanager
    def span(self, name: str, layer: int = -1, micro_batch: int = -1) -> Iterator[None]:
        start = self.now()
        try:
            yield
        finally:
            self.add(name, start, self.now(), layer, micro_batch)

    def add(self, name: str, start: float, end: float, layer: int = -1, micro_batch: int = -1) -> None:
        if not self.record:
            return
        lane = "comm" if name in WAIT_PHASES else "compute"
        self.totals_s[name] += end - start
        if lane == "comm" or layer >= self.moe_from:
            self.moe_totals_s[name] += end - start
        self.spans.append(Span(self.rank, lane, name, start - self.t0, end - self.t0,
                               {"layer": layer, "micro_batch": micro_batch, "step": self.step}))
