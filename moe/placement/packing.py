"""Building blocks of placement strategies: how many replicas each expert gets, and balanced packing.

Shape letters: E experts, G GPUs, S slots per GPU, I items (expert replicas to place), D nodes.

- `replica_counts`: the divisor (D'Hondt) rule: starting from one slot per expert, every extra slot goes
  to the expert with the largest load per replica, which minimizes the largest load per replica (the
  rule DeepSeek's EPLB `replicate_experts` uses).
- `pack`: longest-processing-time packing: items by falling weight, each onto the least loaded GPU that
  has a free slot and does not hold that expert yet; among equally loaded GPUs, one on a node that does
  not hold the expert, then the lowest id (replicas spread over nodes so nearest-replica routing helps).
"""

from __future__ import annotations

import numpy as np

from moe.errors import SpecError


def replica_counts(load_E: np.ndarray, slots: int, max_per_expert: int) -> np.ndarray:
    """Slots per expert (>= 1, <= max_per_expert, summing to min(slots, E * max_per_expert))."""
    load_E = np.asarray(load_E, dtype=np.float64)
    e = len(load_E)
    if slots < e:
        raise SpecError("placement.replicas", slots - e, f"{slots} slots cannot hold {e} experts")
    count_E = np.ones(e, dtype=np.int64)
    for _ in range(min(slots, e * max_per_expert) - e):
        per = np.where(count_E < max_per_expert, (load_E + 1e-12) / count_E, -np.inf)
        count_E[int(np.argmax(per))] += 1
    return count_E


def pack(table_GS: np.ndarray, experts_I: np.ndarray, weights_I: np.ndarray, gpus_per_node: int,
         gpus: np.ndarray | None = None, gpu_load_G: np.ndarray | None = None) -> np.ndarray:
    """Place items into the free (-1) slots of table_GS (in place) on `gpus` (default all); returns the
    GPU load after packing. Raises SpecError when an item finds no GPU."""
    g_count, s_count = table_GS.shape
    gpus = np.arange(g_count) if gpus is None else np.asarray(gpus)
    load = np.zeros(g_count) if gpu_load_G is None else np.asarray(gpu_load_G, dtype=np.float64).copy()
    free = (table_GS == -1).sum(axis=1)
    node_of = np.arange(g_count) // gpus_per_node
    allowed = np.zeros(g_count, dtype=bool)
    allowed[gpus] = True
    for i in np.argsort(-np.asarray(weights_I), kind="stable"):
        e, w = int(experts_I[i]), float(weights_I[i])
        holds = (table_GS == e).any(axis=1)
        ok = allowed & (free > 0) & ~holds
        if not ok.any():
            raise SpecError("placement.slots_per_gpu", s_count,
                            f"no GPU has a free slot for another replica of expert {e}")
        node_holds = np.bincount(node_of[holds], minlength=node_of[-1] + 1)[node_of] > 0
        key = np.where(ok, load, np.inf)
        best = key == key.min()
        pick = np.flatnonzero(best & ~node_holds)
        g = int(pick[0] if len(pick) else np.flatnonzero(best)[0])
        table_GS[g, s_count - free[g]] = e
        free[g] -= 1
        load[g] += w
    return load


def replicas_as_items(load_E: np.ndarray, count_E: np.ndarray, experts_E: np.ndarray | None = None):
    """(experts_I, weights_I): every replica of every expert with weight load / count."""
    experts_E = np.arange(len(load_E)) if experts_E is None else np.asarray(experts_E)
    experts_I = np.repeat(experts_E, count_E)
    weights_I = np.repeat(np.asarray(load_E, dtype=np.float64) / count_E, count_E)
    return experts_I, weights_I
