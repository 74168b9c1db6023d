"""Simulated DeepEP normal kernels against the published table (../shared/data/deepep_normal_h800.csv).

    .venv/bin/python benchmarks/deepep_normal.py             # table: simulated vs published, error
    .venv/bin/python benchmarks/deepep_normal.py --fit       # the comm_copy_GBps that fits the EP8 row

The h800-ib profile's `comm_copy_GBps` is fitted here, on the intranode EP8 row only (one link type plus
the copy engines: the only row that isolates the copy rate): the value at which the mean signed error of
that row's dispatch and combine is zero. The internode rows (EP16-64) are predictions.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sim.backend import run  # noqa: E402
from sim.deepep import PUBLISHED, bottleneck_GBps, deepep_scenario  # noqa: E402


def simulate(ep: int, copy_GBps: float | None = None) -> tuple[float, float]:
    s = deepep_scenario(ep)
    if copy_GBps is not None:
        s = s.model_copy(update={"cluster": s.cluster.model_copy(update={"comm_copy_GBps": copy_GBps})})
    return bottleneck_GBps(s, run(s).result)


def mean_error_ep8(copy_GBps: float) -> float:
    d, c = simulate(8, copy_GBps)
    pd, pc = PUBLISHED[8]
    return (d / pd + c / pc) / 2 - 1


def fit_copy_rate(lo: float = 200.0, hi: float = 500.0, iters: int = 20) -> float:
    """Bisection: the error grows with the copy rate."""
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean_error_ep8(mid) < 0 else (lo, mid)
    return (lo + hi) / 2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", action="store_true", help="fit comm_copy_GBps on the EP8 row")
    args = ap.parse_args()
    if args.fit:
        print(f"comm_copy_GBps fitted on EP8: {fit_copy_rate():.1f}")
        return 0
    print(f"{'EP':>4} {'dispatch GB/s':>14} {'published':>10} {'error':>7} {'combine GB/s':>13} {'published':>10} "
          f"{'error':>7} {'wall s':>7}")
    for ep, (pd, pc) in PUBLISHED.items():
        t0 = time.perf_counter()
        d, c = simulate(ep)
        print(f"{ep:>4} {d:>14.1f} {pd:>10.0f} {100 * (d / pd - 1):>+6.1f}% {c:>13.1f} {pc:>10.0f} "
              f"{100 * (c / pc - 1):>+6.1f}% {time.perf_counter() - t0:>7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
