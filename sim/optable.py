"""Operation times from the profile's measured op table (`cluster.op_table`, written by calibration).

The table holds the runtime's own operations (moe.model.optable) timed at a grid of token counts, keyed
by operation, model signature (moe.model.shapes.op_signature) and, for CPU calibrations, the ranks that
shared the node while they were measured (`per_node`). A lookup:

- selects the points of (op, signature) whose per_node equals the scenario's ranks per node
  (gpus_per_node), else those with per_node 0 (measured on a device of its own), else the nearest
  per_node (in ratio); of those, where they record the job size they were measured at (`ranks`: the
  exchange), the ones nearest the scenario's GPUs (in ratio; a tie to the larger);
- per context (keys per sequence; 0 for operations without one) interpolates the time linearly in tokens
  between measured counts; below the smallest count the time stays at that point's (fixed costs
  dominate there); above the largest it grows in proportion to the tokens (the last point's time per
  token);
- across contexts interpolates linearly in the context between the two nearest measured ones, and
  extrapolates linearly from the nearest two outside them (attention is affine in the keys at a fixed
  token count: projections per token plus scores and values per key), never below the nearest context's
  time scaled by the context ratio.

`None` when the table has no point for (op, signature): the caller falls back to its cost model.
Everything is vectorised over tokens. `op_issue_s` looks up the points' host seconds (`host_s`, the cost
of issuing the call, which GPU calibrations measure) the same way.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from moe.spec.schema import Cluster, OpPoint

Curve = tuple[np.ndarray, np.ndarray]
"""(tokens_P, seconds_P) of one context, tokens ascending."""


@lru_cache(maxsize=64)
def _index(table: tuple[OpPoint, ...]) -> dict[tuple[str, str], dict[int, list[OpPoint]]]:
    """(op, signature) -> per_node -> points."""
    out: dict[tuple[str, str], dict[int, list[OpPoint]]] = {}
    for p in table:
        out.setdefault((p.op, p.model), {}).setdefault(p.per_node, []).append(p)
    return out


def _nearest(have, want: int) -> int:
    """Of the counts `have`, the nearest `want` in ratio; a tie to the larger."""
    return min(have, key=lambda k: (abs(np.log(max(k, 1) / max(want, 1))), -k))


def _chosen(cluster: Cluster, op: str, signature: str, field: str = "s"):
    return _curves(cluster.op_table, op, signature, cluster.gpus_per_node, cluster.gpus, field)


@lru_cache(maxsize=1024)
def _curves(table: tuple[OpPoint, ...], op: str, signature: str, per_node: int, gpus: int,
            field: str = "s") -> tuple[tuple[int, Curve], ...] | None:
    """The chosen points' `field` ("s", "host_s" or "device_s") as (context, curve) pairs, contexts
    ascending; None without points or where a chosen point lacks the field."""
    by_share = _index(table).get((op, signature))
    if not by_share:
        return None
    if per_node in by_share:
        pts = by_share[per_node]
    elif 0 in by_share:
        pts = by_share[0]
    else:
        pts = by_share[_nearest(by_share, per_node)]
    sizes = {p.ranks for p in pts if p.ranks}
    if sizes:
        size = _nearest(sizes, gpus)
        pts = [p for p in pts if p.ranks == size]
    if any(getattr(p, field) is None for p in pts):
        return None
    by_ctx: dict[int, dict[int, list[float]]] = {}
    for p in pts:
        by_ctx.setdefault(p.context, {}).setdefault(p.tokens, []).append(getattr(p, field))
    curves = []
    for ctx in sorted(by_ctx):
        tokens = sorted(by_ctx[ctx])
        curves.append((ctx, (np.array(tokens, dtype=np.float64),
                             np.array([float(np.median(by_ctx[ctx][t])) for t in tokens]))))
    return tuple(curves)


def _at_tokens(curve: Curve, tokens_T: np.ndarray) -> np.ndarray:
    """Seconds at `tokens_T` along one context's curve (module docstring)."""
    t_P, s_P = curve
    inside = np.interp(tokens_T, t_P, s_P)  # held at the ends
    above = tokens_T > t_P[-1]
    return np.where(above, s_P[-1] * tokens_T / t_P[-1], inside)


def has_op(cluster: Cluster, op: str, signature: str) -> bool:
    return bool(_index(cluster.op_table).get((op, signature)))


def op_floor_s(cluster: Cluster, op: str, signature: str) -> float | None:
    """The least measured seconds of `op` (any token count or context): its fixed cost, which on a GPU is
    the host's cost of issuing the op's kernels (the device finishes them sooner at small counts); None
    without points."""
    curves = _chosen(cluster, op, signature)
    return None if curves is None else float(min(s_P.min() for _, (_, s_P) in curves))


def op_time_s(cluster: Cluster, op: str, signature: str, tokens, context: float = 0.0):
    """Measured device seconds of `op` on `tokens` (scalar or array; 0 tokens take 0 s) with `context` keys
    per sequence: `op_device_s` where the points have it, else their `s`; None when the table has no such
    operation."""
    t = op_device_s(cluster, op, signature, tokens, context)
    if t is not None:
        return t
    curves = _chosen(cluster, op, signature)
    return None if curves is None else _lookup(curves, tokens, context)


def op_device_s(cluster: Cluster, op: str, signature: str, tokens, context: float = 0.0):
    """The points' `device_s` (timed with the host ahead: the device's work alone) of `op` on `tokens`;
    None unless every chosen point has it (CPU and older GPU calibrations)."""
    curves = _chosen(cluster, op, signature, "device_s")
    return None if curves is None else _lookup(curves, tokens, context)


def op_issue_s(cluster: Cluster, op: str, signature: str, tokens, context: float = 0.0):
    """Host seconds of issuing `op` on `tokens`: the measured `host_s` where every chosen point has it,
    else the op's floor (`op_floor_s`: an upper bound, the least time of the whole call); None without
    points."""
    curves = _chosen(cluster, op, signature, "host_s")
    if curves is None:
        floor = op_floor_s(cluster, op, signature)
        if floor is None:
            return None
        tokens_T = np.asarray(tokens, dtype=np.float64)
        out = np.where(tokens_T > 0, floor, 0.0)
        return float(out) if out.ndim == 0 else out
    return _lookup(curves, tokens, context)


def _lookup(curves: tuple[tuple[int, Curve], ...], tokens, context: float):
    """Seconds along (context, curve) pairs at `tokens` and `context` (module docstring)."""
    tokens_T = np.asarray(tokens, dtype=np.float64)
    ctxs = [c for c, _ in curves]
    if len(curves) == 1 or context <= 0:
        k = int(np.argmin([abs(c - context) for c in ctxs]))
        out = _at_tokens(curves[k][1], tokens_T)
    else:
        i = int(np.searchsorted(ctxs, context))
        lo, hi = (i - 1, i) if 0 < i < len(ctxs) else ((0, 1) if i == 0 else (len(ctxs) - 2, len(ctxs) - 1))
        (c_lo, k_lo), (c_hi, k_hi) = curves[lo], curves[hi]
        s_lo, s_hi = _at_tokens(k_lo, tokens_T), _at_tokens(k_hi, tokens_T)
        out = s_lo + (s_hi - s_lo) * (context - c_lo) / (c_hi - c_lo)
        if context < c_lo:  # extrapolated below: no less than the nearest context scaled down
            out = np.maximum(out, s_lo * context / c_lo)
        elif context > c_hi:  # extrapolated above: no less than the nearest context's time
            out = np.maximum(out, s_hi)
    out = np.where(tokens_T > 0, out, 0.0)
    return float(out) if out.ndim == 0 else out
