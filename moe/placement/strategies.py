"""Placement strategies, pure functions (scenario, expected load) -> Placement.

Shape letters: E experts, G GPUs, S slots per GPU (moe.spec.sizes.slots_per_gpu), H expert groups.

- one_per_gpu (E <= G): expert i on GPU i; the G - E spare GPUs each hold one replica of a hot expert
  (replica counts by the divisor rule on the expected load, replicas spread over nodes).
- contiguous: blocks of ceil(E / G) consecutive experts per GPU (the reference code's layout).
- random: a permutation of experts from `seed`, dealt round-robin over GPUs (balanced slot counts).
- replicate_hot (EPLB-like): E + placement.replicas slots, replica counts by the divisor rule, balanced
  packing onto GPUs. When expert groups and nodes nest (groups a multiple of nodes, or nodes a multiple of
  groups) groups go to nodes first, balanced by group load, and replication and packing happen inside
  each node's share, as DeepSeek's EPLB `rebalance_experts_hierarchical` does.
"""

from __future__ import annotations

import numpy as np

from moe.errors import SpecError
from moe.placement.load import ExpectedLoad
from moe.placement.packing import pack, replica_counts, replicas_as_items
from moe.placement.types import Placement, make_placement
from moe.routing.rng import generator
from moe.spec import sizes
from moe.spec.schema import Scenario

_STREAM_RANDOM_PLACEMENT = 31


def _dims(s: Scenario) -> tuple[int, int, int, int]:
    return s.model.experts, s.cluster.gpus, sizes.slots_per_gpu(s), s.cluster.gpus_per_node


def one_per_gpu(s: Scenario, load: ExpectedLoad) -> Placement:
    e, g, _, gpn = _dims(s)
    if e > g:
        raise SpecError("placement.strategy", "one_per_gpu", f"needs model.experts ({e}) <= GPUs ({g})")
    table = np.full((g, 1), -1, dtype=np.int32)
    table[:e, 0] = np.arange(e)
    load_E = load.expert_requests_E
    count_E = replica_counts(load_E, g, max_per_expert=g)
    extra_E = count_E - 1
    experts_I = np.repeat(np.arange(e), extra_E)
    pack(table, experts_I, np.repeat(load_E / count_E, extra_E), gpn)
    return make_placement("one_per_gpu", table, e, gpn)


def contiguous(s: Scenario, load: ExpectedLoad | None = None) -> Placement:
    e, g, slots, gpn = _dims(s)
    block = -(-e // g)
    if block > slots:
        raise SpecError("placement.slots_per_gpu", slots, f"contiguous needs {block} slots per GPU")
    table = np.full((g, slots), -1, dtype=np.int32)
    ids = np.arange(e)
    table[ids // block, ids % block] = ids
    return make_placement("contiguous", table, e, gpn)


def random(s: Scenario, load: ExpectedLoad | None = None) -> Placement:
    e, g, slots, gpn = _dims(s)
    if -(-e // g) > slots:
        raise SpecError("placement.slots_per_gpu", slots, f"random needs {-(-e // g)} slots per GPU")
    perm = generator(s.seed, _STREAM_RANDOM_PLACEMENT).permutation(e)
    table = np.full((g, slots), -1, dtype=np.int32)
    i = np.arange(e)
    table[i % g, i // g] = perm
    return make_placement("random", table, e, gpn)


def _domains(s: Scenario, load_E: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(experts, GPUs) pairs packed independently: whole groups to nodes when groups and nodes nest,
    otherwise one domain of everything."""
    e, g, _, gpn = _dims(s)
    h, nodes = s.model.groups, s.cluster.nodes
    all_gpus = np.arange(g)
    if h <= 1 or nodes <= 1 or (h % nodes and nodes % h):
        return [(np.arange(e), all_gpus)]
    group_experts = np.arange(e).reshape(h, e // h)
    if nodes % h == 0:  # each group gets its own nodes / h nodes
        per = nodes // h
        return [(group_experts[i], all_gpus[i * per * gpn:(i + 1) * per * gpn]) for i in range(h)]
    per_node = h // nodes  # groups per node, balanced by group load (LPT over nodes)
    group_load = load_E.reshape(h, -1).sum(axis=1)
    node_load, node_groups = np.zeros(nodes), [[] for _ in range(nodes)]
    for grp in np.argsort(-group_load, kind="stable"):
        open_nodes = [n for n in range(nodes) if len(node_groups[n]) < per_node]
        n = min(open_nodes, key=lambda n: (node_load[n], n))
        node_groups[n].append(grp)
        node_load[n] += group_load[grp]
    return [(np.sort(group_experts[grps].ravel()), all_gpus[n * gpn:(n + 1) * gpn])
            for n, grps in enumerate(node_groups)]


def replicate_hot(s: Scenario, load: ExpectedLoad) -> Placement:
    e, g, slots, gpn = _dims(s)
    replicas = s.placement.replicas
    if e + replicas > g * slots:
        raise SpecError("placement.replicas", replicas, f"{slots} slots x {g} GPUs cannot hold {e} experts + "
                                                      f"{replicas} replicas")
    load_E = load.expert_requests_E
    table = np.full((g, slots), -1, dtype=np.int32)
    domains = _domains(s, load_E)
    # the replicas are shared out over domains in proportion to their load, never beyond their slots
    dom_load = np.array([load_E[ex].sum() for ex, _ in domains])
    # room: free slots of the domain, and at most one copy of an expert per GPU
    room = np.array([min(len(gp) * slots, len(ex) * len(gp)) - len(ex) for ex, gp in domains])
    if room.sum() < replicas:
        raise SpecError("placement.replicas", replicas,
                        f"the expert groups' nodes hold at most {int(room.sum())} replicas (one copy of an "
                        "expert per GPU)")
    share = np.minimum(np.floor(replicas * dom_load / max(dom_load.sum(), 1e-12)).astype(int), room)
    while share.sum() < replicas:
        free = np.flatnonzero(share < room)
        share[free[np.argmax(dom_load[free] / (share[free] + 1))]] += 1
    for (ex, gp), extra in zip(domains, share, strict=True):
        count = replica_counts(load_E[ex], len(ex) + int(extra), max_per_expert=len(gp))
        items_e, items_w = replicas_as_items(load_E[ex], count, ex)
        pack(table, items_e, items_w, gpn, gpus=gp)
    return make_placement("replicate_hot", table, e, gpn)
