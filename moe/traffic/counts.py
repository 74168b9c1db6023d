"""Token counts of a batch: distinct (token, GPU) and (token, node) pairs, and requests per slot.

Shape letters: K choices per token, N tokens in the batch, G GPUs, D nodes, X slots.

A token that chose several experts on one GPU is sent to that GPU once (one copy of its hidden vector);
under hierarchical communication it crosses RDMA once per target node. Dropped requests send nothing.
Duplicates are found by comparing each choice column with the earlier ones (K(K-1)/2 vector compares,
no sort), so the first choice that reaches a GPU (or node) is the one counted.
"""

from __future__ import annotations

import numpy as np

from moe.traffic.assign import Assignment


def first_occurrence(col_KN: np.ndarray) -> np.ndarray:
    """Mask (K, N): True where column j's value differs from every earlier column of the same token and
    is not negative (negative marks a dropped request)."""
    first_KN = col_KN >= 0
    tmp_N = np.empty(col_KN.shape[1], dtype=bool)
    for j in range(1, col_KN.shape[0]):
        for i in range(j):
            np.not_equal(col_KN[j], col_KN[i], out=tmp_N)
            np.logical_and(first_KN[j], tmp_N, out=first_KN[j])
    return first_KN


BLOCK_REQUESTS = 1 << 17
"""Requests counted together (whole sources): a block's working arrays stay in cache."""


def _count(keys_KN: np.ndarray, first_KN: np.ndarray | None, bins: int) -> np.ndarray:
    return np.bincount(keys_KN.ravel() if first_KN is None else keys_KN[first_KN], minlength=bins)


def _shift_or_divide(x, d: int):
    """x // d for x >= -1 (a shift when d is a power of two; -1 stays -1)."""
    if d == 1:
        return x
    return x >> (d.bit_length() - 1) if d & (d - 1) == 0 else np.floor_divide(x, d)


def batch_counts(a: Assignment, gpus: int, gpus_per_node: int, need_nodes: bool):
    """(pair_tokens_GG, node_tokens_GD or None, slot_requests_X) of one batch.

    pair_tokens_GG[s, d]: distinct tokens of source s that d computes for (d == s: kept local).
    node_tokens_GD[s, n]: distinct tokens of source s with at least one expert on node n.
    slot_requests_X[x]: (token, expert) requests slot x computes (dropped ones excluded).
    With one slot per GPU a token's distinct experts are on distinct GPUs, so no GPU-level duplicate
    search is needed and slot loads are the column sums of pair_tokens_GG. Sources are counted in blocks
    of whole sources, so the histograms and temporaries of a block stay in cache.
    """
    k, _ = a.slot_KN.shape
    s_count, t = a.slots_per_gpu, len(a.tokens_T)
    nodes = gpus // gpus_per_node
    b = len(a.sources_B)
    per_block = max(1, BLOCK_REQUESTS // max(1, k * t))
    pair_GG = np.zeros((gpus, gpus), dtype=np.int64)
    node_GD = np.zeros((gpus, nodes), dtype=np.int64) if need_nodes else None
    slot_X = np.zeros(gpus * s_count, dtype=np.int64)
    for lo in range(0, b, per_block):
        hi = min(b, lo + per_block)
        cols = slice(lo * t, hi * t)
        local_N = np.repeat(np.arange(hi - lo, dtype=np.int32), t)
        slot_KN = a.slot_KN[:, cols]
        gpu_KN = _shift_or_divide(slot_KN, s_count)
        kept_KN = None
        if a.dropped_KN is not None:
            kept_KN = ~a.dropped_KN[:, cols]
            gpu_KN = np.where(kept_KN, gpu_KN, -1)
        first_KN = kept_KN if s_count == 1 else first_occurrence(gpu_KN)
        counts = _count(local_N * gpus + gpu_KN, first_KN, (hi - lo) * gpus).reshape(hi - lo, gpus)
        src = a.sources_B[lo:hi]
        pair_GG[src] += counts
        if need_nodes:
            node_KN = _shift_or_divide(gpu_KN, gpus_per_node)
            node_GD[src] += _count(local_N * nodes + node_KN, first_occurrence(node_KN),
                                   (hi - lo) * nodes).reshape(hi - lo, nodes)
        if s_count > 1:
            slot_X += _count(slot_KN, kept_KN, gpus * s_count)
    if s_count == 1:
        slot_X = pair_GG.sum(axis=0)
    return pair_GG, node_GD, slot_X


def slot_requests_of(a: Assignment, subsets: list[np.ndarray], slots: int) -> np.ndarray:
    """[M, X]: the (token, choice) requests slot x computes among each subset of the batch's token positions
    (indices into `a.tokens_T`, the same for every source: a micro-batch's tokens), dropped ones excluded.
    Subsets that partition the tokens sum to `batch_counts`' slot requests."""
    k, t, b = a.top_k, len(a.tokens_T), len(a.sources_B)
    slot_KBT = a.slot_KN.reshape(k, b, t)
    dropped_KBT = None if a.dropped_KN is None else a.dropped_KN.reshape(k, b, t)
    out = np.zeros((len(subsets), slots), dtype=np.int64)
    for i, sub in enumerate(subsets):
        sub = np.asarray(sub)
        contiguous = len(sub) and sub[-1] - sub[0] + 1 == len(sub)
        pick = slice(int(sub[0]), int(sub[-1]) + 1) if contiguous else sub  # a view where it can
        slot = slot_KBT[:, :, pick]
        kept = slot if dropped_KBT is None else slot[~dropped_KBT[:, :, pick]]
        out[i] = np.bincount(kept.ravel(), minlength=slots)
    return out
