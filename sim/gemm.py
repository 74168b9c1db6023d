"""GEMM time from a hardware profile: the measured (M, K, N) table where it has data, a roofline elsewhere.

A GEMM C[M, N] = A[M, K] @ B[K, N] does 2*M*K*N flops. Its time is

    time_s = max(flops / (efficiency * peak_flops), bytes / hbm_Bps)

where `peak_flops` is the profile's dense rate for the dtype (`fp8_TFLOPS`, `bf16_TFLOPS`) and `bytes` the
operands and result (A and B at the dtype's width, C in BF16). The efficiency (achieved / peak) comes from
`cluster.gemm_table`, the measured points (../shared/data/hardware_facts.md: small-M GEMMs run far below
peak, 82 TFLOP/s at M=128 against 1979 peak):

- points with the same weight size K*N form a family; inside a family the *time* is interpolated linearly in M
  (a GEMM's time is close to affine in M: a fixed part for loading the weight and filling the machine,
  plus a part per row); below the smallest measured M the time stays at that point's time (weight
  loading and kernel latency dominate there); above the largest measured M the efficiency stays at the
  last value (time proportional to M). The family's efficiency at M is its flops over that time;
- across families the efficiency is interpolated linearly in log2(K*N) (the weight size), clamped to the
  nearest family outside the measured range;
- points of the other dtype are used relative to their own peak (the efficiency carries over).

With an empty table the efficiency is 1 (pure roofline) and the profile's `launch_overhead_us` is added,
since nothing measured includes it. Measured times already include the kernel's fixed cost, so nothing is
added to them. Everything here is vectorised over M (an array of token counts gives an array of times).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from moe.spec.schema import Cluster

TFLOPS = 1e12
GBPS = 1e9
OUT_BYTES = 2  # GEMM results are written in BF16 (hardware_facts.md: "_scaled_mm ... bf16 out")
DTYPE_BYTES = {"fp8": 1, "bf16": 2}


def peak_flops(cluster: Cluster, dtype: str) -> float:
    """Dense tensor rate of the dtype in flop/s."""
    return (cluster.fp8_TFLOPS if dtype == "fp8" else cluster.bf16_TFLOPS) * TFLOPS


@dataclass(frozen=True)
class _Family:
    log_weight: float
    k: int
    n: int
    peak: float
    m_P: tuple[float, ...]
    time_P: tuple[float, ...]


@lru_cache(maxsize=64)
def _families(cluster: Cluster) -> tuple[_Family, ...]:
    """The gemm table as efficiency curves per (K, N), sorted by weight size."""
    groups: dict[tuple[int, int], dict[int, list[float]]] = {}
    for p in cluster.gemm_table:
        eff = p.TFLOPS * TFLOPS / peak_flops(cluster, p.dtype)  # a point of the other dtype keeps its efficiency
        groups.setdefault(p.k * p.n, {}).setdefault(p.m, []).append(eff)
    fams = []
    peak = peak_flops(cluster, "fp8")
    for kn, by_m in groups.items():  # (K, N) and (N, K) have the same flops: one family per weight size
        ms = sorted(by_m)
        times = [2.0 * m * kn / (float(np.mean(by_m[m])) * peak) for m in ms]
        fams.append(_Family(float(np.log2(kn)), kn, 1, peak, tuple(float(m) for m in ms), tuple(times)))
    return tuple(sorted(fams, key=lambda f: f.log_weight))


def _family_efficiency(fam: _Family, m_M: np.ndarray) -> np.ndarray:
    m = np.maximum(m_M, 1e-9)
    t = np.interp(m, fam.m_P, fam.time_P)  # held below the smallest M
    above = m > fam.m_P[-1]
    t = np.where(above, fam.time_P[-1] * m / fam.m_P[-1], t)
    return 2.0 * m * fam.k * fam.n / (t * fam.peak)


def gemm_efficiency(cluster: Cluster, m, k: int, n: int) -> np.ndarray:
    """Achieved / peak rate for GEMMs of M rows (array) and a K x N weight; 1 with an empty table."""
    m_M = np.asarray(m, dtype=np.float64)
    fams = _families(cluster)
    if not fams:
        return np.ones_like(m_M)
    if len(fams) == 1:
        return _family_efficiency(fams[0], m_M)
    lw = float(np.log2(k * n))
    i = int(np.searchsorted([f.log_weight for f in fams], lw))
    lo, hi = fams[max(i - 1, 0)], fams[min(i, len(fams) - 1)]
    e_lo, e_hi = _family_efficiency(lo, m_M), _family_efficiency(hi, m_M)
    if hi.log_weight <= lo.log_weight or lw <= lo.log_weight:
        return e_lo
    if lw >= hi.log_weight:
        return e_hi
    frac = (lw - lo.log_weight) / (hi.log_weight - lo.log_weight)
    return e_lo + frac * (e_hi - e_lo)


def gemm_bytes(m, k: int, n: int, dtype: str) -> np.ndarray:
    """Bytes a GEMM moves through HBM: A (M x K) and B (K x N) at the dtype's width, C (M x N) in BF16."""
    m_M = np.asarray(m, dtype=np.float64)
    w = DTYPE_BYTES[dtype]
    return m_M * k * w + k * n * w + m_M * n * OUT_BYTES


def gemm_time_s(cluster: Cluster, m, k: int, n: int, dtype: str = "fp8") -> np.ndarray:
    """Seconds for GEMMs of M rows (scalar or array) times a K x N weight; 0 where M == 0.

    time_s = max(2*M*K*N / (efficiency * peak), bytes / hbm) (+ launch overhead when the table is empty).
    """
    m_M = np.asarray(m, dtype=np.float64)
    flops = 2.0 * m_M * k * n
    eff = gemm_efficiency(cluster, m_M, k, n)
    compute_s = flops / (np.maximum(eff, 1e-12) * peak_flops(cluster, dtype))
    memory_s = gemm_bytes(m_M, k, n, dtype) / (cluster.hbm_GBps * GBPS)
    t = np.maximum(compute_s, memory_s)
    if not cluster.gemm_table:
        t = t + cluster.launch_overhead_us * 1e-6
    return np.where(m_M > 0, t, 0.0)


def memory_time_s(cluster: Cluster, nbytes) -> np.ndarray:
    """A memory-bound kernel that reads and writes `nbytes` in total: nbytes / hbm_GBps + launch overhead
    (0 where nbytes == 0)."""
    b = np.asarray(nbytes, dtype=np.float64)
    return np.where(b > 0, b / (cluster.hbm_GBps * GBPS) + cluster.launch_overhead_us * 1e-6, 0.0)
