"""Two calibrated profiles, op by op: the median (and range) over an op's shared table points of profile B's
time over profile A's, for the device time `s` and, where both have it, the host time `host_s`.

    .venv/bin/python benchmarks/profile_ratio.py A.yaml B.yaml

Tells whether two calibrations of one machine saw the same machine: a job whose host ran slow while it
calibrated shows every op slower, compute-bound and host-bound alike.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict

from moe.spec.loader import read_yaml


def points(path: str) -> dict[tuple, dict]:
    return {(p["op"], p["model"], p["tokens"], p.get("context", 0), p.get("per_node", 0)): p
            for p in read_yaml(path).get("op_table", [])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    args = parser.parse_args()
    a, b = points(args.a), points(args.b)
    ratios: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for key in a.keys() & b.keys():
        for field in ("s", "host_s"):
            if a[key].get(field) and b[key].get(field):
                ratios[key[0]][field].append(b[key][field] / a[key][field])
    print(f"{'op':<20} {'points':>6}  {'s: B/A median (range)':>24}  {'host_s: B/A median':>18}")
    for op in sorted(ratios):
        s, h = ratios[op]["s"], ratios[op]["host_s"]
        host = f"{statistics.median(h):.2f}" if h else "-"
        print(f"{op:<20} {len(s):>6}  {statistics.median(s):>8.2f} ({min(s):.2f}-{max(s):.2f})      {host:>18}")


if __name__ == "__main__":
    main()
