"""Synthetic routing: each token draws top_k distinct experts from the popularity weights.

Shape letters: K choices per token, N tokens, E experts, C clusters, R rows still to fill.

A token's experts are drawn one after another, each with probability proportional to its weight among
the experts not yet chosen (sampling without replacement, the Plackett-Luce model that Gumbel-top-k
selection on logits log w also gives). It is done by drawing with replacement and redrawing a repeat,
which has exactly that distribution; a token still repeating after `MAX_REDRAWS` draws of one choice
gets the choice by Gumbel-max over the remaining experts (also exact). Draws come from an inverse-CDF
table (`moe.routing.popularity.inverse_cdf_table`), one table lookup per draw, so no loop runs over tokens.

A co-activated token (probability `coactivation`) takes a whole cluster of top_k experts first (the
cluster chosen in proportion to its members' total weight) and fills any gap with ordinary draws.
"""

from __future__ import annotations

import numpy as np

from moe.routing.popularity import TABLE_BITS, inverse_cdf_table, probabilities
from moe.routing.rng import draw, hash32

MAX_REDRAWS = 8
_COUNTER_COACT, _COUNTER_CLUSTER, _COUNTER_CHOICE = 0, 1, 16
_COUNTER_GUMBEL = 1 << 20


def id_dtype(experts: int):
    return np.int16 if experts < 2**15 else np.int32


def _conflicts(e_R: np.ndarray, ids_KN: np.ndarray, j: int, rows: np.ndarray | None) -> np.ndarray:
    hit = np.zeros(len(e_R), dtype=bool)
    tmp = np.empty(len(e_R), dtype=bool)
    for i in range(j):
        prev = ids_KN[i] if rows is None else ids_KN[i, rows]
        np.equal(e_R, prev, out=tmp)
        hit |= tmp
    return hit


def _gumbel_fill(logw_E, ids_KN, j, rows, state_N):
    """Choice j of `rows` by Gumbel-max over the experts they have not chosen yet."""
    e = len(logw_E)
    counters = np.uint32(_COUNTER_GUMBEL + j * e) + np.arange(e, dtype=np.uint32) * np.uint32(0x9E3779B9)
    u = (hash32(state_N[rows, None] + counters[None, :]).astype(np.float64) + 0.5) / 2.0**32
    key_RE = logw_E[None, :] - np.log(-np.log(u))
    taken = ids_KN[:j, rows].T
    valid = taken >= 0
    key_RE[np.nonzero(valid)[0], taken[valid]] = -np.inf
    ids_KN[j, rows] = np.argmax(key_RE, axis=1)


def sample_ids(logw_E: np.ndarray, top_k: int, state_N: np.ndarray, clusters_CS: np.ndarray | None = None,
               coactivation: float = 0.0) -> np.ndarray:
    """(K, N) expert ids for N tokens with hash states state_N (moe.routing.rng.token_state)."""
    n, e = len(state_N), len(logw_E)
    p_E = probabilities(logw_E)
    table_U = inverse_cdf_table(p_E)
    shift = np.uint32(32 - TABLE_BITS)
    ids_KN = np.full((top_k, n), -1, dtype=id_dtype(e))
    coact = None
    if coactivation > 0 and clusters_CS is not None:
        threshold = np.uint32(min(int(coactivation * 2.0**32), 2**32 - 1))
        coact = np.flatnonzero(draw(state_N, _COUNTER_COACT) < threshold)
        members = clusters_CS[:, :top_k]
        weight_C = np.where(members >= 0, p_E[np.maximum(members, 0)], 0.0).sum(axis=1)
        cluster_U = inverse_cdf_table(weight_C, bits=16)
        pick = cluster_U[draw(state_N[coact], _COUNTER_CLUSTER) >> np.uint32(16)]
        ids_KN[:members.shape[1], coact] = members[pick].T
    for j in range(top_k):
        rows = None if coact is None or len(coact) == 0 else np.flatnonzero(ids_KN[j] < 0)
        for attempt in range(MAX_REDRAWS):
            st = state_N if rows is None else state_N[rows]
            e_R = table_U[draw(st, _COUNTER_CHOICE + j * MAX_REDRAWS + attempt) >> shift]
            bad = _conflicts(e_R, ids_KN, j, rows)
            if rows is None:
                ids_KN[j] = e_R
                rows = np.flatnonzero(bad)
            else:
                ids_KN[j, rows[~bad]] = e_R[~bad]
                rows = rows[bad]
            if not len(rows):
                break
        else:
            _gumbel_fill(logw_E, ids_KN, j, rows, state_N)
    return ids_KN
