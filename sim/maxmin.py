"""Flow-level network: max-min fair rates, and flows that start and finish over time.

Shape letters: F flows, L links, X flow-link entries (CSR: the links of flow f are
`links_X[indptr_F1[f]:indptr_F1[f + 1]]`; a link listed twice is crossed twice and carries twice the
flow's rate), S time segments of a solution.

Max-min fairness (progressive filling): every unfrozen flow's rate grows at the same pace; a link whose
remaining capacity runs out freezes the flows crossing it; repeat until every flow is frozen. The result
is the unique allocation in which no flow can get more without taking from a flow that has less.
Weighted max-min (`weight_F`): flow f's rate grows as weight_F[f] x level instead (rate / weight is
max-min fair); equal weights give plain max-min.
`rtol` > 0 also freezes links whose fair share is within (1 + rtol) of the smallest one in the same
round: fewer rounds, and those links stay up to a fraction rtol below saturation (never above).

`simulate_flows` runs flows with given sizes and start times: rates are the max-min rates of the flows
in flight, recomputed whenever a flow starts or finishes. Approximation for speed (`batch_rtol`): flows
that would finish within `batch_rtol` x (time since the first start) after the earliest finisher finish
in the same step; they keep their bandwidth until the last of them is done (so nobody gains bandwidth
early: the error is one-sided and bounded by that window), but each keeps its own finish time. With
batch_rtol = 0 every finish is its own event (exact). Bytes per link are accumulated per segment from
what each flow actually sent, so they are conserved exactly in either mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def flow_of_entries(indptr_F1: np.ndarray) -> np.ndarray:
    """Flow id of every CSR entry (X)."""
    return np.repeat(np.arange(len(indptr_F1) - 1), np.diff(indptr_F1))


def maxmin_rates(capacity_L: np.ndarray, indptr_F1: np.ndarray, links_X: np.ndarray,
                 active_F: np.ndarray | None = None, rtol: float = 0.0,
                 flow_X: np.ndarray | None = None, weight_F: np.ndarray | None = None) -> np.ndarray:
    """Max-min fair rate (bytes/s) of every flow; inactive flows get 0, active flows without links inf."""
    flows, links = len(indptr_F1) - 1, len(capacity_L)
    flow_X = flow_of_entries(indptr_F1) if flow_X is None else flow_X
    active_F = np.ones(flows, dtype=bool) if active_F is None else active_F
    rate_F = np.zeros(flows)
    has_links_F = np.diff(indptr_F1) > 0
    rate_F[active_F & ~has_links_F] = np.inf
    # working set: entries of active flows, compacted as flows freeze
    keep_X = active_F[flow_X]
    ef, el = flow_X[keep_X], links_X[keep_X]
    remaining_L = capacity_L.astype(np.float64).copy()
    level = 0.0
    while len(ef):
        count_L = (np.bincount(el, minlength=links) if weight_F is None
                   else np.bincount(el, weights=weight_F[ef], minlength=links))
        used = np.flatnonzero(count_L)
        share_U = remaining_L[used] / count_L[used]
        step = max(float(share_U.min()), 0.0)
        level += step
        remaining_L[used] -= step * count_L[used]
        full_U = share_U <= step * (1.0 + rtol) + 1e-15 * max(step, 1.0)
        saturated_L = np.zeros(links, dtype=bool)
        saturated_L[used[full_U]] = True
        frozen_F = np.zeros(flows, dtype=bool)
        frozen_F[ef[saturated_L[el]]] = True
        rate_F[frozen_F] = level if weight_F is None else level * weight_F[frozen_F]
        keep = ~frozen_F[ef]
        ef, el = ef[keep], el[keep]
    return rate_F


@dataclass
class FlowSolution:
    """Result of `simulate_flows`. Times are absolute seconds (same clock as the start times)."""

    finish_F: np.ndarray
    """When each flow's last byte was sent (start time for empty flows)."""
    t_S1: np.ndarray
    """Segment boundaries: segment s runs from t_S1[s] to t_S1[s + 1]."""
    link_bytes_SL: np.ndarray | None
    """Bytes each link carried in each segment (None unless asked for)."""
    link_bytes_L: np.ndarray
    """Bytes each link carried in total."""
    rounds: int
    """Max-min computations done."""


def simulate_flows(capacity_L: np.ndarray, indptr_F1: np.ndarray, links_X: np.ndarray, bytes_F: np.ndarray,
                   start_F: np.ndarray | None = None, batch_rtol: float = 0.0, rate_rtol: float = 0.0,
                   record_segments: bool = False, weight_F: np.ndarray | None = None) -> FlowSolution:
    """Run flows of `bytes_F` bytes from `start_F` (default 0) to completion under max-min fair sharing.

    Rates are recomputed at every start and every (batched) finish; between events they are constant.
    """
    flows, links = len(bytes_F), len(capacity_L)
    flow_X = flow_of_entries(indptr_F1)
    start_F = np.zeros(flows) if start_F is None else np.asarray(start_F, dtype=np.float64)
    remaining_F = np.asarray(bytes_F, dtype=np.float64).copy()
    finish_F = np.where(remaining_F <= 0, start_F, np.inf)
    done_F = remaining_F <= 0
    starts = np.unique(start_F[~done_F])
    t = float(starts[0]) if len(starts) else 0.0
    t0 = t
    bounds, seg_bytes = [t], []
    link_bytes_L = np.zeros(links)
    rounds = 0
    next_start = 0
    while not done_F.all():
        while next_start < len(starts) and starts[next_start] <= t:
            next_start += 1
        t_start = float(starts[next_start]) if next_start < len(starts) else np.inf
        active_F = (~done_F) & (start_F <= t)
        if not active_F.any():
            t = t_start
            bounds.append(t)
            if record_segments:
                seg_bytes.append(np.zeros(links))
            continue
        rate_F = maxmin_rates(capacity_L, indptr_F1, links_X, active_F, rate_rtol, flow_X, weight_F)
        rounds += 1
        act = np.flatnonzero(active_F)
        with np.errstate(divide="ignore"):
            eta_A = t + remaining_F[act] / rate_F[act]
        first = float(eta_A.min())
        if first <= t_start:
            window = min(first + batch_rtol * max(first - t0, 0.0), t_start)
            batch = eta_A <= window
            t_next = float(eta_A[batch].max())
        else:  # a start comes first: advance to it, nobody finishes
            batch = np.zeros(len(act), dtype=bool)
            t_next = t_start
        dt = t_next - t
        with np.errstate(invalid="ignore"):  # inf rate x 0 s for flows without links
            sent_A = np.minimum(rate_F[act] * dt, remaining_F[act])
        sent_A[batch] = remaining_F[act][batch]
        remaining_F[act] -= sent_A
        finish_F[act[batch]] = eta_A[batch]
        done_F[act[batch]] = True
        sent_F = np.zeros(flows)
        sent_F[act] = sent_A
        seg_L = np.bincount(links_X, weights=sent_F[flow_X], minlength=links)
        link_bytes_L += seg_L
        if record_segments:
            seg_bytes.append(seg_L)
        t = t_next
        bounds.append(t)
    return FlowSolution(finish_F=finish_F, t_S1=np.asarray(bounds),
                        link_bytes_SL=np.asarray(seg_bytes) if record_segments else None,
                        link_bytes_L=link_bytes_L, rounds=rounds)
