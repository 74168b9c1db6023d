"""Compute costs of one transformer layer on one GPU, from the model and the hardware profile.

Pure functions of (model, cluster, parallel, workload) and a token count. GEMMs go through
`sim.gemm.gemm_time_s` (measured table, roofline fallback); element-wise and cache-reading work is
memory-bound (`sim.gemm.memory_time_s`: bytes / hbm_GBps + launch overhead). The shapes follow DeepSeek-V3's
inference/model.py: MLA with a query latent, the non-absorbed form in prefill and the absorbed form in
decode (the cache keeps kv_latent + rope_dim per token); SwiGLU MLPs with w1, w3 (hidden -> inner) and w2.

Attention tensor parallelism (`parallel.attention_tp` = t): a group of t GPUs of one node serves the
group's t*T tokens; projections that produce per-head tensors are split by heads, the latent projections
(wq_a, wkv_a) are replicated, so every GPU runs them on all t*T tokens. Around attention the group
all-gathers its inputs and reduce-scatters its outputs over NVLink (ring: each GPU moves (t-1)*T hidden
vectors in BF16 each way, plus (t-1) link latencies per collective). The dense FFN of the first layers is
split the same way. With MLA the latent cache is shared by all heads, so in decode every GPU of the group
reads the whole group's cache (this is why DeepSeek runs attention data-parallel).

Prefill attention: every token attends to the (context_len + 1) / 2 earlier tokens of its sequence on
average (causal), so the score and value products cost 2 * heads * (qk + v) * keys flops per token:
quadratic in the context per sequence. Decode: one new token per sequence reads `context_len` cached
tokens; the time is the larger of the flops at the GEMM rate and the cache bytes at HBM bandwidth.
Left out: the embedding lookup and the output head (outside the 61 layers), norms inside attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moe.spec.schema import Cluster, Model, Scenario
from moe.spec.sizes import expert_weight_bytes
from sim.gemm import DTYPE_BYTES, gemm_time_s, memory_time_s

BF16 = DTYPE_BYTES["bf16"]
SCALE_BYTES_PER_128 = 4 / 128  # FP8 activations carry one float32 scale per 128 values (sizes.py)


@dataclass(frozen=True)
class Gemm:
    """One GEMM of a layer: M rows of activations times a K x N weight, `count` times."""

    name: str
    m: float
    k: int
    n: int
    dtype: str
    count: int = 1


def gemms_time_s(cluster: Cluster, gemms: list[Gemm]) -> float:
    return float(sum(g.count * gemm_time_s(cluster, g.m, g.k, g.n, g.dtype) for g in gemms))


def tp_collective_s(cluster: Cluster, model: Model, tokens: float, tp: int) -> float:
    """One ring all-gather or reduce-scatter of `tokens` BF16 hidden vectors per GPU in a TP group:
    (t-1) * tokens * hidden * 2 bytes over NVLink + (t-1) NVLink latencies + a launch."""
    if tp <= 1 or tokens <= 0:
        return 0.0
    nbytes = (tp - 1) * tokens * model.hidden * BF16
    return (nbytes / (cluster.nvlink_GBps * 1e9) + (tp - 1) * cluster.nvlink_latency_us * 1e-6
            + cluster.launch_overhead_us * 1e-6)


# ------------------------------------------------------------------------------------------- attention
def attention_gemms(model: Model, rows: float, tp: int, phase: str) -> list[Gemm]:
    """Projection GEMMs of one attention layer for `rows` tokens on one GPU of a TP group of size tp."""
    a, h, dt = model.attention, model.attention.heads // tp, model.dtype
    qk = a.head_dim + a.rope_dim
    if a.kind == "mha":
        return [Gemm("wq", rows, model.hidden, h * a.head_dim, dt),
                Gemm("wk", rows, model.hidden, h * a.head_dim, dt),
                Gemm("wv", rows, model.hidden, h * a.v_head_dim, dt),
                Gemm("wo", rows, h * a.v_head_dim, model.hidden, dt)]
    out = [Gemm("wkv_a", rows, model.hidden, a.kv_latent + a.rope_dim, dt)]
    if a.q_latent:
        out += [Gemm("wq_a", rows, model.hidden, a.q_latent, dt), Gemm("wq_b", rows, a.q_latent, h * qk, dt)]
    else:
        out.append(Gemm("wq", rows, model.hidden, h * qk, dt))
    if phase == "prefill":  # keys and values of every head from the latent
        out.append(Gemm("wkv_b", rows, a.kv_latent, h * (a.head_dim + a.v_head_dim), dt))
    else:  # absorbed: queries into the latent space, outputs out of it (per-head batched GEMMs, BF16)
        out += [Gemm("q_absorb", rows, a.head_dim * h, a.kv_latent, "bf16"),
                Gemm("o_absorb", rows, a.kv_latent, h * a.v_head_dim, "bf16")]
    out.append(Gemm("wo", rows, h * a.v_head_dim, model.hidden, dt))
    return out


def attention_core_s(cluster: Cluster, model: Model, rows: float, keys: float, tp: int, phase: str) -> float:
    """Score and value products (BF16) of `rows` queries over `keys` keys each, heads split over tp.
    Decode also reads each query's cached keys: max(compute, cache bytes / HBM)."""
    a, h = model.attention, model.attention.heads // tp
    if a.kind == "mla" and phase == "decode":  # absorbed: scores and values in the latent space
        qk, v = a.kv_latent + a.rope_dim, a.kv_latent
        cache_bytes = rows * keys * (a.kv_latent + a.rope_dim) * DTYPE_BYTES[a.kv_dtype]
    else:
        qk, v = a.head_dim + a.rope_dim if a.kind == "mla" else a.head_dim, a.v_head_dim
        cache_bytes = rows * keys * h * (a.head_dim + a.v_head_dim) * DTYPE_BYTES[a.kv_dtype]
    # per head and query: (1 x qk) @ (qk x keys), then (1 x keys) @ (keys x v); batched over heads and rows,
    # as FlashAttention / FlashMLA do, they are GEMMs of rows*h rows
    compute = float(gemm_time_s(cluster, rows * h, qk, max(keys, 1.0), "bf16")
                    + gemm_time_s(cluster, rows * h, max(keys, 1.0), v, "bf16"))
    if phase == "decode":
        return max(compute, float(memory_time_s(cluster, cache_bytes)))
    return compute


def attention_keys(scenario: Scenario) -> float:
    """Keys each query attends to: (context_len + 1) / 2 in causal prefill, context_len in decode."""
    w = scenario.workload
    return (w.context_len + 1) / 2 if w.phase == "prefill" else float(w.context_len)


def attention_s(scenario: Scenario, tokens: float) -> float:
    """Attention of `tokens` tokens of one GPU (its TP group runs tp x as many rows at 1/tp heads):
    input norm, projections, core and the residual add; TP collectives excluded (`attention_tp_comm_s`)."""
    m, c, tp, phase = scenario.model, scenario.cluster, scenario.parallel.attention_tp, scenario.workload.phase
    if tokens <= 0:
        return 0.0
    rows = tokens * tp
    norm_bytes = rows * m.hidden * BF16 * 4  # RMSNorm read + write, residual add read + write
    return (gemms_time_s(c, attention_gemms(m, rows, tp, phase))
            + attention_core_s(c, m, rows, attention_keys(scenario), tp, phase)
            + float(memory_time_s(c, norm_bytes)))


def attention_tp_comm_s(scenario: Scenario, tokens: float) -> float:
    """All-gather before and reduce-scatter after attention inside the TP group (0 without TP)."""
    tp = scenario.parallel.attention_tp
    return 2 * tp_collective_s(scenario.cluster, scenario.model, tokens, tp)


# ------------------------------------------------------------------------------------------------ MLPs
def swiglu_s(cluster: Cluster, hidden: int, inner: int, dtype: str, m) -> np.ndarray:
    """SwiGLU MLP on M tokens (array ok): w1, w3 (hidden -> inner), the activation (reads both BF16
    products, writes the FP8 input of w2 with its scales) and w2 (inner -> hidden)."""
    m_M = np.asarray(m, dtype=np.float64)
    gemm = 2 * gemm_time_s(cluster, m_M, hidden, inner, dtype) + gemm_time_s(cluster, m_M, inner, hidden, dtype)
    act_bytes = m_M * inner * (2 * BF16 + DTYPE_BYTES[dtype] * (1 + SCALE_BYTES_PER_128))
    return gemm + memory_time_s(cluster, act_bytes)


def expert_s(scenario: Scenario, tokens_per_slot) -> np.ndarray:
    """Routed experts of one GPU as grouped kernels (DeepGEMM-style: one launch covers every slot), on
    `tokens_per_slot` (the last axis is the GPU's slots; any leading axes, e.g. GPUs and chunks, stay).

    time = swiglu at M = all the GPU's tokens (the table's rate for the group's total rows) + the weight
    reads of every slot beyond the first (hbm), so a grouped GEMM pays its fixed cost once, not per slot."""
    m, c = scenario.model, scenario.cluster
    t = np.asarray(tokens_per_slot, dtype=np.float64)
    total = t.sum(axis=-1)
    active = np.count_nonzero(t, axis=-1)
    extra_weights = np.maximum(active - 1, 0) * expert_weight_bytes(m) / (c.hbm_GBps * 1e9)
    return swiglu_s(c, m.hidden, m.expert_hidden, m.dtype, total) + np.where(total > 0, extra_weights, 0.0)


def shared_expert_s(scenario: Scenario, tokens: float) -> float:
    m = scenario.model
    if not m.shared_experts or tokens <= 0:
        return 0.0
    return m.shared_experts * float(swiglu_s(scenario.cluster, m.hidden, m.expert_hidden, m.dtype, tokens))


def dense_ffn_s(scenario: Scenario, tokens: float) -> float:
    """Dense FFN of the first layers, split like attention over the TP group (rows tp*T, inner / tp),
    plus its norm and residual; TP collectives in `attention_tp_comm_s` terms (same sizes)."""
    m, c, tp = scenario.model, scenario.cluster, scenario.parallel.attention_tp
    if tokens <= 0:
        return 0.0
    rows = tokens * tp
    return (float(swiglu_s(c, m.hidden, m.dense_hidden // tp, m.dtype, rows))
            + float(memory_time_s(c, rows * m.hidden * BF16 * 4)))


def gate_s(scenario: Scenario, tokens: float) -> float:
    """Router GEMM (BF16, hidden -> experts), scores and top-k (read/write experts floats per token), the
    FFN input norm, and the FP8 quantization of the tokens to send (reads BF16, writes FP8 + scales)."""
    m, c = scenario.model, scenario.cluster
    if tokens <= 0:
        return 0.0
    send = DTYPE_BYTES[scenario.schedule.dispatch_dtype]
    quant_bytes = tokens * m.hidden * (BF16 + send * (1 + (SCALE_BYTES_PER_128 if send == 1 else 0)))
    return float(gemm_time_s(c, tokens, m.hidden, m.experts, "bf16")
                 + memory_time_s(c, tokens * m.experts * 4 * 2)
                 + memory_time_s(c, tokens * m.hidden * BF16 * 2)
                 + memory_time_s(c, quant_bytes))


@dataclass(frozen=True)
class LayerCosts:
    """Per-GPU compute seconds of one micro-batch of `tokens` tokens in one layer."""

    tokens: float
    attention_s: float
    attention_tp_comm_s: float
    gate_s: float
    dense_ffn_s: float
    shared_expert_s: float


def layer_costs(scenario: Scenario, tokens: float) -> LayerCosts:
    return LayerCosts(tokens=tokens, attention_s=attention_s(scenario, tokens),
                      attention_tp_comm_s=attention_tp_comm_s(scenario, tokens), gate_s=gate_s(scenario, tokens),
                      dense_ffn_s=dense_ffn_s(scenario, tokens), shared_expert_s=shared_expert_s(scenario, tokens))
