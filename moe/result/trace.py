"""Chrome / Perfetto trace output: one process lane per rank, one thread lane per stream.

Backends record `Span`s (something ran on a rank's lane from start to end) and `Sample`s (a counter,
such as a link's utilisation, took values at a time); `chrome_trace` turns them into the JSON that
chrome://tracing and ui.perfetto.dev open. Times are seconds in, microseconds out (the format's unit).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moe.result.record import write_json_atomic

LANES = ("compute", "comm")  # lane order in the viewer; other lane names follow alphabetically


@dataclass(frozen=True)
class Span:
    rank: int
    lane: str
    name: str
    start_s: float
    end_s: float
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Sample:
    """A counter value at a time; `group` becomes its own process lane (e.g. "links")."""

    group: str
    name: str
    t_s: float
    values: dict[str, float]


@dataclass
class Trace:
    spans: list[Span] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    rank_names: dict[int, str] = field(default_factory=dict)


def chrome_trace(trace: Trace) -> dict[str, Any]:
    events: list[dict[str, Any]] = []
    ranks = sorted({s.rank for s in trace.spans} | set(trace.rank_names))
    lanes = sorted({s.lane for s in trace.spans}, key=lambda n: (LANES.index(n) if n in LANES else len(LANES), n))
    tid = {lane: i for i, lane in enumerate(lanes)}
    for r in ranks:
        name = trace.rank_names.get(r, f"rank {r}")
        events.append({"ph": "M", "name": "process_name", "pid": r, "args": {"name": name}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": r, "args": {"sort_index": r}})
        for lane, t in tid.items():
            events.append({"ph": "M", "name": "thread_name", "pid": r, "tid": t, "args": {"name": lane}})
    for s in trace.spans:
        events.append({"ph": "X", "name": s.name, "cat": s.lane, "pid": s.rank, "tid": tid[s.lane],
                       "ts": s.start_s * 1e6, "dur": max(0.0, s.end_s - s.start_s) * 1e6, "args": s.args})
    groups = sorted({s.group for s in trace.samples})
    gpid = {g: -1 - i for i, g in enumerate(groups)}
    for g, pid in gpid.items():
        events.append({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": g}})
    for s in trace.samples:
        events.append({"ph": "C", "name": s.name, "pid": gpid[s.group], "ts": s.t_s * 1e6, "args": s.values})
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_trace(path: str | Path, trace: Trace) -> None:
    write_json_atomic(path, chrome_trace(trace))


def merge(traces: Iterable[Trace]) -> Trace:
    out = Trace()
    for t in traces:
        out.spans.extend(t.spans)
        out.samples.extend(t.samples)
        out.rank_names.update(t.rank_names)
    return out
