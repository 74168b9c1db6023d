"""Dispatch and combine of one (layer, micro-batch): the token-shard protocol, over any `Transport`.

Shape letters:
  T tokens of the micro-batch on this rank     K experts per token (top_k)     D hidden
  R ranks                                       S expert slots per rank         N rows this rank sends
  M rows this rank receives (from one source, or from all at once)
  W bytes of a dispatch wire row                V bytes of a combine wire row   X = 1 + S count columns
  C = 2K meta columns (int32): the K local slots of a row on its destination (-1: not there), then the K
  routing weights (float32 bits)

A row is one distinct (token, destination rank) pair, as moe.traffic counts them: a token that chose
several experts on one rank is sent there once, and that rank returns one row, the weighted sum of its
experts' outputs (DeepEP's normal kernels do the same). Steps, as `emu.runtime` drives them:

  sender      plan_dispatch: group kept (token, choice) pairs by destination rank -> SendPlan (frozen)
              pack_rows: quantize once per token (FP8 + scales) and gather the rows of every shard
              post_dispatch: exchange counts (rows, and requests per expert slot, per destination);
              Isend payload and meta shards
              post_result_receives: Irecv every destination's combine results
  receiver    on counts: post_receives (Irecv payload and meta from each source that sends rows)
              on payload+meta of a source (or of all sources): compute_shard (each local expert on its
              rows, weighted sum), then send_results (Isend of the V-byte rows back to the sources)
  sender      on every result: combine_rows: sum the returned rows into the token's output

The rows for this rank itself never touch a message transport (they are computed from `pack_rows`'s
buffer directly), but go through the same wire rounding so the result does not depend on placement; a
grouped transport (`emu.transport`) carries them in its collective like every other part. On a GPU
nothing here reads device data back to the host: the row and per-slot counts come from the host-side
routing plan and the counts exchange.
Tags: tag = key * 4 + kind, key = (step-local layer, micro-batch) index; see `tag`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from emu.transport import CountsExchange, Pending, Transport, host_to
from moe.model.fp8 import pack, unpack, wire_bytes_per_token

KIND_COUNTS, KIND_PAYLOAD, KIND_META, KIND_RESULT = 0, 1, 2, 3
MAX_KEY = 7999
"""Largest (layer, micro-batch) key: tags stay below 32000, under the 32767 every MPI guarantees."""


def tag(key: int, kind: int) -> int:
    if not 0 <= key <= MAX_KEY:
        raise ValueError(f"dispatch key {key} outside [0, {MAX_KEY}] (too many layers x micro-batches)")
    return key * 4 + kind


def key_of_tag(t: int) -> int:
    return t // 4


@dataclass(frozen=True, eq=False)
class SendPlan:
    """Where this rank's rows go: the metadata dispatch produces and combine consumes."""

    key: int
    token_N: torch.Tensor
    """Local token index of each row, rows grouped by destination rank (ascending), tokens ascending."""
    token_dev_N: torch.Tensor
    """The same on the device of the routing weights."""
    counts_R: np.ndarray
    """Rows per destination rank (= moe.traffic pair_tokens[this rank, :] of the micro-batch)."""
    requests_RS: np.ndarray
    """Kept (token, choice) pairs per destination rank and local expert slot there."""
    offsets_R1: np.ndarray
    meta_NC: torch.Tensor
    """int32 [N, 2K] on the device of the routing weights: local slot of each choice on the row's
    destination (-1 elsewhere), then weights."""

    def rows_to(self, dst: int) -> slice:
        return slice(int(self.offsets_R1[dst]), int(self.offsets_R1[dst + 1]))

    @property
    def counts_RX(self) -> np.ndarray:
        """What the counts exchange sends each destination: its rows, then its requests per slot."""
        return np.concatenate([self.counts_R[:, None], self.requests_RS], axis=1)


def plan_dispatch(key: int, slot_TK: np.ndarray, keep_TK: np.ndarray, w_TK: torch.Tensor, slots_per_rank: int,
                  ranks: int) -> SendPlan:
    """Group the kept (token, choice) pairs by destination rank (slot // S) into distinct rows."""
    t, k = slot_TK.shape
    dst_TK = np.where(keep_TK, slot_TK // slots_per_rank, -1)
    hit_TR = np.zeros((t, ranks + 1), dtype=bool)
    hit_TR[np.arange(t)[:, None], dst_TK] = True  # column -1 (the extra one) collects dropped choices
    dst_N, token_N = np.nonzero(hit_TR[:, :ranks].T)  # rank-major, tokens ascending within a rank
    counts_R = np.bincount(dst_N, minlength=ranks).astype(np.int64)
    offsets_R1 = np.concatenate([[0], np.cumsum(counts_R)])
    local_NK = np.where(dst_TK[token_N] == dst_N[:, None], slot_TK[token_N] % slots_per_rank, -1)
    requests_RS = np.bincount(slot_TK[keep_TK], minlength=ranks * slots_per_rank).reshape(ranks, slots_per_rank)
    device = w_TK.device
    token_t = torch.from_numpy(token_N.astype(np.int64))
    token_dev = host_to(token_t, device)
    meta_NC = torch.empty(len(token_N), 2 * k, dtype=torch.int32, device=device)
    meta_NC[:, :k] = host_to(torch.from_numpy(local_NK.astype(np.int32)), device)
    # the routing weights stay where the gate computed them (no host synchronization on a GPU)
    meta_NC[:, k:] = w_TK.detach().float().index_select(0, token_dev).view(torch.int32)
    return SendPlan(key=key, token_N=token_t, token_dev_N=token_dev, counts_R=counts_R,
                    requests_RS=requests_RS.astype(np.int64), offsets_R1=offsets_R1, meta_NC=meta_NC)


def pack_rows(x_TD: torch.Tensor, plan: SendPlan, dispatch_dtype: str, out: torch.Tensor | None = None) -> torch.Tensor:
    """Wire rows [N, W] of every row of the plan: each token quantized once, then gathered per row (into
    `out`, a [N, W] uint8 buffer, when given)."""
    wire_TW = pack(x_TD, dispatch_dtype)
    rows = plan.token_dev_N if plan.token_dev_N.device == wire_TW.device else plan.token_N.to(wire_TW.device)
    if out is None:
        return wire_TW.index_select(0, rows)
    return torch.index_select(wire_TW, 0, rows, out=out)


@dataclass
class Exchange:
    """One (layer, micro-batch) in flight on this rank, as sender (its plan) and as receiver (the shards
    of every source). The runtime feeds completed transport operations to it."""

    key: int
    plan: SendPlan
    hidden: int
    dispatch_dtype: str
    combine_dtype: str
    counts: CountsExchange | None = None
    sends: list[Pending] = field(default_factory=list)
    result_bufs: dict[int, torch.Tensor] = field(default_factory=dict)
    """Destination rank -> its [rows, V] combine rows (the local one filled without the transport)."""
    results_missing: set[int] = field(default_factory=set)
    shard_bufs: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    """Source rank -> (wire [M, W], meta [M, C]) received (or, for this rank, sliced locally)."""
    shard_parts: dict[int, int] = field(default_factory=dict)
    """Source rank -> parts (payload, meta) still to arrive."""
    receives_posted: bool = False
    send_buf: torch.Tensor | None = None
    """The pooled buffer of the payload rows, handed back once every send completed (runtime)."""

    @property
    def row_bytes(self) -> int:
        return wire_bytes_per_token(self.hidden, self.dispatch_dtype)

    @property
    def result_row_bytes(self) -> int:
        return wire_bytes_per_token(self.hidden, self.combine_dtype)

    @property
    def combined(self) -> bool:
        return not self.results_missing

    def expected_sources(self) -> list[int]:
        """Sources that send rows here (known once the counts arrived)."""
        assert self.counts is not None and self.counts.complete
        return [int(s) for s in np.flatnonzero(self.counts.recv_RX[:, 0])]


def post_dispatch(tr: Transport, ex: Exchange, wire_NW: torch.Tensor) -> list[Pending]:
    """Sender side: start the counts exchange, Isend payload and meta to every destination. Returns every
    posted operation (the runtime tracks them). `post_result_receives` follows it."""
    plan, me = ex.plan, tr.rank
    ex.counts = tr.exchange_counts(plan.counts_RX, tag(ex.key, KIND_COUNTS))
    # host synchronization (MPI from a GPU): wire_NW and meta must be complete host buffers before MPI
    # reads them; on the transport's device already, they are handed over as they are
    wire_NW, meta_NC = tr.to_wire(wire_NW), tr.to_wire(plan.meta_NC)
    rows_R = plan.counts_R
    ex.results_missing.update(int(d) for d in np.flatnonzero(rows_R))
    if rows_R[me]:  # local rows: no message, same wire format
        a, b = int(plan.offsets_R1[me]), int(plan.offsets_R1[me + 1])
        ex.shard_bufs[me] = (wire_NW[a:b], meta_NC[a:b])
        ex.shard_parts[me] = 0
    meta_B = meta_NC.view(torch.uint8)  # [N, 8K] bytes
    # hand-off to the transport: each destination's rows are a contiguous byte range of wire_NW / meta_NC,
    # untouched until its send is done
    ex.sends = tr.isend_split([wire_NW.reshape(-1), meta_B.reshape(-1)],
                              [rows_R * wire_NW.shape[1], rows_R * meta_B.shape[1]],
                              [tag(ex.key, KIND_PAYLOAD), tag(ex.key, KIND_META)], ("sent", ex.key))
    return list(ex.counts.pending) + ex.sends


def post_result_receives(tr: Transport, ex: Exchange) -> list[Pending]:
    """Sender side, after post_dispatch (off the shards' critical path): Irecv every destination's
    result rows, so they land in place when the experts send them."""
    v = ex.result_row_bytes
    (bufs,), posted = tr.irecv_split([ex.plan.counts_R * v], [tag(ex.key, KIND_RESULT)], ("result", ex.key))
    for dst, flat in bufs.items():  # this rank's own rows too where the transport carries them
        ex.result_bufs[dst] = flat.view(-1, v)
    return posted


def post_receives(tr: Transport, ex: Exchange, k: int) -> list[Pending]:
    """Receiver side, once the counts are in: Irecv payload and meta from every source with rows."""
    assert ex.counts is not None and ex.counts.complete
    rows_R = ex.counts.recv_RX[:, 0]
    (wires, metas), posted = tr.irecv_split([rows_R * ex.row_bytes, rows_R * (2 * k * 4)],
                                            [tag(ex.key, KIND_PAYLOAD), tag(ex.key, KIND_META)], ("shard", ex.key))
    for src, wire in wires.items():  # this rank's own rows too where the transport carries them
        m = int(rows_R[src])
        ex.shard_bufs[src] = (wire.view(m, ex.row_bytes), metas[src].view(torch.int32).view(m, 2 * k))
        ex.shard_parts[src] = 2
    ex.receives_posted = True
    return posted


def cat_rows(parts: list[torch.Tensor]) -> torch.Tensor:
    """Row blocks [M_i, ...] as one [sum M_i, ...] tensor: a view when they lie back to back in one buffer
    (a grouped transport's receive buffer, in rank order), else a copy."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    adjacent = all(p.is_contiguous() and p.dtype == first.dtype and p.shape[1:] == first.shape[1:]
                   and p.untyped_storage().data_ptr() == first.untyped_storage().data_ptr() for p in parts)
    adjacent = adjacent and all(a.data_ptr() + a.nbytes == b.data_ptr() for a, b in zip(parts, parts[1:], strict=False))
    if not adjacent:
        return torch.cat(parts)
    rows = sum(p.shape[0] for p in parts)
    return first.as_strided((rows, *first.shape[1:]), first.stride())


def compute_shard(block, expert_of_slot: list[int], wire_MW: torch.Tensor, meta_MC: torch.Tensor, hidden: int,
                  dispatch_dtype: str, combine_dtype: str, device: torch.device,
                  progress: Callable[[], object] | None = None, slot_rows_S: np.ndarray | None = None) -> torch.Tensor:
    """Receiver side: each local expert on the rows that chose it, summed with the routing weights in
    float32, as combine wire rows [M, V]. `block.expert_forward(expert, x)` takes FP8 payload + scales.
    `progress` is called between experts, so transfers in flight keep moving during a long shard.
    `slot_rows_S`: (row, choice) pairs per local slot, from the counts exchange; given, the rows are
    grouped by one stable sort on the device with no host synchronization, else by a nonzero per slot."""
    k = meta_MC.shape[1] // 2
    # the received host rows go to the compute device (a copy; the receive buffer can be reused after)
    x = unpack(wire_MW.to(device), hidden, dispatch_dtype)
    slot_MK = meta_MC[:, :k].to(device)
    w_MK = meta_MC[:, k:].contiguous().view(torch.float32).to(device)
    out_MD = torch.zeros(wire_MW.shape[0], hidden, dtype=torch.float32, device=device)
    if slot_rows_S is not None:  # pairs ordered by slot, each slot's pairs in (row, choice) order
        flat = slot_MK.reshape(-1)
        order = torch.argsort(torch.where(flat >= 0, flat, len(expert_of_slot)), stable=True)
        starts = np.concatenate([[0], np.cumsum(slot_rows_S)])
    for s, expert in enumerate(expert_of_slot):
        if slot_rows_S is not None:
            if slot_rows_S[s] == 0:
                continue
            pairs = order[int(starts[s]):int(starts[s + 1])]
            rows, cols = pairs // k, pairs % k
        else:
            rows, cols = torch.nonzero(slot_MK == s, as_tuple=True)  # host sync: sizes decide the GEMM
            if len(rows) == 0:
                continue
        y_RD = block.expert_forward(expert, x.index_select(rows) if hasattr(x, "q_TD") else x.index_select(0, rows))
        out_MD.index_add_(0, rows, y_RD.float() * w_MK[rows, cols, None])
        if progress is not None:
            progress()
    return pack(out_MD, combine_dtype)


def send_results(tr: Transport, ex: Exchange, rows_R: np.ndarray, result_MV: torch.Tensor) -> list[Pending]:
    """Receiver side: return computed rows to their sources; result_MV holds rows_R[r] rows of every source
    r, sources ascending. This rank's own rows stay local unless the transport carries them."""
    me, v = tr.rank, ex.result_row_bytes
    if rows_R[me] and me not in ex.result_bufs:
        a = int(rows_R[:me].sum())
        ex.result_bufs[me] = result_MV[a:a + int(rows_R[me])]
        ex.results_missing.discard(me)
    # hand-off to the transport: complete rows (a synchronous host copy from a GPU for MPI)
    buf = tr.to_wire(result_MV)
    return tr.isend_split([buf.reshape(-1)], [rows_R * v], [tag(ex.key, KIND_RESULT)], ("sent", ex.key))


def combine_rows(ex: Exchange, tokens: int, device: torch.device) -> torch.Tensor:
    """Sender side, every result in: float32 [T, D] sum of the returned rows into their tokens."""
    plan = ex.plan
    out_TD = torch.zeros(tokens, ex.hidden, dtype=torch.float32, device=device)
    for dst, buf in sorted(ex.result_bufs.items()):  # fixed order: the sum does not depend on arrival
        y = unpack(buf.to(device), ex.hidden, ex.combine_dtype)  # host receive buffer -> compute device
        y_ND = y.dequantize(torch.float32) if hasattr(y, "q_TD") else y.float()
        tokens = plan.token_dev_N if plan.token_dev_N.device == torch.device(device) else plan.token_N.to(device)
        out_TD.index_add_(0, tokens[plan.rows_to(dst)], y_ND)
    return out_TD
