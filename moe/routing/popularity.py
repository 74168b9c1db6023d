"""Expert popularity of a synthetic workload: the selection weight of each expert per (layer, step).

Shape letters: E experts, C co-activation clusters, U table entries.

- distribution `uniform`: equal weights; `zipf`: the expert of popularity rank r (1-based) has weight
  r^-skew (skew 0 is uniform; skew 1 gives the hottest of 256 experts 16% of the choices).
- ranking: a permutation of experts from `seed` (so hot experts are not simply the low ids). With
  `layer_variation` v, layer l ranks experts by (1 - v) * base_rank/E + v * u_l(e), u_l uniform per layer:
  v = 0 keeps one ranking for every layer, v = 1 draws an independent ranking per layer.
- drift: log-weights take a Gaussian random walk over steps, standard deviation `drift` per step.
- bias (load balancing): added to the log-weights, i.e. a selection logit offset, never to the routing
  weights themselves.
- co-activation clusters: the seed's permutation of experts cut into clusters of top_k experts; a
  co-activated token picks one cluster with probability proportional to its members' total weight.
"""

from __future__ import annotations

import numpy as np

from moe.routing.rng import generator
from moe.spec.schema import Scenario


def table_bits(experts: int) -> int:
    """Inverse-CDF tables have 2^bits entries, bits = log2(E) + 10 within [16, 20]: probabilities are
    resolved to 1/1024 of a uniform expert's (at least 2^-20), and the table stays small enough for cache."""
    return int(min(20, max(16, np.ceil(np.log2(max(experts, 2))) + 10)))

_STREAM_RANK, _STREAM_LAYER, _STREAM_DRIFT, _STREAM_CLUSTER = 11, 12, 13, 14


def base_ranking(seed: int, experts: int) -> np.ndarray:
    """Experts in order of falling popularity, before per-layer variation."""
    return generator(seed, _STREAM_RANK).permutation(experts)


def layer_ranking(seed: int, experts: int, layer: int, variation: float) -> np.ndarray:
    """Experts in order of falling popularity in `layer`."""
    base = base_ranking(seed, experts)
    if variation == 0:
        return base
    rank_E = np.empty(experts)
    rank_E[base] = np.arange(experts) / experts
    score_E = (1 - variation) * rank_E + variation * generator(seed, _STREAM_LAYER, layer).random(experts)
    return np.argsort(score_E, kind="stable")


def log_weights(scenario: Scenario, layer: int, step: int, bias_E: np.ndarray | None = None) -> np.ndarray:
    """Unnormalised log selection weight of each expert in (layer, step) (module docstring)."""
    r, e = scenario.workload.routing, scenario.model.experts
    skew = r.skew if r.distribution in ("zipf", "gate", "trace") else 0.0
    logw_E = np.empty(e)
    logw_E[layer_ranking(scenario.seed, e, layer, r.layer_variation)] = -skew * np.log(np.arange(1, e + 1))
    if r.drift > 0 and step > 0:
        walk = generator(scenario.seed, _STREAM_DRIFT, layer).standard_normal((step, e)).sum(axis=0)
        logw_E += r.drift * walk
    if bias_E is not None:
        logw_E = logw_E + bias_E
    return logw_E


def probabilities(logw_E: np.ndarray) -> np.ndarray:
    w = np.exp(logw_E - logw_E.max())
    return w / w.sum()


def clusters(seed: int, experts: int, size: int) -> np.ndarray:
    """(C, size) co-activation clusters; the last one is padded with -1 when size does not divide E."""
    perm = generator(seed, _STREAM_CLUSTER).permutation(experts)
    c = -(-experts // size)
    out = np.full(c * size, -1, dtype=np.int64)
    out[:experts] = perm
    return out.reshape(c, size)


def inverse_cdf_table(p: np.ndarray, bits: int) -> np.ndarray:
    """Table of 2^bits outcome ids: entry u holds the outcome whose CDF interval contains (u + 0.5)/2^bits,
    so a uniform table index samples outcome i with probability p_i (rounded to 2^-bits)."""
    size = 1 << bits
    cdf = np.cumsum(p / p.sum())
    table = np.searchsorted(cdf, (np.arange(size) + 0.5) / size, side="right")
    dtype = np.int16 if len(p) < 2**15 else np.int32
    return np.minimum(table, len(p) - 1).astype(dtype)
