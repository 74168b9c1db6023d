"""The GEMMs one layer runs, as (M, K, N) shapes: C[M, N] = A[M, K] @ B[K, N]. No torch import.

For the simulator's cost model and for calibration, which measures exactly these shapes. The model in
this package runs exactly these GEMMs (tests/test_model_shapes.py records the matmuls of a forward pass
and compares). Names follow the weights in `moe.model.attention`, `moe.model.gate` and `moe.model.ffn`.

Shape letters: T tokens entering the layer on one GPU, B sequences, L new tokens per sequence (T = B L),
S keys per sequence (cached + new), H heads, D hidden, C kv_latent, Q q_latent, dn head_dim (nope part),
dr rope_dim, dv v_head_dim, F expert_hidden, R rows an expert receives.

Attention projections and FFNs are FP8 GEMMs when model.dtype is fp8; the gate, the absorbed-form
per-head products and the core attention (scores and values, `batch` independent products) run in BF16.
"""

from __future__ import annotations

from dataclasses import dataclass

from moe.spec.schema import Model


@dataclass(frozen=True)
class Gemm:
    """`batch` independent products C[M, N] = A[M, K] @ B[K, N] in `dtype` ("fp8" or "bf16")."""

    name: str
    m: int
    k: int
    n: int
    dtype: str
    batch: int = 1

    @property
    def flops(self) -> int:
        """2 M K N per product (one multiply and one add)."""
        return 2 * self.batch * self.m * self.k * self.n


def attention_gemms(model: Model, tokens: int, *, sequences: int = 1, keys: int | None = None,
                    absorbed: bool = False, tp: int = 1) -> list[Gemm]:
    """One attention layer on `tokens` = B x L new tokens of `sequences` = B sequences, each attending to
    `keys` = S keys (default L: a fresh prefill). `absorbed`: MLA's decode form (wkv_b folded into the
    query and output, attention over the latent as one shared KV head). `tp`: heads split over a
    tensor-parallel group; the shapes are one GPU's share."""
    a, d, t = model.attention, model.hidden, tokens
    if t % sequences:
        raise ValueError(f"attention_gemms: tokens={t} is not a multiple of sequences={sequences}")
    h, w, lq = a.heads // tp, model.dtype, t // sequences
    s = lq if keys is None else keys
    if a.kind == "mha":
        return [Gemm("wq", t, d, h * a.head_dim, w), Gemm("wk", t, d, h * a.head_dim, w),
                Gemm("wv", t, d, h * a.v_head_dim, w),
                Gemm("attn.scores", lq, a.head_dim, s, "bf16", sequences * h),
                Gemm("attn.values", lq, s, a.v_head_dim, "bf16", sequences * h),
                Gemm("wo", t, h * a.v_head_dim, d, w)]
    qk, c = a.head_dim + a.rope_dim, a.kv_latent
    out = [Gemm("wq_a", t, d, a.q_latent, w), Gemm("wq_b", t, a.q_latent, h * qk, w)] if a.q_latent \
        else [Gemm("wq", t, d, h * qk, w)]
    out.append(Gemm("wkv_a", t, d, c + a.rope_dim, w))
    if absorbed:
        out += [Gemm("absorb.q", t, a.head_dim, c, "bf16", h),
                Gemm("attn.scores", lq * h, c + a.rope_dim, s, "bf16", sequences),
                Gemm("attn.values", lq * h, s, c, "bf16", sequences),
                Gemm("absorb.o", t, c, a.v_head_dim, "bf16", h)]
    else:
        out += [Gemm("wkv_b", sequences * s, c, h * (a.head_dim + a.v_head_dim), w),
                Gemm("attn.scores", lq, qk, s, "bf16", sequences * h),
                Gemm("attn.values", lq, s, a.v_head_dim, "bf16", sequences * h)]
    out.append(Gemm("wo", t, h * a.v_head_dim, d, w))
    return out


def swiglu_gemms(name: str, model: Model, rows: int, inner: int) -> list[Gemm]:
    """A SwiGLU MLP D -> inner -> D on `rows` rows: w1 and w3 as one GEMM of 2 x inner outputs, then w2."""
    return [Gemm(f"{name}.w13", rows, model.hidden, 2 * inner, model.dtype),
            Gemm(f"{name}.w2", rows, inner, model.hidden, model.dtype)]


def expert_gemms(model: Model, rows: int) -> list[Gemm]:
    """One routed expert on the `rows` = R tokens dispatched to it."""
    return swiglu_gemms("expert", model, rows, model.expert_hidden)


def gate_gemm(model: Model, tokens: int) -> Gemm:
    """Router logits, float32 on the GPU's BF16 path (E outputs per token)."""
    return Gemm("gate", tokens, model.hidden, model.experts, "bf16")


def ffn_gemms(model: Model, tokens: int, *, moe: bool) -> list[Gemm]:
    """The FFN part of a layer that does not depend on routing: the dense FFN of the first layers, or the
    gate and the shared experts of a MoE layer. Routed experts: `expert_gemms` per expert."""
    if not moe:
        return swiglu_gemms("dense", model, tokens, model.dense_hidden)
    out = [gate_gemm(model, tokens)]
    for i in range(model.shared_experts):
        out += swiglu_gemms(f"shared{i}", model, tokens, model.expert_hidden)
    return out


def layer_gemms(model: Model, tokens: int, *, moe: bool, sequences: int = 1, keys: int | None = None,
                absorbed: bool = False, expert_rows: list[int] | tuple[int, ...] = ()) -> list[Gemm]:
    """Everything one layer multiplies on one GPU: attention, then the dense FFN or gate + shared
    experts, then one `expert_gemms` per entry of `expert_rows` (rows each local expert receives)."""
    out = attention_gemms(model, tokens, sequences=sequences, keys=keys, absorbed=absorbed)
    out += ffn_gemms(model, tokens, moe=moe)
    for rows in expert_rows:
        if rows:
            out += expert_gemms(model, rows)
    return out


def total_flops(gemms: list[Gemm]) -> int:
    return sum(g.flops for g in gemms)


# -------------------------------------------------------------------------------- operation signatures
OPS = ("attention.prefill", "attention.decode", "gate", "dispatch", "expert", "shard", "shared", "dense", "combine",
       "kv_setup.prefill", "kv_setup.decode")
"""The runtime's operations that moe.model.optable times and the simulator looks up (cluster.op_table)."""
EXCHANGE = "exchange"
"""Also in the table, timed with a transport (real/calibrate.py): the host's bookkeeping of one (layer,
micro-batch) exchange (counts round trip, posting the row and result collectives)."""


def op_signature(model: Model, op: str, wire: tuple[str, str] = ("fp8", "bf16")) -> str:
    """A short string of the model dims that decide operation `op`'s time, so that a measurement is used
    only for models that run the same kernels on the same shapes (`paper` with 8 experts shares its
    attention and expert entries with `paper`, not its gate). `wire`: (dispatch_dtype, combine_dtype)."""
    a, d, w = model.attention, model.hidden, model.dtype
    if op.startswith("attention.") or op.startswith("kv_setup."):
        q = f"q{a.q_latent}" if a.kind == "mla" else ""
        c = f"c{a.kv_latent}r{a.rope_dim}" if a.kind == "mla" else ""
        return f"{a.kind}-d{d}-h{a.heads}x{a.head_dim}v{a.v_head_dim}{c}{q}-{w}-kv{a.kv_dtype}"
    if op == "gate":
        return f"d{d}-e{model.experts}k{model.top_k}-{model.score}"
    if op == "dispatch":
        return f"d{d}k{model.top_k}-{wire[0]}"
    if op == "expert":
        return f"d{d}f{model.expert_hidden}-{w}-{wire[0]}-{wire[1]}"
    if op == "shard":
        return f"d{d}k{model.top_k}-{wire[0]}-{wire[1]}"
    if op == "shared":
        return f"d{d}f{model.expert_hidden}x{model.shared_experts}-{w}"
    if op == "dense":
        return f"d{d}f{model.dense_hidden}-{w}"
    if op == "combine":
        return f"d{d}k{model.top_k}-{wire[1]}-s{min(model.shared_experts, 1)}"
    if op == EXCHANGE:
        return f"d{d}k{model.top_k}-{wire[0]}-{wire[1]}"
    raise ValueError(f"unknown operation {op!r}; expected one of {OPS + (EXCHANGE,)}")
