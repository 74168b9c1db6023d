"""Flows of dispatch and combine from the token counts of a batch, for both communication kinds.

Shape letters: G GPUs, D nodes, R GPUs per node (local indices), F flows, X link ids of all flows (CSR).

A flow is one aggregated point-to-point transfer (src GPU -> dst GPU) in one hop of a phase:
- direct: dispatch sends pair_tokens[s, d] tokens from s to every d != s (NVLink inside a node, NICs and
  fabric across nodes), all in hop 0; combine sends the same counts back, d -> s, in hop 0.
- hierarchical (DeepEP normal kernels): dispatch hop 0 sends node_tokens[s, n] tokens over RDMA from s to
  its forwarder on node n (the GPU with s's local index), and pair_tokens[s, d] over NVLink to every other
  d of s's own node; hop 1 copies, over NVLink, from each forwarder f to each other GPU d of its node, the
  tokens of all sources on f's rail in other nodes that d computes for:
      fwd[f, d] = sum over sources s with local(s) = local(f), node(s) != node(f) of pair_tokens[s, d].
  Combine reverses it: hop 0 sends partial results d -> f over NVLink (and d -> s inside a node), the
  forwarder sums the partials of each (token, node) and hop 1 sends node_tokens[s, n] results f -> s.
Bytes are tokens x bytes per token of the phase's dtype (moe.spec.sizes).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from moe.topology import Topology


@dataclass(frozen=True, eq=False)
class Flows:
    """Flows of one phase as parallel arrays; links of flow f: link_ids_X[link_indptr_F1[f]:...[f+1]]."""

    src_F: np.ndarray
    dst_F: np.ndarray
    tokens_F: np.ndarray
    bytes_F: np.ndarray
    hop_F: np.ndarray
    """0 for the first transfer of a token, 1 for the forwarding hop of hierarchical paths."""
    link_indptr_F1: np.ndarray
    link_ids_X: np.ndarray
    latency_s_F: np.ndarray
    """Sum of link latencies along the flow's route."""
    link_bytes_L: np.ndarray
    """Bytes each link carries in this phase."""

    @property
    def count(self) -> int:
        return len(self.src_F)

    @cached_property
    def links_per_flow_F(self) -> np.ndarray:
        return np.diff(self.link_indptr_F1)


def _direct_parts(pair_GG):
    s, d = np.nonzero(pair_GG)
    off = s != d
    return [(s[off], d[off], pair_GG[s[off], d[off]])]


def _hierarchical_parts(topo: Topology, pair_GG, node_GD):
    """(intra, rdma, forward) parts of dispatch as (src, dst, tokens) arrays."""
    r, n_nodes = topo.gpus_per_node, topo.nodes
    pair_DRDR = pair_GG.reshape(n_nodes, r, n_nodes, r)
    # intra-node, s != d
    diag_DRR = pair_DRDR[np.arange(n_nodes), :, np.arange(n_nodes), :]
    nn, ls, ld = np.nonzero(diag_DRR)
    off = ls != ld
    intra = (nn[off] * r + ls[off], nn[off] * r + ld[off], diag_DRR[nn[off], ls[off], ld[off]])
    # RDMA: s -> (n, local(s)) for remote n
    s, n = np.nonzero(node_GD)
    remote = n != topo.node_of(s)
    s, n = s[remote], n[remote]
    rdma = (s, n * r + s % r, node_GD[s, n])
    # forward: f = (n, l_s) -> d = (n, l_d), l_s != l_d
    all_RDR = pair_DRDR.sum(axis=0)  # [l_s, n_d, l_d] over every source node
    own_RDR = np.transpose(diag_DRR, (1, 0, 2))  # [l_s, n, l_d] from the node itself
    fwd_RDR = all_RDR - own_RDR
    ls, nd, ld = np.nonzero(fwd_RDR)
    off = ls != ld
    forward = (nd[off] * r + ls[off], nd[off] * r + ld[off], fwd_RDR[ls[off], nd[off], ld[off]])
    return intra, rdma, forward


def _flows(topo: Topology, parts, hops, bytes_per_token: int) -> Flows:
    src = np.concatenate([p[0] for p in parts]).astype(np.int64)
    dst = np.concatenate([p[1] for p in parts]).astype(np.int64)
    tokens = np.concatenate([p[2] for p in parts]).astype(np.int64)
    hop = np.concatenate([np.full(len(p[0]), h, dtype=np.int8) for p, h in zip(parts, hops, strict=True)])
    indptr, links = topo.route(src, dst)
    nbytes = tokens * bytes_per_token
    per_link = np.repeat(nbytes.astype(np.float64), np.diff(indptr))
    link_bytes = np.bincount(links, weights=per_link, minlength=topo.links)
    # every flow has src != dst, so every route has 2 or 4 links: sum the link latencies by position
    lat_X = topo.link_latency_s[links]
    latency = lat_X[indptr[:-1]] + lat_X[indptr[1:] - 1]
    four = np.flatnonzero(np.diff(indptr) == 4)
    latency[four] += lat_X[indptr[four] + 1] + lat_X[indptr[four] + 2]
    return Flows(src_F=src, dst_F=dst, tokens_F=tokens, bytes_F=nbytes, hop_F=hop, link_indptr_F1=indptr,
                 link_ids_X=links, latency_s_F=latency, link_bytes_L=link_bytes)


def build_flows(topo: Topology, comm: str, pair_GG, node_GD, dispatch_bytes_per_token: int,
                combine_bytes_per_token: int) -> tuple[Flows, Flows]:
    """(dispatch, combine) flows of one batch (module docstring)."""
    if comm == "direct":
        (s, d, t), = _direct_parts(pair_GG)
        return (_flows(topo, [(s, d, t)], [0], dispatch_bytes_per_token),
                _flows(topo, [(d, s, t)], [0], combine_bytes_per_token))
    intra, rdma, forward = _hierarchical_parts(topo, pair_GG, node_GD)
    dispatch = _flows(topo, [intra, rdma, forward], [0, 0, 1], dispatch_bytes_per_token)

    def rev(p):
        return (p[1], p[0], p[2])

    combine = _flows(topo, [rev(intra), rev(forward), rev(rdma)], [0, 0, 1], combine_bytes_per_token)
    return dispatch, combine
