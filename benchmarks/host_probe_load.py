"""`moe.hostprobe` on a host whose cores are shared: the probe (the mean of back-to-back runs over its window)
against the median of single runs, with 0..N processes spinning beside it.

    .venv/bin/python benchmarks/host_probe_load.py [--spinners 0 1 2 3]

A single run (about 1.4 ms on the quiet 2-core CI box) fits in a scheduler's time slice, so the median of single
runs hardly sees a core it shares; the probe's 100 ms window counts the slices it lost, as a long operation
does. Each line: the median of 3 probes and of 3 medians-of-7, in ms.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from moe.hostprobe import host_probe_s, reference


def median_of_single_runs_s(runs: int = 7) -> float:
    reference()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        reference()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spinners", type=int, nargs="+", default=[0, 1, 2, 3])
    args = parser.parse_args()
    print("spinning processes  probe ms  median of single runs ms")
    for n in args.spinners:
        spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
        try:
            time.sleep(0.3)
            probe = statistics.median(host_probe_s() for _ in range(3))
            single = statistics.median(median_of_single_runs_s() for _ in range(3))
        finally:
            for p in spinners:
                p.kill()
                p.wait()
        print(f"{n:>18}  {probe * 1e3:>8.3f}  {single * 1e3:>24.3f}", flush=True)


if __name__ == "__main__":
    main()
