"""Compute costs of one transformer layer on one GPU, from the model and the hardware profile.

Pure functions of (model, cluster, parallel, workload) and a token count. The GEMM shapes are the ones
the model runs (`moe.model.shapes`, torch-free: MLA non-absorbed in prefill and absorbed in decode, SwiGLU
with w1 and w3 fused); each goes through `sim.gemm.gemm_time_s` (measured table, roofline fallback), a
batch of independent products (per-head attention) as one kernel of batch x M rows. Element-wise and
cache-reading work is memory-bound (`sim.gemm.memory_time_s`: bytes / hbm_GBps + launch overhead).

Attention tensor parallelism (`parallel.attention_tp` = t): a group of t GPUs of one node serves the
group's t*T tokens; projections that produce per-head tensors are split by heads, the latent projections
(wq_a, wkv_a) are replicated, so every GPU runs them on all t*T tokens. Around attention the group
all-gathers its inputs and reduce-scatters its outputs over NVLink (ring: each GPU moves (t-1)*T hidden
vectors in BF16 each way, plus (t-1) link latencies per collective). The dense FFN of the first layers is
split the same way. With MLA the latent cache is shared by all heads, so in decode every GPU of the group
reads the whole group's cache (this is why DeepSeek runs attention data-parallel).

Prefill attention: the shapes list every query against the sequence's context_len keys; causal
attention skips the masked half (FlashAttention skips masked blocks), so every token attends to the
(context_len + 1) / 2 earlier tokens of its sequence on average and the score and value products are
scaled by (S + 1) / (2 S): 2 * heads * (qk + v) * (S + 1) / 2 flops per token, quadratic in the context
per sequence. A micro-batch of fewer tokens than a sequence is a chunk of one sequence that attends to
its whole context on average the same way. Decode: one new token per sequence reads `context_len` cached
tokens; the time is the larger of the flops at the GEMM rate and the cache bytes at HBM bandwidth.
Left out: the embedding lookup and the output head (outside the 61 layers), norms inside attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moe.model import shapes
from moe.spec.schema import Cluster, Model, Scenario
from moe.spec.sizes import expert_weight_bytes
from sim.gemm import DTYPE_BYTES, gemm_time_s, memory_time_s

BF16 = DTYPE_BYTES["bf16"]
SCALE_BYTES_PER_128 = 4 / 128  # FP8 activations carry one float32 scale per 128 values (sizes.py)


def gemms_time_s(cluster: Cluster, gemms: list[shapes.Gemm], scale: dict[str, float] | None = None) -> float:
    """Sum of the GEMMs' times; `scale` multiplies the time of GEMMs by name (e.g. causal masking)."""
    scale = scale or {}
    return float(sum(scale.get(g.name, 1.0) * gemm_time_s(cluster, g.m * g.batch, g.k, g.n, g.dtype)
                     for g in gemms))


def tp_collective_s(cluster: Cluster, model: Model, tokens: float, tp: int) -> float:
    """One ring all-gather or reduce-scatter of `tokens` BF16 hidden vectors per GPU in a TP group:
    (t-1) * tokens * hidden * 2 bytes over NVLink + (t-1) NVLink latencies + a launch."""
    if tp <= 1 or tokens <= 0:
        return 0.0
    nbytes = (tp - 1) * tokens * model.hidden * BF16
    return (nbytes / (cluster.nvlink_GBps * 1e9) + (tp - 1) * cluster.nvlink_latency_us * 1e-6
            + cluster.launch_overhead_us * 1e-6)


# ------------------------------------------------------------------------------------------- attention
CORE = ("attn.scores", "attn.values")


def attention_shapes(scenario: Scenario, rows: int) -> tuple[list[shapes.Gemm], float]:
    """(GEMMs of one GPU's attention on `rows` tokens, the factor on the score and value products)."""
    m, w, tp = scenario.model, scenario.workload, scenario.parallel.attention_tp
    s = w.context_len
    if w.phase == "decode":  # one new token per sequence over its cache; MLA in the absorbed form
        return shapes.attention_gemms(m, rows, sequences=rows, keys=s, absorbed=m.attention.kind == "mla",
                                      tp=tp), 1.0
    sequences = rows // s if rows >= s and rows % s == 0 else 1
    return shapes.attention_gemms(m, rows, sequences=sequences, keys=s, tp=tp), (s + 1) / (2 * s)


def decode_cache_bytes(model: Model, rows: float, keys: float, tp: int) -> float:
    """KV-cache bytes the decode attention of one GPU reads: MLA's latent (shared by every head: the
    whole TP group's rows), MHA's keys and values of its 1/tp of the heads."""
    a = model.attention
    if a.kind == "mla":
        return rows * keys * (a.kv_latent + a.rope_dim) * DTYPE_BYTES[a.kv_dtype]
    return rows * keys * (a.heads // tp) * (a.head_dim + a.v_head_dim) * DTYPE_BYTES[a.kv_dtype]


def attention_core_s(scenario: Scenario, rows: int) -> float:
    """Score and value products of one GPU's attention on `rows` tokens (decode: no faster than reading
    the cache at HBM bandwidth)."""
    c = scenario.cluster
    gemms, factor = attention_shapes(scenario, rows)
    compute = gemms_time_s(c, [g for g in gemms if g.name in CORE], dict.fromkeys(CORE, factor))
    if scenario.workload.phase == "decode":
        cache = decode_cache_bytes(scenario.model, rows, scenario.workload.context_len, scenario.parallel.attention_tp)
        return max(compute, float(memory_time_s(c, cache)))
    return compute


def attention_s(scenario: Scenario, tokens: float) -> float:
    """Attention of `tokens` tokens of one GPU (its TP group runs tp x as many rows at 1/tp heads):
    input norm, projections, core and the residual add; TP collectives excluded (`attention_tp_comm_s`)."""
    m, c, tp = scenario.model, scenario.cluster, scenario.parallel.attention_tp
    rows = int(round(tokens * tp))
    if rows <= 0:
        return 0.0
    gemms, _ = attention_shapes(scenario, rows)
    norm_bytes = rows * m.hidden * BF16 * 4  # RMSNorm read + write, residual add read + write
    return (gemms_time_s(c, [g for g in gemms if g.name not in CORE]) + attention_core_s(scenario, rows)
            + float(memory_time_s(c, norm_bytes)))


def attention_tp_comm_s(scenario: Scenario, tokens: float) -> float:
    """All-gather before and reduce-scatter after attention inside the TP group (0 without TP)."""
    tp = scenario.parallel.attention_tp
    return 2 * tp_collective_s(scenario.cluster, scenario.model, tokens, tp)


# ------------------------------------------------------------------------------------------------ MLPs
def swiglu_s(cluster: Cluster, model: Model, inner: int, m) -> np.ndarray:
    """SwiGLU MLP on M tokens (array ok): the fused w1|w3 and w2 GEMMs of `moe.model.shapes.swiglu_gemms`,
    and the activation between them (reads the BF16 w1|w3 product, writes w2's FP8 input and scales)."""
    m_M = np.asarray(m, dtype=np.float64)
    gemm = sum(gemm_time_s(cluster, m_M * g.m * g.batch, g.k, g.n, g.dtype)
               for g in shapes.swiglu_gemms("mlp", model, 1, inner))
    act_bytes = m_M * inner * (2 * BF16 + DTYPE_BYTES[model.dtype] * (1 + SCALE_BYTES_PER_128))
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
    return swiglu_s(c, m, m.expert_hidden, total) + np.where(total > 0, extra_weights, 0.0)


def shared_expert_s(scenario: Scenario, tokens: float) -> float:
    m = scenario.model
    if not m.shared_experts or tokens <= 0:
        return 0.0
    return m.shared_experts * float(swiglu_s(scenario.cluster, m, m.expert_hidden, tokens))


def dense_ffn_s(scenario: Scenario, tokens: float) -> float:
    """Dense FFN of the first layers, split like attention over the TP group (rows tp*T, inner / tp),
    plus its norm and residual; TP collectives in `attention_tp_comm_s` terms (same sizes)."""
    m, c, tp = scenario.model, scenario.cluster, scenario.parallel.attention_tp
    if tokens <= 0:
        return 0.0
    rows = tokens * tp
    return (float(swiglu_s(c, m, m.dense_hidden // tp, rows))
            + float(memory_time_s(c, rows * m.hidden * BF16 * 4)))


def gate_s(scenario: Scenario, tokens: float) -> float:
    """Router GEMM (BF16, hidden -> experts), scores and top-k (read/write experts floats per token), the
    FFN input norm, and the FP8 quantization of the tokens to send (reads BF16, writes FP8 + scales)."""
    m, c = scenario.model, scenario.cluster
    if tokens <= 0:
        return 0.0
    send = DTYPE_BYTES[scenario.schedule.dispatch_dtype]
    quant_bytes = tokens * m.hidden * (BF16 + send * (1 + (SCALE_BYTES_PER_128 if send == 1 else 0)))
    g = shapes.gate_gemm(m, 1)
    return float(gemm_time_s(c, tokens, g.k, g.n, g.dtype)
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
