"""Per-rank timing on a GPU: the emulator's spans (`emu.timing`), measured with CUDA events instead of the
host clock, since the host only enqueues work and reaches a span's end long before the GPU does.

Every span records an event on the current (compute) stream at its start and end; the transport adds
its transfers (events on the phase streams: `dispatch_transfer`, `combine_transfer`, lane "nccl") and the
compute stream's waits for them (`wait_dispatch`, `wait_combine`: the exposed communication). Marks
(`elapsed()`: layer ends, the step's end) are events too. After the step's end event has passed,
`resolve` turns every event into seconds since the step's start event (recorded right after the step's
barrier) and records the spans as `emu.timing.PhaseClock` does, so `emu.report` reduces them unchanged.
Host-timed waits of the runtime's loop (rare: completions are stream-ordered) are kept apart in `host_s`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from emu.timing import PhaseClock
from emu.transport import poll_until
from moe.result import Span

TRANSFER_LANE = "nccl"


class Mark:
    """A point on the compute stream whose time is known once the step has run (`CudaClock.resolve`)."""

    __slots__ = ("event",)

    def __init__(self, stream: torch.cuda.Stream | None = None):
        self.event = torch.cuda.Event(enable_timing=True)
        self.event.record(stream)


@dataclass
class CudaClock(PhaseClock):
    marks: list[tuple[str, Any, Any, int, int]] = field(default_factory=list)
    """(name, start event, end event, layer, micro-batch) recorded in this step, resolved at its end."""
    host_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    start: Mark | None = None

    def start_step(self, step: int, record: bool) -> None:
        self.step, self.record = step, record
        self.spans = [] if record else self.spans
        self.marks = []
        self.start = Mark()
        self.t0 = 0.0

    def elapsed(self) -> Mark:  # type: ignore[override]  # a float once resolved
        return Mark()

    @contextmanager
    def span(self, name: str, layer: int = -1, micro_batch: int = -1) -> Iterator[None]:
        start = Mark()
        try:
            yield
        finally:
            self.marks.append((name, start.event, Mark().event, layer, micro_batch))

    def add_events(self, name: str, start, end, layer: int = -1, micro_batch: int = -1) -> None:
        """A span between two recorded CUDA events (of any stream of this device)."""
        self.marks.append((name, start, end, layer, micro_batch))

    def add(self, name: str, start: float, end: float, layer: int = -1, micro_batch: int = -1) -> None:
        """Host-clock intervals (the runtime's blocking waits) are not GPU time: kept apart."""
        if self.record:
            self.host_s[name] += end - start

    def seconds(self, event) -> float:
        return self.start.event.elapsed_time(event) / 1e3

    def resolve(self, stats, timeout_s: float, rank: int) -> None:
        """Wait (bounded) for the step's end mark, then every mark of the step in seconds since its start:
        spans into totals and the trace, and stats' marks (layer ends, end) into floats."""
        end = stats.end_s
        poll_until(lambda: True if end.event.query() else None, timeout_s, "the GPU to finish the step", rank)
        stats.end_s = self.seconds(end.event)
        stats.layer_end_s = [self.seconds(m.event) if isinstance(m, Mark) else m for m in stats.layer_end_s]
        if not self.record:
            return
        for name, start, stop, layer, micro_batch in self.marks:
            s, e = self.seconds(start), self.seconds(stop)
            if name.endswith("_transfer"):
                self.totals_s[name] += e - s
                self.spans.append(Span(self.rank, TRANSFER_LANE, name, s, e,
                                       {"layer": layer, "micro_batch": micro_batch, "step": self.step}))
            else:
                PhaseClock.add(self, name, s, e, layer, micro_batch)
        self.marks = []
