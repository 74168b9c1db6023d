"""Per-token destinations: which slot (and GPU) serves each (token, chosen expert), and capacity drops.

Shape letters: B source GPUs in the batch, T tokens per source in the batch, K experts per token (top_k),
N = B*T tokens, X slot ids (gpu * slots_per_gpu + slot).

Arrays are kept column-major, (K, N): column j holds every token's j-th choice, so the per-choice passes
of `moe.traffic.model` read contiguous memory. Token n of the batch is token `tokens_T[n % T]` of source
GPU `sources_B[n // T]`; its global id (for replica buckets) is src * tokens_per_gpu + token.

Capacity (`capacity_factor`): a slot accepts ceil(factor * requests / used slots) requests of the batch;
the overflow, in the order (source, token, choice), is dropped and counted. A dropped request still
names the slot it was refused by.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from moe.errors import SpecError
from moe.placement.types import Placement


@dataclass(frozen=True, eq=False)
class Assignment:
    """Where every (token, choice) of a batch goes. An MPI runtime groups a source's tokens by
    `gpu_KN` (see `for_source`) and reproduces moe.traffic's byte counts exactly."""

    sources_B: np.ndarray
    tokens_T: np.ndarray
    tokens_per_gpu: int
    slots_per_gpu: int
    expert_KN: np.ndarray
    """Chosen logical expert of each (choice, token)."""
    slot_KN: np.ndarray
    """Slot serving it (int16 or int32, Placement.slot_dtype), nearest replica first."""
    dropped_KN: np.ndarray | None
    """True where capacity dropped the request; None when no capacity limit applies."""

    @property
    def top_k(self) -> int:
        return self.expert_KN.shape[0]

    @property
    def gpu_KN(self) -> np.ndarray:
        return self.slot_KN // self.slots_per_gpu

    @property
    def dropped(self) -> int:
        return 0 if self.dropped_KN is None else int(self.dropped_KN.sum())

    def for_source(self, gpu: int) -> dict[str, np.ndarray]:
        """One source GPU's tokens: token_T (indices in its batch), expert_TK, slot_TK, gpu_TK, dropped_TK."""
        hits = np.flatnonzero(self.sources_B == gpu)
        if not len(hits):
            raise KeyError(f"GPU {gpu} is not a source of this batch")
        t = len(self.tokens_T)
        cols = slice(hits[0] * t, (hits[0] + 1) * t)
        dropped = (np.zeros((t, self.top_k), dtype=bool) if self.dropped_KN is None
                   else self.dropped_KN[:, cols].T.copy())
        slot_TK = self.slot_KN[:, cols].T.copy()
        return {"token_T": self.tokens_T.copy(), "expert_TK": self.expert_KN[:, cols].T.copy(),
                "slot_TK": slot_TK, "gpu_TK": slot_TK // self.slots_per_gpu, "dropped_TK": dropped}


def expert_columns(ids_BTK: np.ndarray) -> np.ndarray:
    """(B, T, K) expert ids -> (K, B*T), without a copy when ids_BTK is a view of a (K, B, T) array."""
    b, t, k = ids_BTK.shape
    return np.ascontiguousarray(np.moveaxis(ids_BTK, 2, 0)).reshape(k, b * t)


def assign(placement: Placement, ids_BTK, sources_B=None, tokens_T=None, tokens_per_gpu: int | None = None,
           capacity_factor: float | None = None) -> Assignment:
    """Choose the serving slot of every (token, choice); apply the capacity limit if one is given.

    ids_BTK: expert ids chosen by T tokens of each of B source GPUs. sources_B: their GPU ids (default all
    GPUs, then B must equal the GPU count). tokens_T: their indices in each source's batch (default
    0..T-1). tokens_per_gpu: full batch size per GPU (default T), for global token ids.
    """
    ids_BTK = np.asarray(ids_BTK)
    if ids_BTK.ndim != 3:
        raise SpecError("routing", ids_BTK.shape, "expert ids must have shape (sources, tokens, top_k)")
    b, t, _ = ids_BTK.shape
    sources_B = np.arange(placement.gpus) if sources_B is None else np.asarray(sources_B)
    tokens_T = np.arange(t) if tokens_T is None else np.asarray(tokens_T)
    if len(sources_B) != b or len(tokens_T) != t:
        raise SpecError("routing", ids_BTK.shape,
                        f"expected {len(sources_B)} sources x {len(tokens_T)} tokens of expert ids")
    if b and t and (ids_BTK.min() < 0 or ids_BTK.max() >= placement.experts):
        bad = int(ids_BTK.max() if ids_BTK.max() >= placement.experts else ids_BTK.min())
        raise SpecError("routing", bad, f"expert id out of range [0, {placement.experts})")
    tokens_per_gpu = t if tokens_per_gpu is None else tokens_per_gpu
    expert_KN = expert_columns(ids_BTK)
    src_N = np.repeat(sources_B.astype(np.int32), t)
    gid_N = src_N.astype(np.int64) * tokens_per_gpu + np.tile(tokens_T.astype(np.int64), b)
    slot_KN = placement.choose_slots(expert_KN, src_N, gid_N)
    dropped_KN = None
    if capacity_factor is not None:
        dropped_KN = capacity_drops(slot_KN, capacity_factor, int(placement.used_slots_G.sum()))
    return Assignment(sources_B=sources_B, tokens_T=tokens_T, tokens_per_gpu=tokens_per_gpu,
                      slots_per_gpu=placement.slots_per_gpu, expert_KN=expert_KN, slot_KN=slot_KN,
                      dropped_KN=dropped_KN)


def slot_capacity(requests: int, used_slots: int, capacity_factor: float) -> int:
    """Requests one slot accepts: ceil(factor * requests / used slots)."""
    return math.ceil(capacity_factor * requests / max(used_slots, 1))


def capacity_drops(slot_KN: np.ndarray, capacity_factor: float, used_slots: int) -> np.ndarray:
    """Dropped flag per request: the requests beyond a slot's capacity, in (token, choice) order."""
    k, n = slot_KN.shape
    cap = slot_capacity(k * n, used_slots, capacity_factor)
    load_X = np.bincount(slot_KN.ravel())
    dropped_NK = np.zeros((n, k), dtype=bool)
    if load_X.max(initial=0) <= cap:
        return dropped_NK.T
    slot_R = slot_KN.T.ravel()  # canonical order: token-major, then choice
    over_R = np.flatnonzero(load_X[slot_R] > cap)
    order = np.argsort(slot_R[over_R], kind="stable")
    sorted_slots = slot_R[over_R][order]
    first = np.flatnonzero(np.r_[True, sorted_slots[1:] != sorted_slots[:-1]])
    rank = np.arange(len(order)) - np.repeat(first, np.diff(np.r_[first, len(order)]))
    dropped_NK.ravel()[over_R[order[rank >= cap]]] = True
    return dropped_NK.T
