"""Derived quantities: parameters, bytes, KV cache and per-GPU memory. Pure functions of the scenario.

Constants and their sources:
- FP8 weights are e4m3 (1 byte) with one float32 scale per 128 x 128 block; activations sent in FP8 carry
  one float32 scale per 128 channels (DeepSeek-V3 config_671B.json, ../shared/data/hardware_facts.md).
- BF16 is 2 bytes; the gate, norms and embeddings stay in BF16 (DeepSeek-V3 inference/model.py).
- A SwiGLU MLP of width h -> f -> h has three matrices: w1, w3 (h x f) and w2 (f x h).

Bytes are plain bytes; "GB" in profiles means 1e9 bytes.
"""

from __future__ import annotations

import math

import numpy as np

from moe.spec.schema import Model, Scenario

FP8_BLOCK = 128
SCALE_BYTES = 4
DTYPE_BYTES = {"fp8": 1, "bf16": 2}


def dtype_bytes(dtype: str) -> int:
    return DTYPE_BYTES[dtype]


def block_scale_count(rows: int, cols: int, block: int = FP8_BLOCK) -> int:
    """Number of (block x block) scale tiles covering a rows x cols weight."""
    return math.ceil(rows / block) * math.ceil(cols / block)


def linear_weight_bytes(in_features: int, out_features: int, dtype: str) -> int:
    """One weight matrix: payload plus, for FP8, one float32 scale per 128 x 128 block."""
    payload = in_features * out_features * dtype_bytes(dtype)
    if dtype == "fp8":
        payload += block_scale_count(out_features, in_features) * SCALE_BYTES
    return payload


# ------------------------------------------------------------------------------------------- experts
def swiglu_params(hidden: int, inner: int) -> int:
    return 3 * hidden * inner


def swiglu_weight_bytes(hidden: int, inner: int, dtype: str) -> int:
    return 2 * linear_weight_bytes(hidden, inner, dtype) + linear_weight_bytes(inner, hidden, dtype)


def expert_params(model: Model) -> int:
    """One routed expert: SwiGLU hidden -> expert_hidden -> hidden."""
    return swiglu_params(model.hidden, model.expert_hidden)


def expert_weight_bytes(model: Model) -> int:
    return swiglu_weight_bytes(model.hidden, model.expert_hidden, model.dtype)


def dense_ffn_weight_bytes(model: Model) -> int:
    return swiglu_weight_bytes(model.hidden, model.dense_hidden, model.dtype)


def gate_params(model: Model) -> int:
    """Router weight (experts x hidden) plus, for sigmoid scores, the selection-only bias."""
    return model.experts * model.hidden + (model.experts if model.score == "sigmoid" else 0)


def gate_weight_bytes(model: Model) -> int:
    return gate_params(model) * DTYPE_BYTES["bf16"]


# ----------------------------------------------------------------------------------------- attention
def _attention_matrices(model: Model) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(in, out) of every attention projection, split into (replicated under TP, split by heads)."""
    a = model.attention
    h = a.heads
    if a.kind == "mha":
        split = [(model.hidden, h * a.head_dim), (model.hidden, h * a.head_dim),
                 (model.hidden, h * a.v_head_dim), (h * a.v_head_dim, model.hidden)]
        return [], split
    qk = a.head_dim + a.rope_dim
    replicated = [(model.hidden, a.kv_latent + a.rope_dim)]  # wkv_a: latent and the shared rope key
    if a.q_latent:
        replicated.append((model.hidden, a.q_latent))  # wq_a
        split = [(a.q_latent, h * qk)]  # wq_b
    else:
        split = [(model.hidden, h * qk)]  # wq
    split += [(a.kv_latent, h * (a.head_dim + a.v_head_dim)),  # wkv_b: per-head K (nope) and V
              (h * a.v_head_dim, model.hidden)]  # wo
    return replicated, split


def attention_params(model: Model) -> int:
    """Projection parameters of one attention layer (norms excluded: < 0.01%)."""
    replicated, split = _attention_matrices(model)
    return sum(i * o for i, o in replicated + split)


def attention_weight_bytes(model: Model, tp: int = 1) -> int:
    """Attention weights of one layer held by one GPU of a TP group of size `tp`."""
    replicated, split = _attention_matrices(model)
    rep = sum(linear_weight_bytes(i, o, model.dtype) for i, o in replicated)
    return rep + math.ceil(sum(linear_weight_bytes(i, o, model.dtype) for i, o in split) / tp)


def kv_cache_bytes_per_token_per_layer(model: Model) -> int:
    """MLA keeps the KV latent plus the shared rope key; MHA keeps full K and V for every head."""
    a = model.attention
    width = a.kv_latent + a.rope_dim if a.kind == "mla" else a.heads * (a.head_dim + a.v_head_dim)
    return width * dtype_bytes(a.kv_dtype)


def kv_cache_bytes_per_token(model: Model) -> int:
    """KV cache of one token over all layers: the memory argument for MLA."""
    return kv_cache_bytes_per_token_per_layer(model) * model.layers


# ------------------------------------------------------------------------------------------- traffic
def activation_bytes_per_token(hidden: int, dtype: str) -> int:
    """One token's hidden vector on the wire: payload plus, for FP8, a float32 scale per 128 channels."""
    nbytes = hidden * dtype_bytes(dtype)
    if dtype == "fp8":
        nbytes += math.ceil(hidden / FP8_BLOCK) * SCALE_BYTES
    return nbytes


ROUTING_META_BYTES_PER_CHOICE = 8
"""A dispatch row carries its token's K routing choices in front of the activations: the expert slot
(int32) and the routing weight (float32) of each, which the receiver needs to run and weight its experts
(emu.dispatch: one message or collective moves a shard, meta included)."""


GEMM_ROW_ALIGN = 16
"""Rows an FP8 GEMM pads its row count to (cuBLAS FP8 operands want 16-byte aligned dimensions;
`moe.model.linear`)."""
GRAPH_ROW_STEPS = 16
"""Captured expert calls per doubling of the rows (`graph_rows`)."""


def graph_rows(rows):
    """Rows a routed-expert call replayed as a CUDA graph runs on (`moe.model.graphs.ModelCalls.expert`) for
    `rows` given (int, or float array for the simulator's expected rows): rounded up to a step of
    1 / GRAPH_ROW_STEPS of their power of two, at least GEMM_ROW_ALIGN. From 256 rows up less than 6.25%
    more rows (3% on average), below that fewer than 16 more; a run meets at most 16 shapes per doubling
    whatever its routing (the padding serving runtimes use for their CUDA graphs)."""
    r = np.asarray(rows, dtype=np.float64)
    step = np.maximum(GEMM_ROW_ALIGN, 2.0 ** np.floor(np.log2(np.maximum(r, 1.0))) // GRAPH_ROW_STEPS)
    b = np.where(r <= GEMM_ROW_ALIGN, GEMM_ROW_ALIGN, np.ceil(r / step) * step)
    return int(b) if isinstance(rows, (int, np.integer)) else b


def dispatch_row_bytes(hidden: int, dtype: str, top_k: int) -> int:
    """Bytes of one dispatch row on the wire: routing meta, then the activations."""
    return ROUTING_META_BYTES_PER_CHOICE * top_k + activation_bytes_per_token(hidden, dtype)


def dispatch_bytes_per_token(scenario: Scenario) -> int:
    """What one (token, destination) pair moves in a dispatch: a whole row, meta included (DeepEP's
    bandwidth metric counts the activations only: `sim.deepep`)."""
    m = scenario.model
    return dispatch_row_bytes(m.hidden, scenario.schedule.dispatch_dtype, m.top_k)


def combine_bytes_per_token(scenario: Scenario) -> int:
    return activation_bytes_per_token(scenario.model.hidden, scenario.schedule.combine_dtype)


# --------------------------------------------------------------------------------------- whole model
def embedding_weight_bytes(model: Model) -> int:
    """Input embedding plus output head, BF16."""
    return 2 * model.vocab * model.hidden * DTYPE_BYTES["bf16"]


def model_params(model: Model) -> int:
    moe_layer = gate_params(model) + (model.experts + model.shared_experts) * expert_params(model)
    return (model.layers * attention_params(model)
            + model.dense_layers * swiglu_params(model.hidden, model.dense_hidden)
            + model.moe_layers * moe_layer + 2 * model.vocab * model.hidden)


def activated_params_per_token(model: Model) -> int:
    moe_layer = gate_params(model) + (model.top_k + model.shared_experts) * expert_params(model)
    return (model.layers * attention_params(model)
            + model.dense_layers * swiglu_params(model.hidden, model.dense_hidden)
            + model.moe_layers * moe_layer + 2 * model.vocab * model.hidden)


# ---------------------------------------------------------------------------------------- per GPU
def slots_per_gpu(scenario: Scenario) -> int:
    """Expert slots each GPU provides: the explicit setting, or enough for every expert and replica."""
    p, gpus = scenario.placement, scenario.cluster.gpus
    if p.slots_per_gpu:
        return p.slots_per_gpu
    if p.strategy == "one_per_gpu":
        return 1
    return max(1, math.ceil((scenario.model.experts + p.replicas) / gpus))


def sequences_per_gpu(scenario: Scenario) -> int:
    w = scenario.workload
    return w.tokens_per_gpu if w.phase == "decode" else max(1, math.ceil(w.tokens_per_gpu / w.context_len))


def micro_batch_tokens(scenario: Scenario) -> list[np.ndarray]:
    """Per micro-batch, the indices of its tokens among a GPU's T (ascending; token b * L + l is token l of
    sequence b): whole sequences when there are at least as many sequences as micro-batches, else a chunk
    of consecutive positions of every sequence (emu/microbatch.py's layout, which checks the split)."""
    t, b, m = scenario.workload.tokens_per_gpu, sequences_per_gpu(scenario), scenario.schedule.micro_batches
    per = t // b
    if b >= m:
        return [(seqs[:, None] * per + np.arange(per)).ravel() for seqs in np.array_split(np.arange(b), m)]
    return [(np.arange(b)[:, None] * per + c[None, :]).ravel() for c in np.array_split(np.arange(per), m)]


def cached_tokens_per_gpu(scenario: Scenario) -> int:
    """Tokens whose KV this GPU's attention keeps: the prompts (prefill) or every sequence's context
    (decode)."""
    w = scenario.workload
    return w.tokens_per_gpu if w.phase == "prefill" else w.tokens_per_gpu * w.context_len


def kv_cache_bytes_per_gpu(scenario: Scenario) -> int:
    """A TP group of size t serves t x tokens_per_gpu tokens. MHA splits heads, so each GPU keeps 1/t of
    the group's cache; MLA's latent is shared by all heads, so each GPU keeps all of it."""
    tp = scenario.parallel.attention_tp
    per_gpu = cached_tokens_per_gpu(scenario) * kv_cache_bytes_per_token(scenario.model)
    return per_gpu * tp if scenario.model.attention.kind == "mla" else per_gpu


def buffer_bytes_per_gpu(scenario: Scenario) -> int:
    """Communication and activation buffers at balanced routing: dispatch send + receive
    (T*k tokens each way), combine send + receive, the expert intermediate (received tokens x
    expert_hidden x 2 BF16 tensors), and four BF16 hidden-size activations per local token."""
    m, t = scenario.model, scenario.workload.tokens_per_gpu
    routed = t * m.top_k
    comm = 2 * routed * (dispatch_bytes_per_token(scenario) + combine_bytes_per_token(scenario))
    inner = routed * m.expert_hidden * 2 * DTYPE_BYTES["bf16"]
    return comm + inner + 4 * t * m.hidden * DTYPE_BYTES["bf16"]


def memory_per_gpu(scenario: Scenario, slots: int | None = None) -> dict[str, int]:
    """Bytes one GPU holds, by part. Attention, dense FFN and embeddings are split over attention_tp
    (heads, columns, vocabulary); gate and shared experts are on every GPU; routed experts fill
    `slots` slots per MoE layer."""
    m, tp = scenario.model, scenario.parallel.attention_tp
    slots = slots_per_gpu(scenario) if slots is None else slots
    parts = {
        "attention_bytes": m.layers * attention_weight_bytes(m, tp),
        "dense_ffn_bytes": m.dense_layers * math.ceil(dense_ffn_weight_bytes(m) / tp),
        "embedding_bytes": math.ceil(embedding_weight_bytes(m) / tp),
        "gate_and_shared_bytes": m.moe_layers * (gate_weight_bytes(m) + m.shared_experts * expert_weight_bytes(m)),
        "routed_expert_bytes": m.moe_layers * slots * expert_weight_bytes(m),
        "kv_cache_bytes": kv_cache_bytes_per_gpu(scenario),
        "buffer_bytes": buffer_bytes_per_gpu(scenario),
    }
    parts["total_bytes"] = sum(parts.values())
    return parts


def derived(scenario: Scenario) -> dict:
    """Everything `moetb describe` reports about a scenario, as plain data."""
    m = scenario.model
    kv_mla, kv_mha = (kv_cache_bytes_per_token(m.model_copy(update={"attention": m.attention.model_copy(
        update={"kind": kind})})) for kind in ("mla", "mha"))
    return {
        "gpus": scenario.cluster.gpus,
        "moe_layers": m.moe_layers,
        "params_total": model_params(m),
        "params_activated_per_token": activated_params_per_token(m),
        "expert_params": expert_params(m),
        "expert_weight_bytes": expert_weight_bytes(m),
        "attention_params_per_layer": attention_params(m),
        "attention_weight_bytes_per_layer": attention_weight_bytes(m),
        "kv_cache_bytes_per_token": kv_cache_bytes_per_token(m),
        "kv_cache_bytes_per_token_mla": kv_mla,
        "kv_cache_bytes_per_token_mha": kv_mha,
        "kv_mla_over_mha": kv_mla / kv_mha,
        "dispatch_bytes_per_token": dispatch_bytes_per_token(scenario),
        "combine_bytes_per_token": combine_bytes_per_token(scenario),
        "slots_per_gpu": slots_per_gpu(scenario),
        "memory_per_gpu": memory_per_gpu(scenario),
        "memory_capacity_bytes": int(scenario.cluster.memory_GB * 1e9),
    }
