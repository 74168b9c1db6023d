"""Compute costs of one transformer layer on one GPU: measured runtime operations first, physics after.

Pure functions of the scenario and a micro-batch. Every operation is looked up in the profile's op table
(`sim.optable`: the runtime's own calls, timed by calibration for the model's dims) and, where the table
has no entry for the model, computed from the cost model:

- GEMMs are the ones the model runs (`moe.model.shapes`, torch-free: MLA non-absorbed in prefill and
  absorbed in decode, SwiGLU with w1 and w3 fused), each through `sim.gemm.gemm_time_s` (measured GEMM
  table, roofline fallback), a batch of independent products (per-head attention) as one kernel of
  batch x M rows; element-wise and cache-reading work is memory-bound (`sim.gemm.memory_time_s`).
- Attention tensor parallelism (`parallel.attention_tp` = t, physics only: the table is measured
  without it): a group of t GPUs of one node serves the group's t*T tokens; projections that produce
  per-head tensors are split by heads, the latent projections (wq_a, wkv_a) are replicated. Around
  attention the group all-gathers its inputs and reduce-scatters its outputs over NVLink (ring: each GPU
  moves (t-1)*T hidden vectors in BF16 each way, plus (t-1) link latencies per collective). The dense
  FFN is split the same way. With MLA the latent cache is shared by all heads, so in decode every GPU of
  the group reads the whole group's cache.

Micro-batches follow the runtime's layout (emu/microbatch.py): prefill runs B = ceil(T / context_len)
sequences of L = T / B tokens; with B >= M micro-batches each takes whole sequences (fresh: S = L keys),
else every sequence is cut into M chunks of consecutive positions and chunk i attends to the S_i keys up
to its end, after chunk i - 1 (`MicroBatch.after`). Causal attention skips the masked part, so a chunk of
L_i new tokens after P cached ones sees P + (L_i + 1) / 2 keys per query on average (scores and values
scaled by that over S_i). Decode: one new token per sequence over context_len cached tokens; the time is
the larger of the flops at the GEMM rate and the cache bytes at HBM bandwidth.
Host and device: on a GPU the runtime's host issues every kernel, plans the dispatch in numpy and posts
the exchange, running ahead of the device, which cannot start work before it is issued. Where
calibration measured the host's side (op `exchange`, the bookkeeping of one exchange, and each op's
`host_s`, the host time of issuing it), every task also carries its issue cost (`LayerCosts.host_*`,
`expert_issue_s`) and the executor runs the host as a second resource of each GPU (sim.executor): small
token counts, and many experts per GPU on small shards, are host-bound.
Left out of the physics: the embedding lookup and the output head, norms inside attention, and the
runtime's per-step KV cache setup (a serving system keeps its caches; the table measures the runtime's).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from moe.model import shapes
from moe.spec import sizes
from moe.spec.schema import Cluster, Model, Scenario
from moe.spec.sizes import expert_weight_bytes
from sim.gemm import DTYPE_BYTES, gemm_time_s, memory_time_s
from sim.optable import has_op, op_device_s, op_issue_s, op_time_s

BF16 = DTYPE_BYTES["bf16"]
F32 = 4
SCALE_BYTES_PER_128 = 4 / 128  # FP8 activations carry one float32 scale per 128 values (sizes.py)


def wire(s: Scenario) -> tuple[str, str]:
    return s.schedule.dispatch_dtype, s.schedule.combine_dtype


def measured(s: Scenario, op: str, tokens, context: float = 0.0):
    """The op table's seconds for `op` of the scenario's model, or None (physics then)."""
    return op_time_s(s.cluster, op, shapes.op_signature(s.model, op, wire(s)), tokens, context)


# ------------------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class MicroBatch:
    """One micro-batch of a GPU's tokens as the runtime splits them."""

    tokens: float
    sequences: float
    new: float
    """New tokens per sequence (decode: 1)."""
    keys: float
    """Keys per sequence after this call (decode: the cached context)."""
    after: int | None = None


def micro_batches(s: Scenario) -> list[MicroBatch]:
    """The runtime's micro-batches (module docstring; emu/microbatch.py `layout`)."""
    w, m = s.workload, s.schedule.micro_batches
    t, b = w.tokens_per_gpu, sizes.sequences_per_gpu(s)
    if w.phase == "decode":
        return [MicroBatch(float(len(x)), float(len(x)), 1.0, float(w.context_len))
                for x in np.array_split(np.arange(b), m)]
    new = t / b
    if b >= m:
        return [MicroBatch(len(x) * new, float(len(x)), new, new) for x in np.array_split(np.arange(b), m)]
    cuts = [len(x) for x in np.array_split(np.arange(int(round(new))), m)]
    ends = np.cumsum(cuts)
    return [MicroBatch(float(b * c), float(b), float(c), float(e), i - 1 if i else None)
            for i, (c, e) in enumerate(zip(cuts, ends, strict=True))]


# --------------------------------------------------------------------------------------- physics
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


CORE = ("attn.scores", "attn.values")


def attention_shapes(s: Scenario, mb: MicroBatch) -> tuple[list[shapes.Gemm], float]:
    """(GEMMs of one GPU's attention on micro-batch `mb` (its TP group's rows), the causal factor on the
    score and value products)."""
    m, tp = s.model, s.parallel.attention_tp
    rows, seqs, keys = int(round(mb.tokens * tp)), max(1, int(round(mb.sequences * tp))), int(round(mb.keys))
    if s.workload.phase == "decode":  # one new token per sequence over its cache; MLA in the absorbed form
        return shapes.attention_gemms(m, rows, sequences=rows, keys=keys, absorbed=m.attention.kind == "mla",
                                      tp=tp), 1.0
    if rows % seqs:
        seqs = 1
    seen = keys - mb.new + (mb.new + 1) / 2  # causal: keys per query on average
    return shapes.attention_gemms(m, rows, sequences=seqs, keys=keys, tp=tp), seen / keys


def decode_cache_bytes(model: Model, rows: float, keys: float, tp: int) -> float:
    """KV-cache bytes the decode attention of one GPU reads: MLA's latent (shared by every head: the
    whole TP group's rows), MHA's keys and values of its 1/tp of the heads."""
    a = model.attention
    if a.kind == "mla":
        return rows * keys * (a.kv_latent + a.rope_dim) * DTYPE_BYTES[a.kv_dtype]
    return rows * keys * (a.heads // tp) * (a.head_dim + a.v_head_dim) * DTYPE_BYTES[a.kv_dtype]


def attention_core_s(s: Scenario, mb: MicroBatch) -> float:
    """Score and value products of one GPU's attention on `mb` (decode: no faster than reading the cache
    at HBM bandwidth)."""
    c = s.cluster
    gemms, factor = attention_shapes(s, mb)
    compute = gemms_time_s(c, [g for g in gemms if g.name in CORE], dict.fromkeys(CORE, factor))
    if s.workload.phase == "decode":
        tp = s.parallel.attention_tp
        cache = decode_cache_bytes(s.model, mb.tokens * tp, mb.keys, tp)
        return max(compute, float(memory_time_s(c, cache)))
    return compute


def attention_physics_s(s: Scenario, mb: MicroBatch) -> float:
    """Input norm, projections, core and the residual add of `mb` (TP collectives excluded)."""
    m, c, tp = s.model, s.cluster, s.parallel.attention_tp
    rows = mb.tokens * tp
    if rows <= 0:
        return 0.0
    gemms, _ = attention_shapes(s, mb)
    norm_bytes = rows * m.hidden * BF16 * 4  # RMSNorm read + write, residual add read + write
    return (gemms_time_s(c, [g for g in gemms if g.name not in CORE]) + attention_core_s(s, mb)
            + float(memory_time_s(c, norm_bytes)))


def swiglu_s(cluster: Cluster, model: Model, inner: int, m) -> np.ndarray:
    """SwiGLU MLP on M tokens (array ok): the fused w1|w3 and w2 GEMMs of `moe.model.shapes.swiglu_gemms`,
    and the activation between them (reads the BF16 w1|w3 product, writes w2's FP8 input and scales)."""
    m_M = np.asarray(m, dtype=np.float64)
    gemm = sum(gemm_time_s(cluster, m_M * g.m * g.batch, g.k, g.n, g.dtype)
               for g in shapes.swiglu_gemms("mlp", model, 1, inner))
    act_bytes = m_M * inner * (2 * BF16 + DTYPE_BYTES[model.dtype] * (1 + SCALE_BYTES_PER_128))
    return gemm + memory_time_s(cluster, act_bytes)


def grouped_expert_s(s: Scenario, tokens_per_slot) -> np.ndarray:
    """Routed experts of one GPU as grouped kernels (DeepGEMM-style: one launch covers every slot), on
    `tokens_per_slot` (last axis: the GPU's slots; leading axes stay): swiglu at M = all the GPU's rows +
    the weight reads of every slot beyond the first (hbm), so the fixed cost is paid once, not per slot."""
    m, c = s.model, s.cluster
    t = np.asarray(tokens_per_slot, dtype=np.float64)
    total = t.sum(axis=-1)
    active = np.count_nonzero(t, axis=-1)
    extra_weights = np.maximum(active - 1, 0) * expert_weight_bytes(m) / (c.hbm_GBps * 1e9)
    return swiglu_s(c, m, m.expert_hidden, total) + np.where(total > 0, extra_weights, 0.0)


# ------------------------------------------------------------------------------ table, then physics
def attention_s(s: Scenario, mb: MicroBatch) -> float:
    if s.parallel.attention_tp == 1:
        op = "attention.decode" if s.workload.phase == "decode" else "attention.prefill"
        t = measured(s, op, mb.tokens, mb.keys)
        if t is not None:
            return t
    return attention_physics_s(s, mb)


def attention_tp_comm_s(s: Scenario, tokens: float) -> float:
    """All-gather before and reduce-scatter after attention inside the TP group (0 without TP)."""
    return 2 * tp_collective_s(s.cluster, s.model, tokens, s.parallel.attention_tp)


def expert_s(s: Scenario, rows_per_slot) -> np.ndarray:
    """Routed-expert seconds of one task over `rows_per_slot` (last axis: the GPU's slots): with the
    runtime's `expert` op measured, one expert call per slot with rows (summed), each on the rows it runs:
    on a GPU with `real.graphs` a captured call's padded rows (`sizes.graph_rows`); else grouped kernels."""
    r = np.asarray(rows_per_slot, dtype=np.float64)
    t = measured(s, "expert", sizes.graph_rows(r) if graph_padding(s) else r)
    if t is None:
        return grouped_expert_s(s, r)
    return np.where(r > 0, t, 0.0).sum(axis=-1)


def shard_s(s: Scenario, rows) -> np.ndarray:
    """Seconds of a received shard's fixed work on `rows` rows (unpacking them, grouping them by slot,
    packing the results), paid once per shard however many experts it holds, where the table measured it
    (op `shard`); 0 where it did not (older tables fold it into the `expert` op)."""
    r = np.asarray(rows, dtype=np.float64)
    t = measured(s, "shard", r)
    return np.zeros(r.shape) if t is None else np.asarray(t)


def shared_expert_s(s: Scenario, tokens: float) -> float:
    m = s.model
    if not m.shared_experts or tokens <= 0:
        return 0.0
    t = measured(s, "shared", tokens)
    return t if t is not None else m.shared_experts * float(swiglu_s(s.cluster, m, m.expert_hidden, tokens))


def dense_ffn_s(s: Scenario, tokens: float) -> float:
    """Dense FFN of the first layers with its norm and residual, split like attention over the TP group
    (rows tp*T, inner / tp); TP collectives in `attention_tp_comm_s` terms (same sizes)."""
    m, c, tp = s.model, s.cluster, s.parallel.attention_tp
    if tokens <= 0:
        return 0.0
    t = measured(s, "dense", tokens) if tp == 1 else None
    if t is not None:
        return t
    rows = tokens * tp
    return float(swiglu_s(c, m, m.dense_hidden // tp, rows)) + float(memory_time_s(c, rows * m.hidden * BF16 * 4))


def gate_s(s: Scenario, tokens: float) -> float:
    """FFN input norm, router GEMM (BF16, hidden -> experts), scores and the weights of the chosen ids."""
    m, c = s.model, s.cluster
    if tokens <= 0:
        return 0.0
    t = measured(s, "gate", tokens)
    if t is not None:
        return t
    g = shapes.gate_gemm(m, 1)
    return float(gemm_time_s(c, tokens, g.k, g.n, g.dtype) + memory_time_s(c, tokens * m.experts * F32 * 2)
                 + memory_time_s(c, tokens * m.hidden * BF16 * 2))


def pack_s(s: Scenario, tokens: float) -> float:
    """Grouping by destination and quantizing the tokens to send (reads BF16, writes FP8 + scales)."""
    if tokens <= 0 or not s.model.moe_layers:
        return 0.0
    t = measured(s, "dispatch", tokens)
    return t if t is not None else pack_physics_s(s, tokens)


def combine_sum_s(s: Scenario, tokens: float, rows: float) -> float:
    """Summing `rows` returned rows into `tokens` tokens, plus the residual and the shared expert (reads
    the rows in the combine dtype and x, shared in float32, writes x)."""
    if tokens <= 0 or not s.model.moe_layers:
        return 0.0
    t = measured(s, "combine", tokens)
    if t is not None:
        return t
    h = s.model.hidden
    nbytes = rows * h * DTYPE_BYTES[s.schedule.combine_dtype] + tokens * h * (2 * BF16 + 2 * F32)
    return float(memory_time_s(s.cluster, nbytes))


def pack_device_s(s: Scenario, tokens: float) -> float:
    """The pack's device seconds apart from the host's planning (host model): the `dispatch` op's `device_s`
    where the table has it, else the pack's memory traffic."""
    sig = shapes.op_signature(s.model, "dispatch", wire(s))
    t = op_device_s(s.cluster, "dispatch", sig, tokens) if tokens > 0 and s.model.moe_layers else None
    return t if t is not None else pack_physics_s(s, tokens)


def pack_physics_s(s: Scenario, tokens: float) -> float:
    """The pack's device work: read the rows in BF16, write them in the dispatch dtype (+ FP8 scales) after
    their routing meta."""
    if tokens <= 0 or not s.model.moe_layers:
        return 0.0
    send = DTYPE_BYTES[s.schedule.dispatch_dtype]
    scales = SCALE_BYTES_PER_128 if send == 1 else 0.0
    meta = sizes.ROUTING_META_BYTES_PER_CHOICE * s.model.top_k
    return float(memory_time_s(s.cluster, tokens * (s.model.hidden * (BF16 + send * (1 + scales)) + meta)))


def host_model(s: Scenario) -> bool:
    """Whether the host is simulated: the table measured the exchange's bookkeeping (GPU calibrations) and
    the scenario runs as the table was measured (no attention TP)."""
    return s.parallel.attention_tp == 1 and bool(s.model.moe_layers) \
        and has_op(s.cluster, shapes.EXCHANGE, shapes.op_signature(s.model, shapes.EXCHANGE, wire(s)))


def graph_padding(s: Scenario) -> bool:
    """Whether expert calls run on padded rows: the real runtime's CUDA graphs (`real.graphs`) on a GPU
    table (`host_model`: GPU calibrations measure the host's side)."""
    return s.real.graphs and host_model(s)


def host_factors(s: Scenario) -> tuple[float, ...]:
    """Per GPU, its host's speed factor in the host model: GPU g runs at calibrated rank g mod R's
    (`cluster.host_factors`); empty (every host at the table's median) outside the model or unmeasured."""
    f = s.cluster.host_factors
    if not f or not host_model(s):
        return ()
    return tuple(f[g % len(f)] for g in range(s.cluster.gpus))


def issue_s(s: Scenario, op: str, tokens, context: float = 0.0):
    """Host seconds of issuing `op` (sim.optable.op_issue_s: measured `host_s`, else the op's floor); 0
    where the table has no such op."""
    t = op_issue_s(s.cluster, op, shapes.op_signature(s.model, op, wire(s)), tokens, context)
    return 0.0 if t is None else t


def expert_issue_s(s: Scenario, rows_per_slot, shard_rows) -> np.ndarray:
    """Host seconds of computing a shard of `shard_rows` rows: its fixed work (op `shard`, where measured)
    and one expert call issued per slot with rows (`rows_per_slot`, last axis: the GPU's slots); 0 outside
    the host model."""
    r = np.asarray(rows_per_slot, dtype=np.float64)
    if not host_model(s):
        return np.zeros(r.shape[:-1])
    fixed = np.where(np.asarray(shard_rows) > 0, issue_s(s, "shard", shard_rows), 0.0)
    return np.where(r > 0, issue_s(s, "expert", r), 0.0).sum(axis=-1) + fixed


def setup_s(s: Scenario) -> float:
    """The runtime's per-step KV cache setup of every layer, where the table measured it (else 0)."""
    w = s.workload
    op = f"kv_setup.{w.phase}"
    t = measured(s, op, w.tokens_per_gpu, w.context_len if w.phase == "decode" else 0)
    return s.model.layers * t if t is not None else 0.0


@dataclass(frozen=True)
class LayerCosts:
    """Per-GPU compute seconds of one micro-batch of `tokens` tokens in one layer, and the host seconds of
    issuing each task (0 outside the host model)."""

    tokens: float
    attention_s: float
    attention_tp_comm_s: float
    gate_s: float
    dense_ffn_s: float
    shared_expert_s: float
    pack_s: float = 0.0
    combine_sum_s: float = 0.0
    host_attention_s: float = 0.0
    host_dense_s: float = 0.0
    host_gate_s: float = 0.0
    """MoE layers after attention: issuing the gate."""
    host_pack_s: float = 0.0
    """The dispatch: planning it in numpy and issuing the pack."""
    host_exchange_s: float = 0.0
    """The exchange's bookkeeping (counts round trip, posting the collectives: op `exchange`)."""
    host_shared_s: float = 0.0
    host_combine_s: float = 0.0


def layer_costs(s: Scenario, mb: MicroBatch, returned_rows: float = 0.0) -> LayerCosts:
    """Costs of micro-batch `mb`; `returned_rows`: rows its combine sums (physics of the combine).

    In the host model (`host_model`) the `dispatch` op's time on an idle GPU (`s`) is mostly the host's
    planning, which is in host_pack_s: the device's part is the measured `device_s` (the pack's kernels
    with the host ahead), else the pack's memory traffic (`pack_physics_s`); without the host model the
    measured time is the pack's and the host is assumed to keep up."""
    t = mb.tokens
    host = host_model(s)
    costs = LayerCosts(tokens=t, attention_s=attention_s(s, mb), attention_tp_comm_s=attention_tp_comm_s(s, t),
                       gate_s=gate_s(s, t), dense_ffn_s=dense_ffn_s(s, t), shared_expert_s=shared_expert_s(s, t),
                       pack_s=pack_device_s(s, t) if host else pack_s(s, t),
                       combine_sum_s=combine_sum_s(s, t, returned_rows))
    if not host or t <= 0:
        return costs
    att = "attention.decode" if s.workload.phase == "decode" else "attention.prefill"
    return replace(costs, host_attention_s=issue_s(s, att, t, mb.keys), host_dense_s=issue_s(s, "dense", t),
                   host_gate_s=issue_s(s, "gate", t), host_pack_s=issue_s(s, "dispatch", t),
                   host_exchange_s=measured(s, shapes.EXCHANGE, t) or 0.0,
                   host_shared_s=issue_s(s, "shared", t) if s.model.shared_experts else 0.0,
                   host_combine_s=issue_s(s, "combine", t))
