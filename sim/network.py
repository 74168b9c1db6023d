"""One communication phase (dispatch or combine of one micro-batch) on the network: when each GPU is done.

Shape letters: G GPUs, F flows, L links (the topology's, then one copy engine per GPU), X flow-link entries,
C arrival chunks per GPU, S solution segments.

Input: the phase's flows from moe.traffic (src, dst, tokens, bytes, hop, route as CSR, path latency).
Every GPU's part of a phase starts at the same instant (DeepEP's normal kernels and NCCL's all-to-all are
collectives: a notify/barrier step precedes the copies; `sync_s` charges it), so a phase is solved once,
relative to its start, and reused by every layer and micro-batch that carries the same traffic.

Copy engines (`cluster.comm_copy_GBps` > 0). The communication kernels move data with a few SMs, so each
GPU gets one more link of that capacity, crossed by every copy its SMs make: the sender's copy into the
transfer (an NVLink store, or the RDMA send buffer), the forwarder's copy from the RDMA buffer to NVLink,
the receiver's copy out of its buffer (or, in combine, its reduction). Local copies cross it too: the
own node's (token, node) copy into the RDMA buffer and the tokens a GPU keeps for itself (copied in and
out, as DeepEP's receive buffer holds them). Rules per flow, both phases mirrored: same-node flows cross
copy[src] and copy[dst]; a cross-node flow crosses copy at the end that holds the token's home GPU (the
sender in dispatch, the receiver in combine) under hierarchical paths, both ends under direct ones. With a
single node, hierarchical paths are direct ones (DeepEP uses its intranode kernels).

Models (`sim.network`):
- analytic: flow f arrives at max over its links of (link bytes / capacity) + its path latency;
- flow: max-min fair sharing over time (sim.maxmin.simulate_flows), arrival = last byte + path latency.
Both: every message (flow between two GPUs) pays `message_overhead_us` once on top of its path latency.
Measured transports (`cluster.p2p_curve`, `cluster.alltoall_curve`, from calibration): a flow between two
GPUs of one node moves at the bandwidth the curve measured at its size, not at the link's peak: in the
solver it weighs bytes x nvlink_GBps / curve(size), so a small shard costs what small messages cost.
The point-to-point curve is read at the message (flow) size, the all-to-all curve (bus bandwidth versus
bytes per rank) at the sender's bytes of the phase. Between points the bandwidth is interpolated in
log2(bytes); below the smallest point the time stays at that point's (bandwidth in proportion to the
size: latency-bound), above the largest the bandwidth stays at the last point's.
Posting is not serialised per sender: GPU-initiated transfers post from many warps at once, and DeepEP's
low-latency dispatch grows by ~20 us from 64 to 256 peers (docs/legacy.md), which a serial 2 us per peer
would turn into ~400 us. Forwarding is pipelined, so a hop-1 flow from f arrives no earlier than the hop-0
flows into f plus its own latency.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moe.spec.schema import Cluster, CurvePoint
from moe.topology import Topology
from moe.traffic import Flows
from sim.maxmin import simulate_flows

FLOW_BATCH_RTOL = 0.05
"""Finishes within 5% of the elapsed phase time are one solver step (sim.maxmin docstring)."""
FLOW_RATE_RTOL = 0.01
"""Links within 1% of the bottleneck level saturate in the same progressive-filling round. With both
tolerances, per-GPU completion of the `paper` EP256 dispatch (uniform routing) is within 0.7% of the exact
solution (4164 max-min computations exact, 5 here); tests/test_sim_network.py checks a skewed 4 x 8 case
against the exact solve (within 1.5%)."""
SIZE_WEIGHTED = True
"""Flows share links in proportion to their sizes (weighted max-min, weight = bytes of the flow): a kernel
walks its tokens in order (its channels split the tokens, not the destinations) and sends each token to
all of its destinations, so a sender's flows progress in step rather than at equal rates, and so do the
receive-side copies that follow them. Plain max-min would let a sender's many small NVLink copies
starve its one RDMA copy at the copy engine, which the kernels do not do."""
CHUNKS = 4
"""Arrival chunks per GPU: the receiver starts work on each quarter of its tokens as it arrives."""


def curve_GBps(curve: tuple[CurvePoint, ...], nbytes) -> np.ndarray:
    """Bandwidth of a measured curve at `nbytes` (module docstring); GB/s."""
    b_P = np.array([p.bytes for p in curve], dtype=np.float64)
    bw_P = np.array([p.GBps for p in curve], dtype=np.float64)
    order = np.argsort(b_P)
    b_P, bw_P = b_P[order], bw_P[order]
    x = np.maximum(np.asarray(nbytes, dtype=np.float64), 1.0)
    bw = np.interp(np.log2(x), np.log2(b_P), bw_P)
    return np.where(x < b_P[0], bw_P[0] * x / b_P[0], bw)


def curve_weight_F(cluster: Cluster, curve: str, same_F: np.ndarray, src_F: np.ndarray, bytes_F: np.ndarray,
                   gpus: int) -> np.ndarray:
    """Solver bytes per byte of each flow: nvlink_GBps / curve bandwidth for remote flows inside a node
    (1 elsewhere, and without the curve). `curve`: "p2p" or "alltoall" (falls back to the other one)."""
    points = {"p2p": cluster.p2p_curve, "alltoall": cluster.alltoall_curve}
    use = curve if points.get(curve) else ("alltoall" if curve == "p2p" else "p2p")
    if not points.get(use) or not same_F.any():
        return np.ones(len(bytes_F))
    size_F = bytes_F if use == "p2p" else np.bincount(src_F, weights=bytes_F, minlength=gpus)[src_F]
    weight = cluster.nvlink_GBps / np.maximum(curve_GBps(points[use], size_F), 1e-12)
    return np.where(same_F, weight, 1.0)


@dataclass(frozen=True)
class PhaseInput:
    """A phase's flows plus its local copies, as the solver sees them."""

    src_F: np.ndarray
    dst_F: np.ndarray
    tokens_F: np.ndarray
    bytes_F: np.ndarray
    hop_F: np.ndarray
    """0, 1, or -1 for a local copy (src == dst)."""
    final_F: np.ndarray
    """True where the flow delivers tokens to their last GPU of the phase (arrivals that unblock work)."""
    indptr_F1: np.ndarray
    links_X: np.ndarray
    latency_F: np.ndarray
    capacity_L: np.ndarray
    physical_links: int
    """Links [0, physical_links) are the topology's; the rest are copy engines."""
    link_bytes_L: np.ndarray
    """Bytes each physical link carries in the phase (from the routes, before pruning)."""


@dataclass(frozen=True)
class PhaseTiming:
    """A solved phase, offsets in seconds from the phase's start (after `sync_s`)."""

    sync_s: float
    """Launch and notify/barrier before the first byte moves."""
    done_G: np.ndarray
    """When each GPU has sent and received everything (its communication engine is free)."""
    arrive_GC: np.ndarray
    """When each chunk of a GPU's arriving tokens is there (non-decreasing along C)."""
    share_GC: np.ndarray
    """Fraction of the GPU's arriving tokens in each chunk (rows sum to 1, or 0 with no arrivals)."""
    link_bytes_L: np.ndarray
    """Bytes each physical link carries in the phase."""
    seg_t_S1: np.ndarray
    """Link-rate timeline of the solution: segment boundaries (offsets)."""
    seg_bytes_SL: np.ndarray
    """Bytes per physical link per segment."""
    rounds: int

    @property
    def duration_s(self) -> float:
        return float(self.done_G.max(initial=0.0))


def _local_copies(traffic, topo: Topology, direct: bool, kind: str, engines: bool):
    """Local (src == dst) transfers as (gpu, tokens, copies, hop, final) arrays.

    - kept tokens (a GPU computes for its own tokens): copied into and out of the receive buffer (2
      copies), there at once (hop -1), delivered (final);
    - hierarchical, forwarder to itself (tokens of other nodes' sources on its rail that it computes for):
      2 copies; dispatch: they arrive with the RDMA flows into the GPU (hop 1, final); combine: the
      forwarder's own partial sums feed its RDMA returns (hop 0, not final);
    - hierarchical, the own node's (token, node) copy into the RDMA buffer (1 copy, only with copy
      engines: it moves no bytes on links); dispatch: feeds forwarding (hop -1, not final); combine: the
      node-reduced results of the GPU's own tokens from its own node (hop 1, final).
    """
    g = np.arange(topo.gpus)
    pair = traffic.pair_tokens_GG
    keep = np.diagonal(pair).astype(np.float64)
    parts = [(g, keep, 2, -1, True)]
    if not direct:
        r, d = topo.gpus_per_node, topo.nodes
        pair_DRDR = pair.reshape(d, r, d, r)
        to_self = np.einsum("arbr->br", pair_DRDR).astype(np.float64).ravel()  # rail's sources, all nodes
        own = np.einsum("brbr->br", pair_DRDR).astype(np.float64).ravel()
        parts.append((g, to_self - own, 2, 1 if kind == "dispatch" else 0, kind == "dispatch"))
        if engines:
            own_node = traffic.node_tokens_GD[g, topo.node_of(g)].astype(np.float64)
            parts.append((g, own_node, 1, -1 if kind == "dispatch" else 1, kind != "dispatch"))
    gpu = np.concatenate([p[0] for p in parts])
    tokens = np.concatenate([p[1] for p in parts])
    copies = np.concatenate([np.full(topo.gpus, p[2]) for p in parts])
    hop = np.concatenate([np.full(topo.gpus, p[3], dtype=np.int8) for p in parts])
    final = np.concatenate([np.full(topo.gpus, p[4]) for p in parts])
    nz = tokens > 0
    return gpu[nz], tokens[nz], copies[nz], hop[nz], final[nz]


def prune_unbinding(indptr_F1: np.ndarray, links_X: np.ndarray, capacity_L: np.ndarray):
    """Routes without the links that can never be a bottleneck (fewer entries for the solver).

    A link that is no route's first or last link, and whose routes start (or end) on links of total
    capacity <= its own, carries at most its capacity whatever the rates, since those first (last) links
    stay in the routes: e.g. the leaf uplink (downlink) of a non-oversubscribed fabric, fed by (feeding)
    the NICs under the leaf. Routes are in path order: first and last entries are the sender's and the
    receiver's links."""
    lengths = np.diff(indptr_F1)
    has = lengths > 0
    flow_X = np.repeat(np.arange(len(lengths)), lengths)
    first_F = np.full(len(lengths), -1)
    last_F = np.full(len(lengths), -1)
    first_F[has] = links_X[indptr_F1[:-1][has]]
    last_F[has] = links_X[indptr_F1[1:][has] - 1]
    links = len(capacity_L)
    is_end = np.zeros(links, dtype=bool)  # first and last links bound the others and are never dropped
    is_end[first_F[has]] = True
    is_end[last_F[has]] = True
    inner_X = ~is_end[links_X]  # entries on candidate links
    if not inner_X.any():
        return indptr_F1, links_X
    drop_L = np.zeros(links, dtype=bool)
    for end_F in (first_F, last_F):
        pairs = np.unique(links_X[inner_X].astype(np.int64) * links + end_F[flow_X[inner_X]])
        on, end = pairs // links, pairs % links
        bound_L = np.bincount(on, weights=capacity_L[end], minlength=links)
        drop_L |= (bound_L <= capacity_L * (1 + 1e-9)) & (bound_L > 0)
    keep_X = ~drop_L[links_X]
    new_indptr = np.zeros_like(indptr_F1)
    np.cumsum(np.bincount(flow_X[keep_X], minlength=len(lengths)), out=new_indptr[1:])
    return new_indptr, links_X[keep_X]


def phase_input(flows: Flows, traffic, topo: Topology, cluster: Cluster, kind: str, bytes_per_token: float,
                scale: float = 1.0, curve: str = "") -> PhaseInput:
    """Flows of a phase (kind "dispatch" or "combine"), bytes scaled by `scale` (a micro-batch's share),
    plus local copies, with copy-engine entries when the profile models copy engines. `curve` ("p2p",
    "alltoall" or ""): the measured curve that sets the rate of flows inside a node (`curve_weight_F`).

    Final (delivering) flows: direct: all; hierarchical dispatch: same-node hop 0 and hop 1; combine:
    hop 1 and same-node hop 0 (a node-mate's results for its home GPU share endpoints with partials
    bound for a forwarder, so both count as arrivals; this only weights the arrival chunks)."""
    direct = traffic.comm == "direct" or topo.nodes == 1
    g, engines = topo.gpus, cluster.comm_copy_GBps > 0
    src, dst, hop = flows.src_F, flows.dst_F, flows.hop_F.astype(np.int8)
    same = topo.node_of(src) == topo.node_of(dst)
    final = np.ones(flows.count, dtype=bool) if direct else (hop == 1) | ((hop == 0) & same)
    capacity = topo.link_capacity_Bps
    indptr, links = prune_unbinding(flows.link_indptr_F1, flows.link_ids_X, capacity)
    lgpu, ltok, lcopies, lhop, lfinal = _local_copies(traffic, topo, direct, kind, engines)
    if engines:
        capacity = np.concatenate([capacity, np.full(g, cluster.comm_copy_GBps * 1e9)])
        engine = topo.links
        home_is_src = kind == "dispatch"
        at_src = same | direct | home_is_src
        at_dst = same | direct | (not home_is_src)
        extra_F = at_src.astype(np.int64) + at_dst.astype(np.int64)
        extra = np.stack([np.where(at_src, engine + src, -1), np.where(at_dst, engine + dst, -1)], axis=1)
        flow_X = np.concatenate([np.repeat(np.arange(len(src)), np.diff(indptr)), np.repeat(np.arange(len(src)), 2)])
        link_X = np.concatenate([links, extra.ravel()])
        kept = link_X >= 0
        links = link_X[kept][np.argsort(flow_X[kept], kind="stable")]
        lengths = np.diff(indptr) + extra_F
        indptr = np.zeros(len(src) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        local_links = np.repeat(engine + lgpu, lcopies)
    else:
        lcopies = np.zeros(len(lgpu), dtype=np.int64)
        local_links = np.zeros(0, dtype=np.int64)
    links = np.concatenate([links, local_links])
    indptr = np.concatenate([indptr, indptr[-1] + np.cumsum(lcopies)])
    n_local = len(lgpu)
    all_src = np.concatenate([src, lgpu])
    bytes_F = np.concatenate([flows.bytes_F.astype(np.float64), ltok * bytes_per_token]) * scale
    if curve:
        inside_F = np.concatenate([same & (src != dst), np.zeros(n_local, bool)])
        bytes_F = bytes_F * curve_weight_F(cluster, curve, inside_F, all_src, bytes_F, g)
    return PhaseInput(
        src_F=all_src, dst_F=np.concatenate([dst, lgpu]),
        tokens_F=np.concatenate([flows.tokens_F.astype(np.float64), ltok]) * scale,
        bytes_F=bytes_F,
        hop_F=np.concatenate([hop, lhop]), final_F=np.concatenate([final, lfinal]), indptr_F1=indptr,
        links_X=links, latency_F=np.concatenate([flows.latency_s_F, np.zeros(n_local)]), capacity_L=capacity,
        physical_links=topo.links, link_bytes_L=flows.link_bytes_L * scale)


def _chunks(dst_F, arrive_F, tokens_F, gpus: int, chunks: int):
    """Per GPU, C chunks of equal token share: chunk c is ready when the flows carrying its tokens
    (in arrival order) have all arrived."""
    arrive_GC = np.zeros((gpus, chunks))
    share_GC = np.zeros((gpus, chunks))
    if not len(dst_F):
        return arrive_GC, share_GC
    order = np.lexsort((arrive_F, dst_F))
    d, a, t = dst_F[order], arrive_F[order], tokens_F[order]
    total_G = np.bincount(d, weights=t, minlength=gpus)
    first = np.r_[0, np.flatnonzero(d[1:] != d[:-1]) + 1]
    csum = np.cumsum(t)
    before = np.repeat(csum[first] - t[first], np.diff(np.r_[first, len(d)]))
    frac = (csum - before) / np.maximum(total_G[d], 1e-300)  # cumulative share after each flow
    for c in range(chunks):
        # chunk c is complete at the first flow whose cumulative share reaches (c + 1) / C
        reached = frac >= (c + 1) / chunks - 1e-12
        t_ready = np.full(gpus, np.inf)
        np.minimum.at(t_ready, d[reached], a[reached])
        arrive_GC[:, c] = t_ready
    has = total_G > 0
    arrive_GC[~has] = 0.0
    arrive_GC = np.maximum.accumulate(arrive_GC, axis=1)
    share_GC[has] = 1.0 / chunks
    return arrive_GC, share_GC


def solve_phase(p: PhaseInput, cluster: Cluster, model: str, gpus: int, record_links: bool = True,
                chunk_local: bool = True) -> PhaseTiming:
    """Arrival and completion offsets of every GPU in a phase (module docstring for the two models).
    `chunk_local` False: the arrival chunks cover only tokens from other GPUs (a runtime that computes a
    GPU's own tokens as soon as it has them)."""
    physical = p.physical_links
    if model == "analytic":
        load_L = np.bincount(p.links_X, weights=np.repeat(p.bytes_F, np.diff(p.indptr_F1)),
                             minlength=len(p.capacity_L))
        busy_L = load_L / p.capacity_L
        per_entry = busy_L[p.links_X]
        nonempty = np.diff(p.indptr_F1) > 0
        last_F = np.zeros(len(p.bytes_F))
        if nonempty.any():
            last_F[nonempty] = np.maximum.reduceat(per_entry, p.indptr_F1[:-1][nonempty])
        end = float(busy_L[:physical].max(initial=0.0))
        seg_t = np.array([0.0, end])
        seg_bytes = load_L[None, :physical]
        rounds = 1
    else:
        sol = simulate_flows(p.capacity_L, p.indptr_F1, p.links_X, p.bytes_F, batch_rtol=FLOW_BATCH_RTOL,
                             rate_rtol=FLOW_RATE_RTOL, record_segments=record_links,
                             weight_F=p.bytes_F if SIZE_WEIGHTED else None)
        last_F = sol.finish_F
        seg_t = sol.t_S1
        seg_bytes = sol.link_bytes_SL[:, :physical] if record_links else np.zeros((0, physical))
        rounds = sol.rounds
    remote = p.src_F != p.dst_F
    arrive_F = last_F + p.latency_F + np.where(remote, cluster.message_overhead_us * 1e-6, 0.0)
    hop1 = np.flatnonzero(p.hop_F == 1)
    if len(hop1):  # pipelined forwarding: no earlier than what feeds the forwarder
        feed_G = np.zeros(gpus)
        hop0 = np.flatnonzero(p.hop_F == 0)
        np.maximum.at(feed_G, p.dst_F[hop0], arrive_F[hop0])
        arrive_F[hop1] = np.maximum(arrive_F[hop1], feed_G[p.src_F[hop1]] + p.latency_F[hop1])
    done_G = np.zeros(gpus)
    np.maximum.at(done_G, p.src_F, arrive_F)
    np.maximum.at(done_G, p.dst_F, arrive_F)
    fin = np.flatnonzero(p.final_F & (chunk_local | (p.src_F != p.dst_F)))
    arrive_GC, share_GC = _chunks(p.dst_F[fin], arrive_F[fin], p.tokens_F[fin], gpus, CHUNKS)
    max_latency = float(p.latency_F.max(initial=0.0))
    sync_s = cluster.launch_overhead_us * 1e-6 + 2 * max_latency
    return PhaseTiming(sync_s=sync_s, done_G=done_G, arrive_GC=arrive_GC, share_GC=share_GC,
                       link_bytes_L=p.link_bytes_L, seg_t_S1=seg_t, seg_bytes_SL=seg_bytes, rounds=rounds)
