"""A placement: which logical expert each expert slot of each GPU holds, and how replicas share tokens.

Shape letters: G GPUs, S expert slots per GPU, X = G*S slot ids (slot id = gpu * S + s), E logical
experts, N nodes, Q replica-choice buckets.

A (token, expert) request from source GPU `src` goes to the nearest replica of the expert:
1. a replica on `src` itself;
2. else a replica on src's node (several: split evenly by the token's bucket);
3. else a remote replica, chosen by the token's bucket from per-replica shares. The shares water-fill the
   replicas: with every source GPU sending the same expected load, replica r already receives
   gpus_per_node / c_n(r) units from its own node (c_n replicas of the expert on that node); the units of
   the nodes without a replica are spread so that every replica ends as level as possible ("least
   loaded"). The shares depend only on where the replicas are, so they are part of the placement.
The bucket of a request is a Weyl sequence of (global token id, expert), so a token's choice does not
depend on which other tokens are routed with it (micro-batches and whole batches agree).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from moe.errors import SpecError

BUCKETS = 1024
"""Resolution of the replica shares (Q): shares are rounded to multiples of 1/BUCKETS."""
_BUCKET_SHIFT = 32 - 10
_WEYL_TOKEN = np.uint32(0x9E3779B9)  # 2^32 / golden ratio: low-discrepancy over consecutive tokens
_WEYL_EXPERT = np.uint32(0x7F4A7C15)


def request_bucket(gid, expert) -> np.ndarray:
    """Bucket in [0, BUCKETS) of (global token id, expert) requests: floor(frac(gid*phi + e*c) * Q)."""
    h = np.asarray(gid).astype(np.uint32) * _WEYL_TOKEN + np.asarray(expert).astype(np.uint32) * _WEYL_EXPERT
    return (h >> np.uint32(_BUCKET_SHIFT)).astype(np.int32)


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

    @cached_property
    def single_slot_E(self) -> np.ndarray | None:
        """Slot of each expert when no expert is replicated (the fast path), else None."""
        if (self.replicas_E != 1).any():
            return None
        x = self.expert_of_slot_X
        out = np.empty(self.experts, dtype=np.int32)
        used = np.flatnonzero(x >= 0)
        out[x[used]] = used
        return out

    def slots_of(self, expert: int) -> np.ndarray:
        return np.flatnonzero(self.expert_of_slot_X == expert)

    def gpus_of(self, expert: int) -> np.ndarray:
        return self.slots_of(expert) // self.slots_per_gpu

    # --------------------------------------------------------------------------- replica choice
    @cached_property
    def _tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """near_EG: slot on the GPU itself, else the one replica on its node, -1 none on the node,
        -2 several on the node; node_start_EN/node_count_EN index node_slots (slots grouped by
        (expert, node)); remote_EQ: slot per bucket for requests from nodes without a replica."""
        e_count, s_count, gpn, n_count = self.experts, self.slots_per_gpu, self.gpus_per_node, self.nodes
        x = self.expert_of_slot_X
        used = np.flatnonzero(x >= 0)
        e_of, gpu_of = x[used], used // s_count
        node_of = gpu_of // gpn
        order = np.lexsort((used, node_of, e_of))
        node_slots = used[order].astype(np.int32)
        key = e_of[order] * n_count + node_of[order]
        node_count_EN = np.bincount(key, minlength=e_count * n_count).reshape(e_count, n_count)
        node_start_EN = (np.cumsum(node_count_EN.ravel()) - node_count_EN.ravel()).reshape(e_count, n_count)

        near_EN = np.where(node_count_EN == 0, -1, -2).astype(np.int32)
        one = node_count_EN == 1
        near_EN[one] = node_slots[node_start_EN[one]]
        near_EG = np.repeat(near_EN, gpn, axis=1)
        near_EG[e_of, gpu_of] = used

        remote_EQ = np.empty((e_count, BUCKETS), dtype=np.int32)
        centers_Q = (np.arange(BUCKETS) + 0.5) / BUCKETS
        for e in range(e_count):
            lo, hi = node_start_EN[e, 0], node_start_EN[e, -1] + node_count_EN[e, -1]
            slots = node_slots[lo:hi]
            c_R = node_count_EN[e, slots // s_count // gpn]
            base_R = gpn / c_R
            remote_units = (n_count - np.count_nonzero(node_count_EN[e])) * gpn
            share_R = _water_fill(base_R, remote_units)
            cum_R = np.cumsum(share_R) / share_R.sum()
            remote_EQ[e] = slots[np.minimum(np.searchsorted(cum_R, centers_Q, side="right"), len(slots) - 1)]
        return near_EG, node_start_EN, node_count_EN, node_slots, remote_EQ

    def choose_slots(self, expert_N: np.ndarray, src_N: np.ndarray, gid_N: np.ndarray) -> np.ndarray:
        """Slot (int32) serving each (expert, source GPU, global token id) request, nearest replica
        first (module docstring)."""
        single = self.single_slot_E
        if single is not None:
            return single[expert_N]
        near_EG, node_start_EN, node_count_EN, node_slots, remote_EQ = self._tables
        e = expert_N.astype(np.int32)
        slot_N = near_EG.ravel()[e * self.gpus + src_N]
        far = np.flatnonzero(slot_N < 0)
        if len(far):
            e_f, s_f = e[far], slot_N[far]
            b_f = request_bucket(gid_N[far], e_f)
            out = remote_EQ.ravel()[e_f * BUCKETS + b_f]
            multi = np.flatnonzero(s_f == -2)
            if len(multi):
                node = src_N[far[multi]] // self.gpus_per_node
                start = node_start_EN[e_f[multi], node]
                count = node_count_EN[e_f[multi], node]
                out[multi] = node_slots[start + b_f[multi] * count // BUCKETS]
            slot_N[far] = out
        return slot_N


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
