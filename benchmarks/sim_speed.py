"""Simulator speed: the `paper` model, 61 layers, prefill 4096 tokens/GPU, 2 micro-batches, `flow` network.

    .venv/bin/python benchmarks/sim_speed.py                 # EP 256 and 1024, targets checked
    .venv/bin/python benchmarks/sim_speed.py --eps 256,512   # other sizes

Each size runs in its own fresh process (one process, one core's worth of Python), which reports:
  run_s      wall seconds of sim.backend.run (routing, traffic, phases, SimPy step, Result, trace)
  cpu_s      CPU seconds of the same call
  process_s  wall seconds of the whole process (interpreter start, imports, scenario, run, a second run
             for the determinism check excluded)
  peak_MB    peak resident memory of the process
and whether a second run of the same scenario gives the identical Result (wall_s aside).
Targets (issue 4): EP 256 <= 5 s, EP 1024 <= 30 s, <= 4 GB, wall(1024) / wall(256) <= 5.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
t_start = time.perf_counter()
sys.path.insert(0, {root!r})
from moe.spec.loader import build_scenario
from sim.backend import run
s = build_scenario({{"name": "sim-speed", "model": {{"preset": "paper"}},
                    "cluster": {{"preset": "h800-ib", "nodes": {nodes}, "gpus_per_node": 8}},
                    "workload": {{"phase": "prefill", "tokens_per_gpu": 4096}},
                    "schedule": {{"micro_batches": 2}}, "sim": {{"network": "flow"}}}})
t0, c0 = time.perf_counter(), time.process_time()
out = run(s)
run_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
process_s = time.perf_counter() - t_start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
first = out.result.to_dict(); first.pop("wall_s")
again = run(s).result.to_dict(); again.pop("wall_s")
r = out.result
print(json.dumps({{"gpus": s.cluster.gpus, "run_s": run_s, "cpu_s": cpu_s, "process_s": process_s,
                   "peak_bytes": peak, "deterministic": first == again, "step_time_s": r.step_time_s,
                   "tokens_per_s": r.tokens_per_s, "moe_layer_s": r.moe_layer_s, "max_link": r.max_link,
                   "spans": r.extra["spans"]}}))
"""


def measure(nodes: int) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), nodes=nodes)], capture_output=True,
                         text=True, check=True)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    data["spawn_s"] = time.perf_counter() - t0  # includes the determinism rerun
    return data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eps", default="256,1024", help="EP sizes (multiples of 8)")
    args = ap.parse_args()
    eps = [int(x) for x in args.eps.split(",")]
    rows = {}
    print(f"{'EP':>5} {'run_s':>7} {'cpu_s':>7} {'process_s':>10} {'peak_MB':>8} {'same':>5} {'step_ms':>9} "
          f"{'tokens/s':>12}  bottleneck")
    for ep in eps:
        d = rows[ep] = measure(ep // 8)
        print(f"{ep:>5} {d['run_s']:>7.2f} {d['cpu_s']:>7.2f} {d['process_s']:>10.2f} {d['peak_bytes'] / 1e6:>8.0f} "
              f"{'yes' if d['deterministic'] else 'NO':>5} {d['step_time_s'] * 1e3:>9.2f} {d['tokens_per_s']:>12,.0f}"
              f"  {d['max_link']}")
    ok = all(d["deterministic"] and d["peak_bytes"] <= 4e9 for d in rows.values())
    if 256 in rows:
        ok &= rows[256]["run_s"] <= 5
    if 1024 in rows:
        ok &= rows[1024]["run_s"] <= 30
    if 256 in rows and 1024 in rows:
        for key in ("run_s", "cpu_s", "process_s"):
            ratio = rows[1024][key] / rows[256][key]
            print(f"{key} ratio EP1024 / EP256: {ratio:.2f}")
        ok &= rows[1024]["process_s"] / rows[256]["process_s"] <= 5
    print("targets met" if ok else "targets NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
