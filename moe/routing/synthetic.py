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

from moe.routing.popularity import inverse_cdf_table, probabilities, table_bits
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


BLOCK_TOKENS = 32768
"""Tokens sampled together: a block's working arrays stay in cache."""


def _sample_block(ids_KN, state_N, table_U, shift, logw_E, cluster_U, members_CS, coactivation):
    """Fill ids_KN (K, n) in place for tokens with hash states state_N."""
    top_k = ids_KN.shape[0]
    coact = None
    if cluster_U is not None:
        threshold = np.uint32(min(int(coactivation * 2.0**32), 2**32 - 1))
        coact = np.flatnonzero(draw(state_N, _COUNTER_COACT) < threshold)
        pick = cluster_U[draw(state_N[coact], _COUNTER_CLUSTER) >> np.uint32(16)]
        ids_KN[:members_CS.shape[1], coact] = members_CS[pick].T
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


def sample_ids(logw_E: np.ndarray, top_k: int, state_N: np.ndarray, clusters_CS: np.ndarray | None = None,
               coactivation: float = 0.0) -> np.ndarray:
    """(K, N) expert ids for N tokens with hash states state_N (moe.routing.rng.token_state)."""
    n, e = len(state_N), len(logw_E)
    p_E = probabilities(logw_E)
    bits = table_bits(e)
    table_U = inverse_cdf_table(p_E, bits)
    shift = np.uint32(32 - bits)
    cluster_U = members_CS = None
    if coactivation > 0 and clusters_CS is not None:
        members_CS = clusters_CS[:, :top_k]
        weight_C = np.where(members_CS >= 0, p_E[np.maximum(members_CS, 0)], 0.0).sum(axis=1)
        cluster_U = inverse_cdf_table(weight_C, bits=16)
    ids_KN = np.empty((top_k, n), dtype=id_dtype(e))
    for lo in range(0, n, BLOCK_TOKENS):
        hi = min(n, lo + BLOCK_TOKENS)
        block_KN = np.full((top_k, hi - lo), -1, dtype=ids_KN.dtype)
        _sample_block(block_KN, state_N[lo:hi], table_U, shift, logw_E, cluster_U, members_CS, coactivation)
        ids_KN[:, lo:hi] = block_KN
    return ids_KN
