"""topology_aware placement: minimize the most loaded link for the expected routing.

Shape letters: G GPUs, S slots per GPU, L links, B sources (all GPUs), T sample tokens, K = top_k.

Objective: the expected routing sample (ExpectedLoad: every GPU's sample tokens, so per-expert popularity
and co-activation between experts are in it) is pushed through the real traffic model
(moe.traffic.assign + counts + linkload) for a candidate slot table; the score is the largest
link time, bytes / capacity over dispatch and combine (equal to the largest bytes among links of equal
capacity), then the sum of squared link times to break ties.

Search: the best of the contiguous, random, replicate_hot and (when its G - E replicas fit
placement.replicas) one_per_gpu placements, evaluated on the same sample,
starts a seeded local search. Each move takes a slot of a GPU behind the most loaded link (the link's GPU;
for NIC links under hierarchical paths and for leaf links, every GPU of the nodes behind it) and swaps it
with a slot of another GPU elsewhere, or, with replicas, turns one of its replicas into a replica of the
expert with the largest load per replica. A move is kept when the score falls. Moves stop after
placement.search_iters, or earlier at EP scale: at most WORK_BUDGET / (G^2 + K*B*T) evaluations. The
result is never worse than contiguous or random on the sample, by construction.
"""

from __future__ import annotations

import numpy as np

from moe.placement.load import ExpectedLoad
from moe.placement.strategies import contiguous, one_per_gpu, random, replicate_hot
from moe.placement.types import Placement, make_placement
from moe.routing.rng import generator
from moe.spec import sizes
from moe.spec.schema import Scenario
from moe.topology import Topology, build_topology
from moe.traffic import TrafficParams, assign
from moe.traffic.counts import batch_counts
from moe.traffic.linkload import link_bytes_from_counts

WORK_BUDGET = 1e8
_STREAM_SEARCH = 41


class _Scorer:
    def __init__(self, s: Scenario, load: ExpectedLoad, topo: Topology):
        self.s, self.load, self.topo = s, load, topo
        self.params = TrafficParams.from_scenario(s)
        self.experts, self.gpn = s.model.experts, s.cluster.gpus_per_node

    def link_time(self, table_GS: np.ndarray) -> np.ndarray:
        pl = Placement("search", self.experts, self.gpn, table_GS)
        a = assign(pl, self.load.ids_BTK, None, self.load.tokens_T, self.load.tokens_per_gpu,
                   self.params.capacity_factor)
        pair, node, _ = batch_counts(a, self.topo.gpus, self.gpn, self.params.comm == "hierarchical")
        d, c = link_bytes_from_counts(self.topo, self.params.comm, pair, node,
                                      self.params.dispatch_bytes_per_token, self.params.combine_bytes_per_token)
        return (d + c) / self.topo.link_capacity_Bps

    @staticmethod
    def score(time_L: np.ndarray) -> tuple[float, float]:
        return float(time_L.max()), float(np.square(time_L).sum())


def _hot_gpus(topo: Topology, link: int, comm: str) -> np.ndarray:
    """GPUs whose experts drive the load of `link`."""
    g = topo.gpus
    kind = int(topo.link_kind[link])
    if kind < 4:
        gpu = link - kind * g
        if kind >= 2 and comm == "hierarchical":  # RDMA lands on a forwarder for its whole node
            node = gpu // topo.gpus_per_node
            return np.arange(node * topo.gpus_per_node, (node + 1) * topo.gpus_per_node)
        return np.array([gpu])
    n_leaf = topo.gpus_per_node * topo.leaves_per_rail
    rail, leaf = divmod((link - 4 * g) % n_leaf, topo.leaves_per_rail)
    gpus = np.arange(g)
    behind = gpus[topo.leaf_of(gpus) == leaf]
    if comm == "hierarchical":  # RDMA stays on its rail: only that rail's GPUs cross this leaf
        return behind
    return behind[topo.local_of(behind) == rail] if (topo.local_of(behind) == rail).any() else behind


def _move(table: np.ndarray, hot: np.ndarray, rng, load_E: np.ndarray, replicas: int) -> np.ndarray | None:
    """A neighbouring slot table, or None when the drawn move is not allowed."""
    g_count, s_count = table.shape
    new = table.copy()
    a_gpu = int(rng.choice(hot))
    a_slot = int(rng.integers(s_count))
    count_E = np.bincount(new[new >= 0], minlength=len(load_E))
    e_a = int(new[a_gpu, a_slot])
    if replicas and e_a >= 0 and count_E[e_a] > 1 and rng.random() < 0.3:
        per = load_E / np.maximum(count_E, 1)
        per[new[a_gpu][new[a_gpu] >= 0]] = -np.inf
        new[a_gpu, a_slot] = int(np.argmax(per))
        return new
    others = np.setdiff1d(np.arange(g_count), hot)
    if not len(others):
        others = np.setdiff1d(np.arange(g_count), [a_gpu])
    if not len(others):
        return None
    b_gpu = int(rng.choice(others))
    b_slot = int(rng.integers(s_count))
    e_b = int(new[b_gpu, b_slot])
    if e_a == e_b or (e_a >= 0 and e_a in new[b_gpu]) or (e_b >= 0 and e_b in new[a_gpu]):
        return None
    new[a_gpu, a_slot], new[b_gpu, b_slot] = e_b, e_a
    return new


def _widen(table: np.ndarray, slots: int) -> np.ndarray:
    out = np.full((table.shape[0], slots), -1, dtype=np.int32)
    out[:, :table.shape[1]] = table
    return out


def topology_aware(s: Scenario, load: ExpectedLoad) -> Placement:
    topo = build_topology(s.cluster)
    scorer = _Scorer(s, load, topo)
    slots = sizes.slots_per_gpu(s)
    starts = [contiguous(s, load), random(s, load), replicate_hot(s, load)]
    e, g = s.model.experts, s.cluster.gpus
    if e <= g and g - e <= s.placement.replicas:  # one_per_gpu fits the replica budget
        starts.append(one_per_gpu(s, load))
    scored = []
    for p in starts:
        t = scorer.link_time(p.slot_expert_GS)
        scored.append((scorer.score(t), _widen(p.slot_expert_GS, slots), t))
    best_score, best, best_t = min(scored, key=lambda x: x[0])

    n_requests = load.ids_BTK.size
    iters = min(s.placement.search_iters, int(WORK_BUDGET // (topo.gpus ** 2 + n_requests)))
    rng = generator(s.seed, _STREAM_SEARCH)
    load_E = load.expert_requests_E
    for _ in range(iters):
        hot = _hot_gpus(topo, int(np.argmax(best_t)), scorer.params.comm)
        cand = _move(best, hot, rng, load_E, s.placement.replicas)
        if cand is None:
            continue
        t = scorer.link_time(cand)
        sc = scorer.score(t)
        if sc < best_score:
            best_score, best, best_t = sc, cand, t
    return make_placement("topology_aware", best, s.model.experts, s.cluster.gpus_per_node)
