"""The routing workload of a scenario: expert ids of every token of every GPU, per MoE layer and step.

Shape letters: B source GPUs, T tokens per source, K = top_k, E experts, N = B*T.

`expert_ids(scenario, layer, step, gpus=, tokens=, bias_E=)` returns ids_BTK. Token t of GPU g gets the
same experts whatever subset of GPUs and tokens is asked for, because every draw is keyed by
(seed, layer, step, g*T + t) (moe.routing.rng). Distributions (workload.routing.distribution):
- uniform / zipf: moe.routing.synthetic on the weights of moe.routing.popularity;
- gate: the numpy gate (moe.routing.gate) on random router logits: logits of token t are
  log w_E + z_E with z standard normal, which is x W^T for activations x ~ N(0, I) and a router matrix
  with orthonormal rows, offset by the popularity log-weights; the gate applies score, group limit,
  route_scale and the selection bias exactly as the model does. One numpy Generator per
  (seed, layer, step, GPU) draws all T tokens' logits (cost T x E per GPU);
- trace: replay of a trace file (moe.routing.trace); the load-balancing bias cannot steer it.
"""

from __future__ import annotations

import numpy as np

from moe.errors import SpecError
from moe.routing import popularity
from moe.routing.gate import gate
from moe.routing.rng import generator, stream_key, token_state
from moe.routing.synthetic import id_dtype, sample_ids
from moe.routing.trace import load_trace, replay
from moe.spec.schema import Scenario

_STREAM_TOKENS, _STREAM_GATE = 21, 22


def _batch(scenario: Scenario, gpus, tokens) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    g_count, t_count = scenario.cluster.gpus, scenario.workload.tokens_per_gpu
    gpus_B = np.arange(g_count) if gpus is None else np.asarray(gpus, dtype=np.int64).ravel()
    tokens_T = np.arange(t_count) if tokens is None else np.asarray(tokens, dtype=np.int64).ravel()
    if len(gpus_B) and (gpus_B.min() < 0 or gpus_B.max() >= g_count):
        raise SpecError("gpus", int(gpus_B.max()), f"GPU ids must lie in [0, {g_count})")
    if len(tokens_T) and (tokens_T.min() < 0 or tokens_T.max() >= t_count):
        raise SpecError("tokens", int(tokens_T.max()), f"token indices must lie in [0, {t_count})")
    gid_N = (gpus_B[:, None] * t_count + tokens_T[None, :]).ravel()
    return gpus_B, tokens_T, gid_N


def _gate_ids(scenario: Scenario, layer: int, step: int, gpus_B, tokens_T, bias_E) -> np.ndarray:
    m = scenario.model
    logw_E = popularity.log_weights(scenario, layer, step)
    logw_E = logw_E - logw_E.max()
    ids_KBT = np.empty((m.top_k, len(gpus_B), len(tokens_T)), dtype=id_dtype(m.experts))
    for b, g in enumerate(gpus_B):
        rng = generator(scenario.seed, _STREAM_GATE, layer, step, g)
        z_TE = rng.standard_normal((scenario.workload.tokens_per_gpu, m.experts))[tokens_T]
        ids_TK, _ = gate(logw_E + z_TE, score=m.score, top_k=m.top_k, groups=m.groups,
                         topk_groups=m.topk_groups, bias_E=bias_E, route_scale=m.route_scale)
        ids_KBT[:, b, :] = ids_TK.T
    return ids_KBT


def expert_ids(scenario: Scenario, layer: int, step: int = 0, *, gpus=None, tokens=None,
               bias_E: np.ndarray | None = None) -> np.ndarray:
    """(B, T, K) expert ids chosen by tokens `tokens` (default all) of GPUs `gpus` (default all) in MoE
    layer `layer` (0-based among MoE layers) at step `step`, under the selection bias bias_E (load
    balancing, default none). The result is a view of a (K, B, T) array (moe.traffic reads it as is)."""
    r, m = scenario.workload.routing, scenario.model
    gpus_B, tokens_T, gid_N = _batch(scenario, gpus, tokens)
    b, t = len(gpus_B), len(tokens_T)
    if bias_E is not None:
        bias_E = np.asarray(bias_E, dtype=np.float64)
        if bias_E.shape != (m.experts,):
            raise SpecError("bias_E", bias_E.shape, f"expected one bias per expert ({m.experts})")
    if r.distribution == "trace":
        if bias_E is not None and np.any(bias_E):
            raise SpecError("workload.load_balance.method", "bias", "a replayed trace cannot be steered by a bias")
        trace_LMK = load_trace(r.trace, m.experts, m.top_k)
        step_offset = step * scenario.cluster.gpus * scenario.workload.tokens_per_gpu
        ids_KN = replay(trace_LMK, layer, gid_N + step_offset)
        ids_KBT = ids_KN.reshape(m.top_k, b, t)
    elif r.distribution == "gate":
        ids_KBT = _gate_ids(scenario, layer, step, gpus_B, tokens_T, bias_E)
    else:
        logw_E = popularity.log_weights(scenario, layer, step, bias_E)
        state_N = token_state(gid_N, stream_key(scenario.seed, _STREAM_TOKENS, layer, step))
        clusters_CS = (popularity.clusters(scenario.seed, m.experts, m.top_k) if r.coactivation > 0 else None)
        ids_KN = sample_ids(logw_E, m.top_k, state_N, clusters_CS, r.coactivation)
        ids_KBT = ids_KN.reshape(m.top_k, b, t)
    return np.moveaxis(ids_KBT, 0, -1)


def expert_requests(ids_BTK: np.ndarray, experts: int) -> np.ndarray:
    """(token, expert) requests per logical expert in a batch of ids."""
    return np.bincount(np.asarray(ids_BTK).ravel(), minlength=experts)
