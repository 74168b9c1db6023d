"""Bytes per link straight from the token counts, without listing flows: the fast path for searches.

Shape letters: G GPUs, D nodes, R GPUs per node (= rails), V leaves per rail, L links.

Gives the same per-link bytes as summing moe.traffic.flows over their routes (tests check both agree):
- direct: pair[s, d] tokens go s -> d (NVLink inside a node, else nic_out[s], leaf links when the rails or
  leaves differ, nic_in[d]); combine sends the same counts back d -> s.
- hierarchical: NVLink for pairs inside a node; node[s, n] tokens over RDMA s -> (n, local(s)) (leaf links
  when the leaves differ); fwd[(n, l), d] tokens over NVLink; combine reverses every transfer.
"""

from __future__ import annotations

import numpy as np

from moe.topology import Topology


def _geometry(topo: Topology):
    g, r = topo.gpus, topo.gpus_per_node
    gpu = np.arange(g)
    node, rail, leaf = gpu // r, gpu % r, (gpu // r) // topo.gpus_per_leaf
    return g, r, node, rail, leaf


def _leaf_index(topo: Topology, rail, leaf):
    return rail * topo.leaves_per_rail + leaf


def _direct(topo: Topology, pair_GG: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(out-direction link bytes, reversed-direction link bytes) per token for s -> d transfers, as link
    arrays in units of tokens; the reverse array is the same traffic sent d -> s."""
    g, r, node, rail, leaf = _geometry(topo)
    n_leaf = topo.gpus_per_node * topo.leaves_per_rail
    p = pair_GG.astype(np.float64).copy()
    np.fill_diagonal(p, 0.0)
    p_DRDR = p.reshape(topo.nodes, r, topo.nodes, r)
    intra = np.zeros_like(p_DRDR)
    idx = np.arange(topo.nodes)
    intra[idx, :, idx, :] = p_DRDR[idx, :, idx, :]
    intra = intra.reshape(g, g)
    inter = p - intra
    spine = (rail[:, None] != rail[None, :]) | (leaf[:, None] != leaf[None, :])
    up_src = np.where(spine, inter, 0.0)
    fwd = np.zeros(topo.links)
    back = np.zeros(topo.links)
    li = _leaf_index(topo, rail, leaf)
    gpus = np.arange(g)
    # forward: the row (sender) s pays egress, the column d ingress; back: the other way round
    for vec, send_axis in ((fwd, 1), (back, 0)):
        recv_axis = 1 - send_axis
        vec[topo.nvlink_out(gpus)] += intra.sum(axis=send_axis)
        vec[topo.nvlink_in(gpus)] += intra.sum(axis=recv_axis)
        vec[topo.nic_out(gpus)] += inter.sum(axis=send_axis)
        vec[topo.nic_in(gpus)] += inter.sum(axis=recv_axis)
        vec[4 * g:4 * g + n_leaf] += np.bincount(li, weights=up_src.sum(axis=send_axis), minlength=n_leaf)
        vec[4 * g + n_leaf:] += np.bincount(li, weights=up_src.sum(axis=recv_axis), minlength=n_leaf)
    return fwd, back


def _rdma_and_forward(topo: Topology, pair_GG: np.ndarray, node_GD: np.ndarray):
    """Per-GPU pair matrices of the RDMA hop (s -> forwarder) and the forward hop (forwarder -> d)."""
    g, r, node, rail, _ = _geometry(topo)
    rdma = np.zeros((g, g))
    s, n = np.nonzero(node_GD)
    remote = n != node[s]
    rdma[s[remote], n[remote] * r + rail[s[remote]]] = node_GD[s[remote], n[remote]]
    p_DRDR = pair_GG.reshape(topo.nodes, r, topo.nodes, r).astype(np.float64)
    idx = np.arange(topo.nodes)
    fwd_RDR = p_DRDR.sum(axis=0) - np.transpose(p_DRDR[idx, :, idx, :], (1, 0, 2))
    fwd = np.zeros((topo.nodes, r, topo.nodes, r))
    fwd[idx, :, idx, :] = np.transpose(fwd_RDR, (1, 0, 2))  # [n, l_s, n, l_d]
    fwd = fwd.reshape(g, g)
    np.fill_diagonal(fwd, 0.0)
    intra = np.zeros((topo.nodes, r, topo.nodes, r))
    intra[idx, :, idx, :] = p_DRDR[idx, :, idx, :]
    intra = intra.reshape(g, g)
    np.fill_diagonal(intra, 0.0)
    return rdma, fwd + intra


def link_bytes_from_counts(topo: Topology, comm: str, pair_GG: np.ndarray, node_GD: np.ndarray | None,
                           dispatch_bytes_per_token: int, combine_bytes_per_token: int
                           ) -> tuple[np.ndarray, np.ndarray]:
    """(dispatch_L, combine_L) bytes per link."""
    if comm == "direct":
        out, back = _direct(topo, pair_GG)
        return out * dispatch_bytes_per_token, back * combine_bytes_per_token
    rdma, nvlink = _rdma_and_forward(topo, pair_GG, node_GD)
    out_r, back_r = _direct(topo, rdma)
    out_n, back_n = _direct(topo, nvlink)
    return (out_r + out_n) * dispatch_bytes_per_token, (back_r + back_n) * combine_bytes_per_token
