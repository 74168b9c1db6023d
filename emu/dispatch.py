"""Dispatch and combine of one (layer, micro-batch): the token-shard protocol, over any `Transport`.

Shape letters:
  T tokens of the micro-batch on this rank     K experts per token (top_k)     D hidden
  R ranks                                       S expert slots per rank         N rows this rank sends
  M rows this rank receives (from one source, or from all at once)
  W bytes of a dispatch wire row's activations  V bytes of a combine wire row   X = 1 + S count columns
  C = 2K meta columns (int32): the token's K expert slots (global slot ids; -1 where the choice was
  dropped), then its K routing weights (float32 bits); B = 4C + W bytes of a dispatch row

A row is one distinct (token, destination rank) pair, as moe.traffic counts them: a token that chose
several experts on one rank is sent there once, and that rank returns one row, the weighted sum of its
experts' outputs (DeepEP's normal kernels do the same). A dispatch row carries its token's meta columns
before its activations (written in the quantization's copy), so one message or collective per
destination moves a shard; the receiver keeps the choices whose slot is one of its own. Steps, as
`emu.runtime` drives them:

  sender      plan_dispatch: group kept (token, choice) pairs by destination rank -> SendPlan (frozen)
              pack_rows: quantize once per token (FP8 + scales, meta in front) and gather every row
              post_dispatch: send each destination its rows, and start receiving the shards sent here:
                message transports (MPI) send one message per peer, empty ones too, and receive each
                by a matched probe, which gives its size (no counts round trip before the data moves);
                grouped transports (NCCL, gloo collectives) exchange counts (rows, and requests per expert
                slot) first, since a collective's receive sizes must be known, then post_receives;
                device-split ones (NVSHMEM) send the rows at once; post_receives reads the counts when
                the runtime needs the shards (sent beside the rows, or derived from them: counts_of_rows)
              post_result_receives: receive every destination's combine results (sizes known: its rows)
  receiver    shard_in: a source's shard is in (message transports: its size gives the rows)
              slot_rows: pairs per local slot (from the counts, or from the rows' meta columns)
              compute_shard (each local expert on its rows, weighted sum), then send_results (the V-byte
              rows back to the sources)
  sender      on every result: combine_rows: sum the returned rows into the token's output

The rows for this rank itself never touch a message transport (they are computed from `pack_rows`'s
buffer directly), but go through the same wire rounding so the result does not depend on placement; a
grouped transport carries them in its collective like every other part. On a GPU nothing here reads
device data back to the host: the row and per-slot counts come from the host-side routing plan and the
counts exchange (grouped transports) or from the received host rows (MPI); a device-split transport
that derives them (counts_of_rows) copies them back once, when the rows are in.
Tags: tag = key * 4 + kind, key = (step-local layer, micro-batch) index; see `tag`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from emu.transport import Pending, Transport, host_to
from moe.model.fp8 import pack, unpack, wire_bytes_per_token
from moe.model.graphs import ModelCalls
from moe.spec.sizes import ROUTING_META_BYTES_PER_CHOICE, dispatch_row_bytes

KIND_COUNTS, KIND_PAYLOAD, KIND_RESULT = 0, 1, 3
EAGER_CALLS = ModelCalls("cpu", graphs=False)
"""Expert calls issued eagerly (`compute_shard` without the runtime's calls)."""
MAX_KEY = 7999
"""Largest (layer, micro-batch) key: tags stay below 32000, under the 32767 every MPI guarantees."""


def tag(key: int, kind: int) -> int:
    if not 0 <= key <= MAX_KEY:
        raise ValueError(f"dispatch key {key} outside [0, {MAX_KEY}] (too many layers x micro-batches)")
    return key * 4 + kind


def key_of_tag(t: int) -> int:
    return t // 4


def row_bytes(hidden: int, dispatch_dtype: str, top_k: int) -> int:
    """B: bytes of one dispatch row, meta columns (2K int32) then the activations' wire bytes (the
    simulator's figure, `moe.spec.sizes.dispatch_row_bytes`)."""
    return dispatch_row_bytes(hidden, dispatch_dtype, top_k)


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
    meta_TC: torch.Tensor
    """int32 [T, 2K] on the device of the routing weights: each choice's global slot (-1: dropped), then
    the weights. Every row of a token carries them; its destination keeps the slots that are its own."""

    def rows_to(self, dst: int) -> slice:
        return slice(int(self.offsets_R1[dst]), int(self.offsets_R1[dst + 1]))

    @property
    def top_k(self) -> int:
        return self.meta_TC.shape[1] // 2

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
    requests_RS = np.bincount(slot_TK[keep_TK], minlength=ranks * slots_per_rank).reshape(ranks, slots_per_rank)
    device = w_TK.device
    token_t = torch.from_numpy(token_N.astype(np.int64))
    meta_TC = torch.empty(t, 2 * k, dtype=torch.int32, device=device)
    meta_TC[:, :k] = host_to(torch.from_numpy(np.where(keep_TK, slot_TK, -1).astype(np.int32)), device)
    # the routing weights stay where the gate computed them (no host synchronization on a GPU)
    meta_TC[:, k:] = w_TK.detach().float().view(torch.int32)
    return SendPlan(key=key, token_N=token_t, token_dev_N=host_to(token_t, device), counts_R=counts_R,
                    requests_RS=requests_RS.astype(np.int64), offsets_R1=offsets_R1, meta_TC=meta_TC)


def pack_rows(x_TD: torch.Tensor, plan: SendPlan, dispatch_dtype: str, out: torch.Tensor | None = None) -> torch.Tensor:
    """Dispatch rows [N, B] of every row of the plan: each token quantized once with its meta columns in
    front, then gathered per row (into `out`, a [N, B] uint8 buffer, when given)."""
    rows_TB = pack(x_TD, dispatch_dtype, head=plan.meta_TC.view(torch.uint8))
    rows = plan.token_dev_N if plan.token_dev_N.device == rows_TB.device else plan.token_N.to(rows_TB.device)
    if out is None:
        return rows_TB.index_select(0, rows)
    return torch.index_select(rows_TB, 0, rows, out=out)


def local_slots(slot_MK: torch.Tensor | np.ndarray, first_slot: int, slots: int):
    """[M, K] local slot of each choice (global slot ids, -1 dropped) on the rank whose `slots` slots start
    at `first_slot` (-1: not there)."""
    local = slot_MK - first_slot
    if isinstance(local, np.ndarray):
        return np.where((local >= 0) & (local < slots), local, -1)
    return torch.where((local >= 0) & (local < slots), local, -1)


@dataclass
class Exchange:
    """One (layer, micro-batch) in flight on this rank, as sender (its plan) and as receiver (the shards
    of every source). The runtime feeds completed transport operations to it."""

    key: int
    plan: SendPlan
    hidden: int
    dispatch_dtype: str
    combine_dtype: str
    rows_from_R: np.ndarray | None = None
    """Grouped transports: rows each source sends here (from the counts)."""
    slot_pairs_S: np.ndarray | None = None
    """Grouped transports: (row, choice) pairs per local slot over every source (from the counts)."""
    sends: list[Pending] = field(default_factory=list)
    result_bufs: dict[int, torch.Tensor] = field(default_factory=dict)
    """Destination rank -> its [rows, V] combine rows (the local one filled without the transport)."""
    results_missing: set[int] = field(default_factory=set)
    shard_bufs: dict[int, torch.Tensor] = field(default_factory=dict)
    """Source rank -> its dispatch rows [M, B] received (or, for this rank, sliced locally)."""
    shards_missing: set[int] = field(default_factory=set)
    """Sources whose shard has not arrived yet (known once receives_posted)."""
    receives_posted: bool = False
    send_buf: torch.Tensor | None = None
    """The pooled buffer of the payload rows, handed back once every send completed (runtime)."""
    row_bytes: int = field(init=False)
    """B, bytes of a dispatch row."""
    result_row_bytes: int = field(init=False)
    """V, bytes of a combine row."""

    def __post_init__(self):
        self.row_bytes = row_bytes(self.hidden, self.dispatch_dtype, self.plan.top_k)
        self.result_row_bytes = wire_bytes_per_token(self.hidden, self.combine_dtype)

    @property
    def combined(self) -> bool:
        return not self.results_missing


def post_dispatch(tr: Transport, ex: Exchange, rows_NB: torch.Tensor) -> list[Pending]:
    """Sender side: send every destination its rows; on a message transport also start receiving every
    peer's shard (by probe), on a grouped one exchange the counts (then `post_receives`). Returns every
    posted operation (the runtime tracks them). `post_result_receives` follows it."""
    plan, me, key = ex.plan, tr.rank, ex.key
    # host synchronization (MPI from a GPU): the rows must be a complete host buffer before MPI reads
    # them; on the transport's device already, they are handed over as they are
    rows_NB = tr.to_wire(rows_NB)
    rows_R = plan.counts_R
    t = tag(key, KIND_PAYLOAD)
    if tr.device_splits:  # the rows move now; the receiver reads the counts when it needs them
        tr.post_counts(plan.counts_RX, tag(key, KIND_COUNTS))
        posted = ex.sends = tr.isend_split([rows_NB.reshape(-1)], [rows_R * rows_NB.shape[1]], [t], ("sent", key))
    elif tr.grouped:
        counts_RX = tr.exchange_counts(plan.counts_RX, tag(key, KIND_COUNTS))
        ex.rows_from_R, ex.slot_pairs_S = counts_RX[:, 0], counts_RX[:, 1:].sum(axis=0)
        posted = ex.sends = tr.isend_split([rows_NB.reshape(-1)], [rows_R * rows_NB.shape[1]], [t], ("sent", key))
    else:
        # hand-off to the transport: each destination's rows are a contiguous byte range of rows_NB,
        # untouched until its send is done; every peer gets a message (an empty one says "no rows").
        # The data moves first, the bookkeeping after; all of it is on the exchange's critical path
        # (benchmarks/emu_exchange.py), so it is kept to plain ints where NumPy calls cost more.
        ex.sends = tr.isend_split([rows_NB.reshape(-1)], [rows_R * rows_NB.shape[1]], [t], ("sent", key), empty=True)
        peers = tr.peers()
        posted = ex.sends + tr.irecv_probed(peers, t, ("shard", key))
        ex.shards_missing.update(peers)
        ex.receives_posted = True
        a, b = plan.offsets_R1[me:me + 2].tolist()
        if a < b:  # local rows: no message, same wire format
            ex.shard_bufs[me] = rows_NB[a:b]
    ex.results_missing.update(r for r, n in enumerate(rows_R.tolist()) if n)
    return posted


def post_result_receives(tr: Transport, ex: Exchange) -> list[Pending]:
    """Sender side, after post_dispatch (off the shards' critical path): receive every destination's
    result rows, so they land in place when the experts send them."""
    v = ex.result_row_bytes
    (bufs,), posted = tr.irecv_split([ex.plan.counts_R * v], [tag(ex.key, KIND_RESULT)], ("result", ex.key))
    for dst, got in bufs.items():  # this rank's own rows too where the transport carries them
        ex.result_bufs[dst] = got if got.dim() == 2 else got.view(-1, v)  # 2-D: padded rows
    return posted


def counts_of_rows(rows_MB: torch.Tensor, rows_R: torch.Tensor, first_slot: int, slots: int,
                   top_k: int) -> torch.Tensor:
    """[R + S] int64 on the rows' device: what a receiver needs of the counts exchange (rows from each source,
    then (row, choice) pairs per local slot over all sources), read from the rows that landed instead.
    rows_MB: a receive buffer whose first rows_R.sum() rows are every source's rows (the rest unused);
    rows_R: [R] int64 on the same device. Seven device operations and no host synchronization (no boolean
    indexing, no bincount): a kernel launch costs the host 8-37 us on the H100 nodes
    (`benchmarks/real_host_time.py ops`), and this runs once per (layer, micro-batch)."""
    c = 4 * top_k
    meta_MB = rows_MB[:, :c]
    if rows_MB.stride(0) % 4:
        # an int32 view needs rows of whole int32s: a fresh buffer (.contiguous() keeps a one-row slice's stride)
        meta_MB = torch.empty(meta_MB.shape, dtype=torch.uint8, device=rows_MB.device).copy_(meta_MB)
    slot_MK = meta_MB.view(torch.int32)
    valid_M1 = torch.arange(rows_MB.shape[0], device=rows_MB.device)[:, None] < rows_R.sum()
    # local slot s counts at s + 0.5, inside bin s of [0, S); dropped choices, other ranks' slots and the unused
    # rows (-1) fall outside the range, which histc ignores
    at_MK = torch.where(valid_M1, slot_MK - (first_slot - 0.5), -1.0)
    pairs_S = torch.histc(at_MK, bins=slots, min=0, max=slots)
    return torch.cat([rows_R.long(), pairs_S.long()])


def post_receives(tr: Transport, ex: Exchange) -> list[Pending]:
    """Receiver side of a grouped transport, after post_dispatch (the counts are in; a device-split transport
    reads them here, its rows already on their way, or derives them from the rows: `counts_of_rows`):
    receive every source's rows."""
    assert tr.grouped
    if ex.rows_from_R is None:
        s = ex.plan.requests_RS.shape[1]
        got = tr.take_counts(tag(ex.key, KIND_COUNTS), lambda rows_MB, rows_R: counts_of_rows(
            rows_MB, rows_R, tr.rank * s, s, ex.plan.top_k))
        ex.rows_from_R, ex.slot_pairs_S = got[:tr.size], got[tr.size:]
    b = ex.row_bytes
    rows_R = ex.rows_from_R
    (bufs,), posted = tr.irecv_split([rows_R * b], [tag(ex.key, KIND_PAYLOAD)], ("shard", ex.key))
    for src, got in bufs.items():  # this rank's own rows too: the collective carries them
        ex.shard_bufs[src] = got if got.dim() == 2 else got.view(int(rows_R[src]), b)  # 2-D: padded rows
    ex.shards_missing.update(bufs)
    ex.receives_posted = True
    return posted


def shard_in(tr: Transport, ex: Exchange, src: int, buf: torch.Tensor) -> bool:
    """Receiver side: src's shard is in. On a message transport `buf` is the whole message, whose size
    gives the rows; an empty one is handed back. Returns whether src sent rows to compute."""
    ex.shards_missing.discard(src)
    if tr.grouped:
        return True
    b = ex.row_bytes
    m = buf.numel() // b
    if m * b != buf.numel():
        raise RuntimeError(f"rank {tr.rank}: a shard of {buf.numel()} bytes from rank {src} is not whole "
                           f"{b}-byte rows (exchange {ex.key})")
    if m == 0:
        tr.give_buffer(buf)
        return False
    ex.shard_bufs[src] = buf.view(m, b)
    return True


def slot_rows(tr: Transport, ex: Exchange, sources: list[int], slots: int) -> np.ndarray:
    """[S] (row, choice) pairs per local slot in the shards of `sources`, for compute_shard: on a grouped
    transport from the counts exchange (no host synchronization on a GPU), on a message transport from
    the rows' meta columns (host buffers) or, for this rank's own rows, from the plan."""
    if tr.grouped:  # sources: every source that sent rows (a grouped exchange is computed at once)
        return ex.slot_pairs_S
    k, out = ex.plan.top_k, np.zeros(slots, dtype=np.int64)
    for src in sources:
        if src == tr.rank:
            out += ex.plan.requests_RS[src]
            continue
        slot_MK = np.ascontiguousarray(ex.shard_bufs[src].numpy()[:, :4 * k]).view(np.int32)
        local = local_slots(slot_MK, tr.rank * slots, slots)
        out += np.bincount(local[local >= 0], minlength=slots)
    return out


def cat_rows(parts: list[torch.Tensor]) -> torch.Tensor:
    """Row blocks [M_i, ...] as one [sum M_i, ...] tensor: a view when they lie back to back in one buffer
    with one row stride (a grouped transport's receive buffer, in rank order; its rows may be padded, as in
    the nvshmem transport's symmetric buffers), else a copy."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    adjacent = all(p.dtype == first.dtype and p.shape[1:] == first.shape[1:] and p.stride() == first.stride()
                   and p.untyped_storage().data_ptr() == first.untyped_storage().data_ptr() for p in parts)
    adjacent = adjacent and first[0].is_contiguous()  # each row's bytes whole
    adjacent = adjacent and all(a.data_ptr() + a.shape[0] * a.stride(0) * a.element_size() == b.data_ptr()
                                for a, b in zip(parts, parts[1:], strict=False))
    if not adjacent:
        return torch.cat(parts)
    rows = sum(p.shape[0] for p in parts)
    return first.as_strided((rows, *first.shape[1:]), first.stride())


def compute_shard(block, expert_of_slot: list[int], first_slot: int, rows_MB: torch.Tensor, hidden: int,
                  dispatch_dtype: str, combine_dtype: str, device: torch.device,
                  progress: Callable[[], object] | None = None, slot_rows_S: np.ndarray | None = None,
                  calls: ModelCalls | None = None) -> torch.Tensor:
    """Receiver side: each local expert (local slot s holds expert_of_slot[s]; global slot first_slot + s)
    on the rows that chose it, summed with the routing weights in float32, as combine wire rows [M, V].
    `block.expert_forward(expert, x)` takes FP8 payload + scales. `progress` is called between experts,
    so transfers in flight keep moving during a long shard. `slot_rows_S`: (row, choice) pairs per local
    slot (from the counts); given, the rows are grouped by one stable sort on the device with no host
    synchronization, else by a nonzero per slot. `calls`: how each expert call is issued
    (`moe.model.graphs.ModelCalls.expert`; None: eagerly)."""
    calls = calls or EAGER_CALLS
    # the received host rows go to the compute device; what is needed is copied out of them (unpack, the
    # meta's own buffer), so the receive buffer can be reused after
    rows_MB = rows_MB.to(device)
    c = rows_MB.shape[1] - wire_bytes_per_token(hidden, dispatch_dtype)
    k = c // ROUTING_META_BYTES_PER_CHOICE
    x = unpack(rows_MB[:, c:], hidden, dispatch_dtype)
    # a fresh [M, 2K] buffer: a row stride that is no multiple of 4 (bf16 rows of odd hidden) forbids an
    # int32 view of the rows themselves
    meta_MC = torch.empty(rows_MB.shape[0], c, dtype=torch.uint8, device=device).copy_(rows_MB[:, :c]).view(torch.int32)
    slot_MK = local_slots(meta_MC[:, :k], first_slot, len(expert_of_slot))
    w_MK = meta_MC[:, k:].view(torch.float32)
    out_MD = torch.zeros(rows_MB.shape[0], hidden, dtype=torch.float32, device=device)
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
        y_RD = calls.expert(block, expert, x, rows)  # read at once: valid until the next expert call
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
