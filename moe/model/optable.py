"""Times of the runtime's own operations on this device -> `cluster.op_table` points (the Vidur loop:
profile the implementation's operations, then predict from the table).

Shape letters: T tokens of a call, D hidden, K top_k, E routed experts, R rows given to one expert,
B sequences, L new tokens per sequence, S keys per sequence (the `context` of a point).

Each operation (moe.model.shapes.OPS) is timed the way a runtime calls it, at a grid of token counts:
  attention.prefill  Block.attention, naive MLA form, on T new tokens of sequences that end at S keys:
                     T >= S (T a multiple of S): T / S fresh sequences of S tokens; T < S: the last chunk
                     of T tokens of one sequence whose first S - T tokens are cached (chunked prefill)
  attention.decode   Block.attention on T sequences of one new token after S cached tokens (absorbed form)
  gate               the runtime's gate span: ffn_input (RMSNorm), scores and the weights of given ids
  dispatch           grouping a micro-batch of T tokens by destination rank and packing its wire rows
  expert             one local expert's share of a received shard: R rows for that expert, unpacked,
                     computed, weighted and packed for the combine; the shard holds R rows for each
                     of `cycle_experts` experts, so that weights come from memory as in a run; with
                     the runtime's calls, net of the shard's fixed work (`shard`), which a run pays
                     once per shard however many experts it holds
  shard              that fixed work on a shard of T rows: unpacking them, grouping them by slot, the
                     result's packing (the same call with no row for any local expert)
  shared             Block.shared_forward on T tokens
  dense              the runtime's dense span: ffn_input, dense_forward and the residual add
  combine            summing a micro-batch's returned rows into its T tokens, plus residual and shared
  kv_setup.prefill   a step's KV caches of T prompt tokens (context 0) made ready, per layer: the runtime
                     builds them once per job and rewinds them at each step (emu.microbatch.rewind)
  kv_setup.decode    the same for T sequences of S cached tokens (KV_LAYERS layers together)
dispatch, expert, combine and kv_setup are the runtime's protocol code, which moe never imports: the
runtime passes them in as `RuntimeOps` (emu.calibrate builds them from emu.dispatch); without them the
expert op times Block.expert_forward on FP8 rows and the others are skipped. The model's calls go through
`RuntimeOps.calls` (`moe.model.graphs.ModelCalls`; the runtime's `shard` passes it its expert calls), as the
runtime issues them: eagerly, or as replayed CUDA graphs (the real backend on a GPU). The routing of
dispatch and combine is uniform top-K over E experts placed contiguously on `ranks` ranks.

The timer is passed in (`Timer`: median seconds of a zero-argument call, warm-up included): CUDA events
on a GPU, the host clock on a CPU. Every point is a dict of `cluster.op_table`'s OpPoint keys.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from moe.model.graphs import ModelCalls
from moe.model.model import build_layer, hidden_states
from moe.model.shapes import op_signature
from moe.spec.schema import Model
from moe.spec.sizes import expert_weight_bytes

CYCLE_BYTES = 64 << 20
"""FP8 weight bytes the expert op cycles through (above any CPU's last-level cache; one GPU expert of the
large models is already above its L2)."""
KV_LAYERS = 4
"""Layers whose caches a timed KV setup builds at once (a step builds all of them: the caches of several
layers are live together, as in a run, and the point is their time per layer)."""
CYCLE_ROWS = 4096
"""At most this many rows in a cycled expert call (beyond it the rows, not the weights, take the time)."""
Timer = Callable[[Callable[[], object]], "float | tuple[float, ...]"]
"""Median seconds of fn() after warm-up (the caller's clock and synchronization), or (seconds, host
seconds of the call[, device seconds with the host ahead]): a GPU's timer also reports what issuing the
call cost the host and what its kernels take when they never wait for the host."""
Call = Callable[[], object]


@dataclass(frozen=True)
class RuntimeOps:
    """Factories of the runtime's protocol calls; each returns the zero-argument call to time.

    dispatch(z_TD, slot_TK, w_TK, slots_per_rank, ranks)
    shard(block, expert_of_slot, x_RD, slot_RK, w_RK)            every row has one choice on slot 0
    combine(x_TD, shared_TD | None, slot_TK, w_TK, slots_per_rank, ranks)
    kv_setup(block, model, tokens, context, phase, layers)       `layers` layers' caches of a step
    """

    dispatch: Callable[..., Call] | None = None
    shard: Callable[..., Call] | None = None
    combine: Callable[..., Call] | None = None
    kv_setup: Callable[..., Call] | None = None
    calls: ModelCalls | None = None
    """How attention, gate, shared and dense are issued, and (inside `shard`) the expert calls (None:
    eagerly)."""


@dataclass(frozen=True)
class Grid:
    """Token counts to measure: `tokens` for per-token ops, `rows` for the expert, (T, S) pairs for
    attention and the decode KV setup."""

    tokens: tuple[int, ...]
    rows: tuple[int, ...]
    prefill: tuple[tuple[int, int], ...]
    decode: tuple[tuple[int, int], ...]
    max_setup: int = 1 << 62
    """kv_setup.decode points only up to this many cached tokens (B x S) per layer."""


def prefill_pairs(tokens: tuple[int, ...], contexts: tuple[int, ...], max_tokens: int) -> tuple[tuple[int, int], ...]:
    """(T, S) prefill points: chunks T < S and whole sequences T = n S, T <= max_tokens."""
    return tuple((t, s) for s in contexts for t in tokens if t <= max_tokens and (t < s or t % s == 0))


def decode_pairs(batches: tuple[int, ...], contexts: tuple[int, ...], max_cached: int) -> tuple[tuple[int, int], ...]:
    """(B, S) decode points with at most `max_cached` cached tokens (B x S) in one layer."""
    return tuple((b, s) for s in contexts for b in batches if b * s <= max_cached)


def uniform_routing(tokens: int, experts: int, top_k: int, gen: torch.Generator) -> np.ndarray:
    """ids_TK: top_k distinct experts per token, uniformly at random."""
    return torch.rand(tokens, experts, generator=gen).argsort(dim=1)[:, :top_k].numpy()


def _point(op: str, sig: str, tokens: int, context: int, timed: float | tuple[float, ...], share: int = 1) -> dict:
    """An OpPoint of a timer's answer for a call that did `share` units of the op."""
    s, *more = timed if isinstance(timed, tuple) else (timed,)
    point = {"op": op, "model": sig, "tokens": int(tokens), "context": int(context), "s": float(s) / share}
    for key, value in zip(("host_s", "device_s"), more, strict=False):
        point[key] = float(value) / share
    return point


def _net(timed, base, floor: float = 1e-9):
    """A timer's answer less another's (float or a tuple of seconds), each part at least `floor`
    (noise can make a small difference negative; an OpPoint's seconds are positive)."""
    if isinstance(timed, tuple):
        return tuple(max(floor, a - b) for a, b in zip(timed, base, strict=True))
    return max(floor, timed - base)


def _cache(block, batch: int, capacity: int, length: int):
    cache = block.new_cache(batch, capacity)
    cache.length = length
    return cache


def attention_calls(block, model: Model, grid: Grid, device, seed: int,
                    calls: ModelCalls | None = None) -> Iterator[tuple[str, int, int, Call]]:
    """(op, T, S, call) for the prefill and decode attention points."""
    calls = calls or ModelCalls(device, graphs=False)
    for t, s in grid.prefill:
        b, prior = (t // s, 0) if t >= s else (1, s - t)
        x_TD = hidden_states(model, t, seed, device=device)
        cache = _cache(block, b, s, prior)

        def prefill(x_TD=x_TD, cache=cache, prior=prior, t=t, s=s):
            cache.length = prior  # the call appends its tokens after the cached ones
            return calls.attention(block, x_TD, cache, False, ("prefill", t, s))

        yield "attention.prefill", t, s, prefill
    for b, s in grid.decode:
        x_TD = hidden_states(model, b, seed, device=device)
        cache = _cache(block, b, s + 1, s)  # contents do not change the time: zeros stand for the context

        def decode(x_TD=x_TD, cache=cache, b=b, s=s):
            cache.length = s
            return calls.attention(block, x_TD, cache, None, ("decode", b, s))

        yield "attention.decode", b, s, decode


def token_calls(dense, moe, model: Model, grid: Grid, ops: RuntimeOps, ranks: int, wire: tuple[str, str],
                device, seed: int) -> Iterator[tuple[str, int, int, Call]]:
    """(op, T, 0, call) for the per-token operations."""
    calls = ops.calls or ModelCalls(device, graphs=False)
    gen = torch.Generator().manual_seed(seed)
    slots = -(-model.experts // ranks)
    for t in grid.tokens:
        x_TD = hidden_states(model, t, seed, device=device)
        ids_TK = uniform_routing(t, model.experts, model.top_k, gen)
        ids_t = torch.from_numpy(ids_TK).to(device)
        z_TD = moe.ffn_input(x_TD)
        w_TK = moe.gate.weights(moe.gate.scores(z_TD), ids_t)
        yield "gate", t, 0, lambda x_TD=x_TD, ids=ids_t, t=t: calls.gate(moe, x_TD, ids, ("gate", t))
        if ops.dispatch is not None:
            yield "dispatch", t, 0, ops.dispatch(z_TD, ids_TK, w_TK, slots, ranks)
        shared_TD = moe.shared_forward(z_TD)
        if moe.shared is not None:
            yield "shared", t, 0, lambda z_TD=z_TD, t=t: calls.shared(moe, z_TD, ("shared", t))
        if ops.combine is not None:
            yield "combine", t, 0, ops.combine(x_TD, shared_TD, ids_TK, w_TK, slots, ranks)
        yield "dense", t, 0, lambda x_TD=x_TD, t=t: calls.dense(dense, x_TD, ("dense", t))


def cycle_experts(model: Model) -> int:
    """Experts the expert op cycles through: enough distinct weights (CYCLE_BYTES) that each call reads its
    expert's weights from memory, as a shard that loops over a rank's experts does, at most E."""
    return max(1, min(model.experts, -(-CYCLE_BYTES // expert_weight_bytes(model))))


def expert_calls(moe, model: Model, grid: Grid, ops: RuntimeOps, device,
                 seed: int) -> Iterator[tuple[str, int, int, Call, int, Call | None]]:
    """(op, R, 0, call, n, fixed): a shard of n x R rows, R for each of the block's n experts (the call's
    time / n is one expert's share), and, with the runtime's calls, the same shard with no row for any
    local expert (its fixed work, the `shard` op on n x R rows; None otherwise)."""
    from moe.model.fp8 import quantize_act

    gen = torch.Generator().manual_seed(seed + 1)
    for r in grid.rows:
        n = max(1, min(len(moe.experts.ids), CYCLE_ROWS // r))  # large shards: the rows' work dominates
        x_RD = hidden_states(model, n * r, seed, 1, device=device)
        if ops.shard is not None:
            slot_RK = np.full((n * r, model.top_k), -1, dtype=np.int64)
            slot_RK[:, 0] = np.repeat(np.arange(n), r)
            w_RK = torch.rand(n * r, model.top_k, generator=gen).to(device)
            none_RK = np.full_like(slot_RK, -1)
            yield "expert", r, 0, ops.shard(moe, list(range(n)), x_RD, slot_RK, w_RK), n, \
                ops.shard(moe, list(range(n)), x_RD, none_RK, w_RK)
        else:
            parts = [quantize_act(x_RD[e * r:(e + 1) * r]) for e in range(n)]
            yield "expert", r, 0, lambda parts=parts: [moe.expert_forward(e, x) for e, x in enumerate(parts)], n, None


def measure(model: Model, timer: Timer, grid: Grid, *, device: torch.device | str = "cpu",
            ops: RuntimeOps = RuntimeOps(), ranks: int = 1, wire: tuple[str, str] = ("fp8", "bf16"),
            seed: int = 0, only: tuple[str, ...] | None = None) -> list[dict]:
    """Op-table points of `model` on `device` (module docstring); `only` limits the operations by name
    prefix (e.g. ("attention",)). Weights are built for one dense and one MoE layer holding the experts
    the expert op cycles through."""
    device = torch.device(device)
    two = model.model_copy(update={"layers": 2, "dense_layers": 1})
    dense = build_layer(two, seed, 0, device=device)
    moe = build_layer(two, seed, 1, experts=list(range(cycle_experts(model))), device=device)

    def want(op: str) -> bool:  # an operation, or a prefix of operations ("attention.")
        return only is None or any(op.startswith(o) or o.startswith(op) for o in only)

    points = []
    with torch.inference_mode():
        calls = [attention_calls(dense, model, grid, device, seed, ops.calls) if want("attention.") else (),
                 token_calls(dense, moe, model, grid, ops, ranks, wire, device, seed)
                 if any(want(op) for op in ("gate", "dispatch", "shared", "combine", "dense")) else (),
                 expert_calls(moe, model, grid, ops, device, seed) if want("expert") or want("shard") else ()]
        for gen in calls:
            for op, t, s, call, *more in gen:  # more: (units of the op the call does, its fixed-work call)
                share, fixed = (more + [None])[:2] if more else (1, None)
                if not (want(op) or fixed is not None and want("shard")):  # `shard` has its own signature
                    continue
                base = timer(fixed) if fixed is not None else None
                if base is not None and want("shard"):
                    points.append(_point("shard", op_signature(model, "shard", wire), t * share, 0, base))
                if want(op):  # the expert's share is net of the shard's fixed work
                    timed = timer(call) if base is None else _net(timer(call), base)
                    points.append(_point(op, op_signature(model, op, wire), t, s, timed, share))
                if ops.calls is not None:
                    ops.calls.clear()  # each point's graphs go with it: their memory does not pile up
        if ops.kv_setup is not None:
            setups = [("kv_setup.prefill", t, 0) for t in grid.tokens]
            setups += [("kv_setup.decode", b, s) for b, s in grid.decode if b * s <= grid.max_setup]
            n = min(model.layers, KV_LAYERS)
            for op, t, s in setups:
                if want(op):
                    call = ops.kv_setup(dense, model, t, s, op.split(".")[1], n)
                    points.append(_point(op, op_signature(model, op, wire), t, s, timer(call), n))
    return points
