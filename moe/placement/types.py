"""A placement: which logical expert each expert slot of each GPU holds, and how replicas share tokens.

Shape letters: G GPUs, S expert slots per GPU, X = G*S slot ids (slot id = gpu * S + s), E logical
experts, D nodes, Q replica-choice buckets, K choices per token, N tokens.

A (token, expert) request from source GPU `src` goes to the nearest replica of the expert:
1. a replica on `src` itself;
2. else a replica on src's node (several: split evenly by the token's bucket);
3. else a remote replica, chosen by the token's bucket from per-replica shares. The shares water-fill the
   replicas: with every source GPU sending the same expected load, replica r already receives
   gpus_per_node / c_n(r) units from its own node (c_n replicas of the expert on that node); the units of
   the nodes without a replica are spread so that every replica ends as level as possible ("least
   loaded"). The shares depend only on where the replicas are, so they are part of the placement.
A token's bucket is a Weyl sequence of its global id (floor(frac(gid * golden ratio) * Q)), so its choice
does not depend on which other tokens are routed with it (micro-batches and whole batches agree); each
expert sees the buckets through its own fixed permutation, so one token's replicas are not correlated
across experts. Replica shares are resolved to 1/Q.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from moe.errors import SpecError

MAX_BUCKETS = 256
"""Largest Q; smaller when the per-node tables (D x E x Q entries) would pass TABLE_ENTRIES."""
TABLE_ENTRIES = 1 << 23
_WEYL_TOKEN = np.uint32(0x9E3779B9)  # 2^32 / golden ratio: low-discrepancy over consecutive tokens
_MULTI = -2  # table entry: several replicas on the source's node


def token_bucket(gid_N, buckets: int) -> np.ndarray:
    """Bucket in [0, buckets) of each global token id (buckets a power of two)."""
    h = np.asarray(gid_N).astype(np.uint32) * _WEYL_TOKEN
    return (h >> np.uint32(32 - buckets.bit_length() + 1)).astype(np.int32)


@dataclass(frozen=True, eq=False)
class Placement:
    """Expert slots per GPU; -1 marks an empty slot. Build with `make_placement` (it validates)."""

    strategy: str
    experts: int
    gpus_per_node: int
    slot_expert_GS: np.ndarray

    @property
    def gpus(self) -> int:
        return self.slot_expert_GS.shape[0]

    @property
    def slots_per_gpu(self) -> int:
        return self.slot_expert_GS.shape[1]

    @property
    def nodes(self) -> int:
        return self.gpus // self.gpus_per_node

    @cached_property
    def expert_of_slot_X(self) -> np.ndarray:
        return self.slot_expert_GS.ravel()

    @cached_property
    def used_slots_G(self) -> np.ndarray:
        """Slots holding an expert, per GPU."""
        return (self.slot_expert_GS >= 0).sum(axis=1)

    @cached_property
    def replicas_E(self) -> np.ndarray:
        """Number of slots holding each logical expert (>= 1)."""
        x = self.expert_of_slot_X
        return np.bincount(x[x >= 0], minlength=self.experts)

    @property
    def slot_dtype(self):
        """int16 when every slot id fits (halves the memory traffic of per-request slot arrays), else int32."""
        return np.int16 if self.gpus * self.slots_per_gpu < 2**15 else np.int32

    @cached_property
    def single_slot_E(self) -> np.ndarray | None:
        """Slot of each expert when no expert is replicated (the fast path), else None."""
        if (self.replicas_E != 1).any():
            return None
        x = self.expert_of_slot_X
        out = np.empty(self.experts, dtype=self.slot_dtype)
        used = np.flatnonzero(x >= 0)
        out[x[used]] = used
        return out

    def slots_of(self, expert: int) -> np.ndarray:
        return np.flatnonzero(self.expert_of_slot_X == expert)

    def gpus_of(self, expert: int) -> np.ndarray:
        return self.slots_of(expert) // self.slots_per_gpu

    # --------------------------------------------------------------------------- replica choice
    @cached_property
    def buckets(self) -> int:
        q = MAX_BUCKETS
        while q > 16 and self.nodes * self.experts * q > TABLE_ENTRIES:
            q //= 2
        return q

    @cached_property
    def _tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """table_DEQ: slot for (source node, expert, bucket): the node's one replica, a remote replica by
        share, or _MULTI; node_start_DE/node_count_DE index node_slots (slots grouped by (node, expert))."""
        e_count, s_count, gpn, n_count, q = (self.experts, self.slots_per_gpu, self.gpus_per_node, self.nodes,
                                             self.buckets)
        x = self.expert_of_slot_X
        used = np.flatnonzero(x >= 0)
        e_of, node_of = x[used], used // s_count // gpn
        order = np.lexsort((used, e_of, node_of))
        node_slots = used[order].astype(np.int32)
        count_DE = np.bincount(node_of * e_count + e_of, minlength=n_count * e_count).reshape(n_count, e_count)
        start_DE = (np.cumsum(count_DE.ravel()) - count_DE.ravel()).reshape(n_count, e_count)

        remote_EQ = np.empty((e_count, q), dtype=self.slot_dtype)
        centers_Q = (np.arange(q) + 0.5) / q
        perm_EQ = np.random.default_rng(0x5EED).permuted(np.tile(np.arange(q), (e_count, 1)), axis=1)
        by_expert = np.lexsort((used, e_of))
        expert_slots = used[by_expert]
        expert_start = np.searchsorted(e_of[by_expert], np.arange(e_count + 1))
        for e in range(e_count):
            slots = expert_slots[expert_start[e]:expert_start[e + 1]]
            c_R = count_DE[slots // s_count // gpn, e]
            remote_units = (n_count - np.count_nonzero(count_DE[:, e])) * gpn
            share_R = _water_fill(gpn / c_R, remote_units)
            cum_R = np.cumsum(share_R) / share_R.sum()
            pick_Q = np.minimum(np.searchsorted(cum_R, centers_Q, side="right"), len(slots) - 1)
            remote_EQ[e] = slots[pick_Q][perm_EQ[e]]

        table_DEQ = np.broadcast_to(remote_EQ, (n_count, e_count, q)).copy()
        one_D, one_E = np.nonzero(count_DE == 1)
        table_DEQ[one_D, one_E, :] = node_slots[start_DE[one_D, one_E]][:, None]
        multi_D, multi_E = np.nonzero(count_DE > 1)
        table_DEQ[multi_D, multi_E, :] = _MULTI
        return table_DEQ, start_DE, count_DE, node_slots

    def choose_slots(self, expert_KN: np.ndarray, src_N: np.ndarray, gid_N: np.ndarray) -> np.ndarray:
        """(K, N) slot (slot_dtype) serving each (choice, token) request of tokens with source GPUs src_N and
        global ids gid_N, nearest replica first (module docstring)."""
        single = self.single_slot_E
        if single is not None:
            return single[expert_KN]
        table_DEQ, start_DE, count_DE, node_slots = self._tables
        q = self.buckets
        bucket_N = token_bucket(gid_N, q)
        node_N = (src_N // self.gpus_per_node).astype(np.int32)
        slot_KN = np.empty(expert_KN.shape, dtype=self.slot_dtype)
        # one run of tokens per source node: its (E x Q) table stays in cache while the run is looked up
        cuts = np.flatnonzero(np.diff(node_N)) + 1
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(node_N)], strict=True):
            flat = table_DEQ[node_N[lo]].ravel()
            for j in range(expert_KN.shape[0]):
                idx = expert_KN[j, lo:hi].astype(np.int32)
                idx *= q
                idx += bucket_N[lo:hi]
                np.take(flat, idx, out=slot_KN[j, lo:hi], mode="clip")  # in range; clip avoids a buffer
        multi_K, multi_N = np.nonzero(slot_KN == _MULTI) if (count_DE > 1).any() else ((), ())
        if len(multi_N):
            e = expert_KN[multi_K, multi_N].astype(np.int64)
            src, node = src_N[multi_N], node_N[multi_N]
            start, count = start_DE[node, e], count_DE[node, e]
            # a replica on the source itself wins; else the node's replicas split by bucket
            pick = node_slots[start + bucket_N[multi_N] * count // q]
            for i in range(int(count.max())):
                cand = node_slots[np.minimum(start + i, len(node_slots) - 1)]
                local = (i < count) & (cand // self.slots_per_gpu == src)
                pick = np.where(local, cand, pick)
            slot_KN[multi_K, multi_N] = pick
        return slot_KN


def _water_fill(base_R: np.ndarray, units: float) -> np.ndarray:
    """Extra units x_R >= 0 with sum(x) = units making base + x as level as possible; all zero (then
    equal shares) when units is 0."""
    if units <= 0:
        return np.ones_like(base_R)
    order = np.sort(base_R)
    # level L solves sum(max(0, L - base)) = units; try each prefix of the sorted bases
    for k in range(len(order), 0, -1):
        level = (units + order[:k].sum()) / k
        if level >= order[k - 1]:
            break
    return np.maximum(0.0, level - base_R)


def make_placement(strategy: str, slot_expert_GS, experts: int, gpus_per_node: int) -> Placement:
    """Validate and freeze a slot table: every expert in [0, experts) at least once, never two replicas of
    one expert on one GPU, whole nodes."""
    table = np.asarray(slot_expert_GS, dtype=np.int32)
    if table.ndim != 2 or table.shape[0] % gpus_per_node:
        raise SpecError("placement", table.shape, f"slot table must be (GPUs, slots), GPUs a multiple of "
                                                  f"{gpus_per_node}")
    if (table >= experts).any() or (table < -1).any():
        raise SpecError("placement", int(table.max()), f"expert ids must lie in [0, {experts})")
    held = table[table >= 0]
    missing = np.setdiff1d(np.arange(experts), held)
    if len(missing):
        raise SpecError("placement.strategy", strategy, f"expert {int(missing[0])} has no slot")
    sorted_GS = np.sort(table, axis=1)
    if ((sorted_GS[:, 1:] == sorted_GS[:, :-1]) & (sorted_GS[:, 1:] >= 0)).any():
        raise SpecError("placement.strategy", strategy, "two replicas of one expert on one GPU")
    table.setflags(write=False)
    return Placement(strategy=strategy, experts=experts, gpus_per_node=gpus_per_node, slot_expert_GS=table)
