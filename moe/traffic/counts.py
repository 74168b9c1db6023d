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


def _small(max_value: int):
    return np.int16 if max_value < 2**15 else np.int32


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


def _pair_counts(target_KN: np.ndarray, first_KN: np.ndarray | None, src_N: np.ndarray, targets: int,
                 gpus: int) -> np.ndarray:
    """(G, targets) counts per (source GPU, target) of the requests marked in first_KN (None: all)."""
    key_dtype = np.int32 if gpus * targets < 2**31 else np.int64
    base_N = src_N.astype(key_dtype) * targets
    counts = np.zeros(gpus * targets, dtype=np.int64)
    keys = np.empty(len(src_N), dtype=key_dtype)
    for j in range(target_KN.shape[0]):
        np.add(base_N, target_KN[j], out=keys)
        counts += np.bincount(keys if first_KN is None else keys[first_KN[j]], minlength=gpus * targets)
    return counts.reshape(gpus, targets)


def _divide(x_KN: np.ndarray, d: int, dtype) -> np.ndarray:
    """x // d for non-negative x (a shift when d is a power of two), -1 kept as -1."""
    if d == 1:
        return x_KN.astype(dtype, copy=False)
    if d & (d - 1) == 0:
        return (x_KN >> (d.bit_length() - 1)).astype(dtype, copy=False)  # arithmetic shift keeps -1
    return np.floor_divide(x_KN, d).astype(dtype, copy=False)


def batch_counts(a: Assignment, gpus: int, gpus_per_node: int, need_nodes: bool):
    """(pair_tokens_GG, node_tokens_GD or None, slot_requests_X) of one batch.

    pair_tokens_GG[s, d]: distinct tokens of source s that d computes for (d == s: kept local).
    node_tokens_GD[s, n]: distinct tokens of source s with at least one expert on node n.
    slot_requests_X[x]: (token, expert) requests slot x computes (dropped ones excluded).
    With one slot per GPU a token's distinct experts are on distinct GPUs, so no GPU-level duplicate
    search is needed and slot loads are the column sums of pair_tokens_GG.
    """
    s_count = a.slots_per_gpu
    src_N = np.repeat(a.sources_B.astype(np.int32), len(a.tokens_T))
    gpu_KN = _divide(a.slot_KN, s_count, _small(gpus))
    if a.dropped_KN is not None:
        gpu_KN = np.where(a.dropped_KN, -1, gpu_KN).astype(gpu_KN.dtype)
    if s_count == 1:
        first_KN = None if a.dropped_KN is None else ~a.dropped_KN
    else:
        first_KN = first_occurrence(gpu_KN)
    pair_GG = _pair_counts(gpu_KN, first_KN, src_N, gpus, gpus)

    node_GD = None
    if need_nodes:
        nodes = gpus // gpus_per_node
        node_KN = _divide(gpu_KN, gpus_per_node, _small(nodes))
        node_GD = _pair_counts(node_KN, first_occurrence(node_KN), src_N, nodes, gpus)

    if s_count == 1:
        slot_X = pair_GG.sum(axis=0)
    else:
        slot_X = np.zeros(gpus * s_count, dtype=np.int64)
        for j in range(a.slot_KN.shape[0]):
            col = a.slot_KN[j] if a.dropped_KN is None else a.slot_KN[j][~a.dropped_KN[j]]
            slot_X += np.bincount(col, minlength=gpus * s_count)
    return pair_GG, node_GD, slot_X
