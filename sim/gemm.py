"""GEMM time from a hardware profile: the measured (M, K, N) table where it has data, a roofline elsewhere.

A GEMM C[M, N] = A[M, K] @ B[K, N] does 2*M*K*N flops. Its time is

    time_s = max(flops / (efficiency * peak_flops), bytes / hbm_Bps)

where `peak_flops` is the profile's dense rate for the dtype (`fp8_TFLOPS`, `bf16_TFLOPS`) and `bytes` the
operands and result (A and B at the dtype's width, C in BF16). The efficiency (achieved / peak) comes from
`cluster.gemm_table`, the measured points (../shared/data/hardware_facts.md: small-M GEMMs run far below
peak, 82 TFLOP/s at M=128 against 1979 peak):

- points of one dtype with the same weight size K*N form a family ((K, N) and (N, K) run the same flops
  over the same weight bytes); inside a family the *time* is interpolated linearly in M (a GEMM's time
  is close to affine in M: a fixed part for loading the weight and filling the machine, plus a part per
  row); below the smallest measured M the time stays at that point's time (weight loading and kernel
  latency dominate there); above the largest measured M the efficiency stays at the last value (time
  proportional to M). The family's efficiency at M is its flops over that time;
- a GEMM whose weight size has no family of its dtype takes the efficiency interpolated linearly in
  log2(K*N) between the two families of that dtype around it, clamped to the nearest family outside
  their range. Points of another dtype never enter: a BF16 point (an attention product, the router) says
  nothing about an FP8 expert, and vice versa.

A dtype without points is pure roofline (efficiency 1) and pays the profile's `launch_overhead_us`, since
nothing measured includes it. Measured times already include the kernel's fixed cost, so nothing is
added to them. Everything here is vectorised over M (an array of token counts gives an array of times).
The runtime's whole operations, when calibration measured them, come from `sim.optable` instead.
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
def _families(cluster: Cluster, dtype: str) -> tuple[_Family, ...]:
    """The gemm table's points of `dtype` as time curves per weight size K*N, sorted by weight size."""
    groups: dict[int, dict[int, list[float]]] = {}
    for p in cluster.gemm_table:
        if p.dtype == dtype:
            groups.setdefault(p.k * p.n, {}).setdefault(p.m, []).append(p.TFLOPS * TFLOPS)
    peak = peak_flops(cluster, dtype)
    fams = []
    for kn, by_m in groups.items():
        ms = sorted(by_m)
        times = [2.0 * m * kn / float(np.mean(by_m[m])) for m in ms]
        fams.append(_Family(float(np.log2(kn)), kn, 1, peak, tuple(float(m) for m in ms), tuple(times)))
    return tuple(sorted(fams, key=lambda f: f.log_weight))


def _family_efficiency(fam: _Family, m_M: np.ndarray) -> np.ndarray:
    m = np.maximum(m_M, 1e-9)
    t = np.interp(m, fam.m_P, fam.time_P)  # held below the smallest M
    above = m > fam.m_P[-1]
    t = np.where(above, fam.time_P[-1] * m / fam.m_P[-1], t)
    return 2.0 * m * fam.k * fam.n / (t * fam.peak)


def gemm_efficiency(cluster: Cluster, m, k: int, n: int, dtype: str = "fp8") -> np.ndarray:
    """Achieved / peak rate of `dtype` GEMMs of M rows (array) and a K x N weight; 1 without points of
    that dtype."""
    m_M = np.asarray(m, dtype=np.float64)
    fams = _families(cluster, dtype)
    if not fams:
        return np.ones_like(m_M)
    lw = float(np.log2(k * n))
    i = int(np.searchsorted([f.log_weight for f in fams], lw))
    lo, hi = fams[max(i - 1, 0)], fams[min(i, len(fams) - 1)]
    if hi.log_weight == lw:
        return _family_efficiency(hi, m_M)
    if hi.log_weight <= lo.log_weight or lw <= lo.log_weight:
        return _family_efficiency(lo, m_M)
    if lw >= hi.log_weight:
        return _family_efficiency(hi, m_M)
    frac = (lw - lo.log_weight) / (hi.log_weight - lo.log_weight)
    e_lo, e_hi = _family_efficiency(lo, m_M), _family_efficiency(hi, m_M)
    return e_lo + frac * (e_hi - e_lo)


def gemm_bytes(m, k: int, n: int, dtype: str) -> np.ndarray:
    """Bytes a GEMM moves through HBM: A (M x K) and B (K x N) at the dtype's width, C (M x N) in BF16."""
    m_M = np.asarray(m, dtype=np.float64)
    w = DTYPE_BYTES[dtype]
    return m_M * k * w + k * n * w + m_M * n * OUT_BYTES


def gemm_time_s(cluster: Cluster, m, k: int, n: int, dtype: str = "fp8") -> np.ndarray:
    """Seconds for GEMMs of M rows (scalar or array) times a K x N weight; 0 where M == 0.

    time_s = max(2*M*K*N / (efficiency * peak), bytes / hbm) (+ launch overhead without points of the dtype).
    """
    m_M = np.asarray(m, dtype=np.float64)
    flops = 2.0 * m_M * k * n
    eff = gemm_efficiency(cluster, m_M, k, n, dtype)
    compute_s = flops / (np.maximum(eff, 1e-12) * peak_flops(cluster, dtype))
    memory_s = gemm_bytes(m_M, k, n, dtype) / (cluster.hbm_GBps * GBPS)
    t = np.maximum(compute_s, memory_s)
    if not _families(cluster, dtype):
        t = t + cluster.launch_overhead_us * 1e-6
    return np.where(m_M > 0, t, 0.0)


def memory_time_s(cluster: Cluster, nbytes) -> np.ndarray:
    """A memory-bound kernel that reads and writes `nbytes` in total: nbytes / hbm_GBps + launch overhead
    (0 where nbytes == 0)."""
    b = np.asarray(nbytes, dtype=np.float64)
    return np.where(b > 0, b / (cluster.hbm_GBps * GBPS) + cluster.launch_overhead_us * 1e-6, 0.0)
