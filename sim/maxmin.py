"""Flow-level network: max-min fair rates, and flows that start and finish over time.

Shape letters: F flows, L links, X flow-link entries (CSR: the links of flow f are
`links_X[indptr_F1[f]:indptr_F1[f + 1]]`; a link listed twice is crossed twice and carries twice the
flow's rate), S time segments of a solution.

Max-min fairness (progressive filling): every unfrozen flow's rate grows at the same pace; a link whose
remaining capacity runs out freezes the flows crossing it; repeat until every flow is frozen. The result
is the unique allocation in which no flow can get more without taking from a flow that has less.
Weighted max-min (`weight_F`): flow f's rate grows as weight_F[f] x level instead (rate / weight is
max-min fair); equal weights give plain max-min. The filling is incremental: each round finds the link
that saturates at the lowest level, freezes its flows and subtracts them from the links they cross, so
the whole computation touches every entry once plus O(links) per round. `rtol` > 0 also saturates, in
the same round, links whose level is within (1 + rtol) of the lowest: fewer rounds, and those links stay
up to a fraction rtol below capacity (never above), i.e. their flows get up to rtol less than fair.

`simulate_flows` runs flows with given sizes and start times: rates are the max-min rates of the flows
in flight, recomputed whenever a flow starts or finishes. Approximation for speed (`batch_rtol`): flows
that would finish within `batch_rtol` x (time since the first start) after the earliest finisher finish
in the same step; they keep their bandwidth until the last of them is done (so nobody gains bandwidth
early: the error is one-sided and bounded by that window), but each keeps its own finish time. With
batch_rtol = 0 every finish is its own event (exact). Bytes per link are accumulated per segment from
what each flow actually sent, so they are conserved exactly in either mode. `weight_F="remaining"`
weights each flow by its remaining bytes, recomputed at every event.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def flow_of_entries(indptr_F1: np.ndarray) -> np.ndarray:
    """Flow id of every CSR entry (X)."""
    return np.repeat(np.arange(len(indptr_F1) - 1), np.diff(indptr_F1))


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenation of arange(starts[i], ends[i]) for all i."""
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return offsets + np.arange(total)


class FlowNetwork:
    """Links and flow routes, indexed both ways, for repeated max-min computations."""

    def __init__(self, capacity_L: np.ndarray, indptr_F1: np.ndarray, links_X: np.ndarray):
        self.capacity_L = np.asarray(capacity_L, dtype=np.float64)
        self.indptr_F1 = np.asarray(indptr_F1, dtype=np.int64)
        self.links_X = np.asarray(links_X, dtype=np.int64)
        self.flow_X = flow_of_entries(self.indptr_F1)
        self.flows, self.links = len(self.indptr_F1) - 1, len(self.capacity_L)
        self.by_link_X = np.argsort(self.links_X, kind="stable")  # entries grouped by link
        self.link_ptr_L1 = np.searchsorted(self.links_X[self.by_link_X], np.arange(self.links + 1))
        self.has_links_F = np.diff(self.indptr_F1) > 0

    def rates(self, active_F: np.ndarray | None = None, weight_F: np.ndarray | None = None,
              rtol: float = 0.0) -> np.ndarray:
        """Max-min fair rate (bytes/s) of every flow; inactive flows get 0, active flows without links inf."""
        active_F = np.ones(self.flows, dtype=bool) if active_F is None else active_F
        w_F = np.ones(self.flows) if weight_F is None else np.asarray(weight_F, dtype=np.float64)
        rate_F = np.zeros(self.flows)
        rate_F[active_F & ~self.has_links_F] = np.inf
        frozen_F = ~active_F | ~self.has_links_F
        live_X = ~frozen_F[self.flow_X]
        wsum_L = np.bincount(self.links_X[live_X], weights=w_F[self.flow_X[live_X]], minlength=self.links)
        free_L = self.capacity_L.copy()
        slot_F = np.empty(self.flows, dtype=np.int64)
        tiny = 1e-12 * max(float(w_F[active_F].max(initial=0.0)), 1e-300)
        while True:
            live = np.flatnonzero(wsum_L > tiny)
            if not len(live):
                break
            level_U = np.maximum(free_L[live], 0.0) / wsum_L[live]
            level = float(level_U.min())
            sat = live[level_U <= level * (1.0 + rtol)]
            entries = self.by_link_X[_ranges(self.link_ptr_L1[sat], self.link_ptr_L1[sat + 1])]
            f = self.flow_X[entries]
            f = f[~frozen_F[f]]
            if len(f) > 1:  # distinct flows without sorting: keep the occurrence that wins a scatter
                order = np.arange(len(f))
                slot_F[f] = order
                f = f[slot_F[f] == order]
            wsum_L[sat] = 0.0
            if not len(f):
                continue
            rate_F[f] = w_F[f] * level
            frozen_F[f] = True
            fe = _ranges(self.indptr_F1[f], self.indptr_F1[f + 1])
            ff = self.flow_X[fe]
            lk = self.links_X[fe]
            free_L -= np.bincount(lk, weights=rate_F[ff], minlength=self.links)
            wsum_L -= np.bincount(lk, weights=w_F[ff], minlength=self.links)
            wsum_L[sat] = 0.0
        return rate_F


def maxmin_rates(capacity_L: np.ndarray, indptr_F1: np.ndarray, links_X: np.ndarray,
                 active_F: np.ndarray | None = None, rtol: float = 0.0,
                 weight_F: np.ndarray | None = None) -> np.ndarray:
    """Max-min fair rate (bytes/s) of every flow (one-off; see FlowNetwork for repeated use)."""
    return FlowNetwork(capacity_L, indptr_F1, links_X).rates(active_F, weight_F, rtol)


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
                   record_segments: bool = False, weight_F: np.ndarray | str | None = None) -> FlowSolution:
    """Run flows of `bytes_F` bytes from `start_F` (default 0) to completion under max-min fair sharing.

    Rates are recomputed at every start and every (batched) finish; between events they are constant.
    """
    indptr_F1, links_X = np.asarray(indptr_F1, dtype=np.int64), np.asarray(links_X, dtype=np.int64)
    net = FlowNetwork(capacity_L, indptr_F1, links_X)
    ids = np.arange(net.flows)  # global ids of the flows in `net` (shrinks as flows finish)
    flows, links = net.flows, net.links
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
        if 2 * int((~done_F).sum()) < len(ids):  # most flows are done: solve on the rest only
            ids = np.flatnonzero(~done_F)
            sub = _ranges(indptr_F1[ids], indptr_F1[ids + 1])
            sub_indptr = np.concatenate([[0], np.cumsum(indptr_F1[ids + 1] - indptr_F1[ids])])
            net = FlowNetwork(capacity_L, sub_indptr, links_X[sub])
        weights = remaining_F if isinstance(weight_F, str) else weight_F
        rate_F = np.zeros(flows)
        rate_F[ids] = net.rates(active_F[ids], None if weights is None else weights[ids], rate_rtol)
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
        seg_L = np.bincount(net.links_X, weights=sent_F[ids][net.flow_X], minlength=links)
        link_bytes_L += seg_L
        if record_segments:
            seg_bytes.append(seg_L)
        t = t_next
        bounds.append(t)
    return FlowSolution(finish_F=finish_F, t_S1=np.asarray(bounds),
                        link_bytes_SL=np.asarray(seg_bytes) if record_segments else None,
                        link_bytes_L=link_bytes_L, rounds=rounds)
