"""Benchmark: routing + placement + traffic of one MoE layer at EP = 1024 on one CPU core.

    .venv/bin/python benchmarks/routing_traffic.py [--comm hierarchical|direct] [--strategy one_per_gpu]
        [--distribution zipf] [--repeats 3] [--check]

Scenario: the `paper` model (256 experts, top-8, hidden 7168, FP8 dispatch, BF16 combine) on 128 nodes x
8 GPUs of the h800-ib profile, 4096 tokens per GPU (4.2 M tokens, 33.6 M (token, expert) requests).
One round = expert_ids for every GPU's tokens + expected_load + place + compute_traffic (flows, routes
and link bytes of dispatch and combine). The first round pays for fresh memory pages; the figure is the
median of the following rounds (wall clock, and the process's CPU time, which a busy machine inflates
less), and the peak resident memory of the process. Budget (issue 3): 2 s and
2 GB. numpy runs on one thread, so the process uses one core.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from moe.placement import expected_load, place  # noqa: E402
from moe.routing import expert_ids  # noqa: E402
from moe.spec import load_scenario  # noqa: E402
from moe.topology import build_topology  # noqa: E402
from moe.traffic import compute_traffic  # noqa: E402

BUDGET_S, BUDGET_BYTES = 2.0, 2e9


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def one_round(s, layer: int) -> tuple[dict, object]:
    t = {}
    c0 = time.process_time()
    t0 = time.perf_counter()
    ids = expert_ids(s, layer, 0)
    t1 = time.perf_counter()
    topo = build_topology(s.cluster)
    pl = place(s, expected_load(s, layer))
    t2 = time.perf_counter()
    traffic = compute_traffic(s, topo, pl, ids)
    t3 = time.perf_counter()
    t.update(routing_s=t1 - t0, placement_s=t2 - t1, traffic_s=t3 - t2, total_s=t3 - t0,
             cpu_s=time.process_time() - c0)
    return t, traffic


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--comm", default="hierarchical", choices=["hierarchical", "direct"])
    ap.add_argument("--strategy", default="one_per_gpu")
    ap.add_argument("--distribution", default="zipf", choices=["uniform", "zipf"])
    ap.add_argument("--skew", type=float, default=1.0)
    ap.add_argument("--nodes", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="rounds after the first (default 3)")
    ap.add_argument("--check", action="store_true", help="exit 1 when over the 2 s / 2 GB budget")
    args = ap.parse_args(argv)
    s = load_scenario({"name": "bench-routing-traffic",
                       "model": {"preset": "paper"}, "cluster": {"preset": "h800-ib", "nodes": args.nodes},
                       "placement": {"strategy": args.strategy},
                       "workload": {"tokens_per_gpu": 4096,
                                    "routing": {"distribution": args.distribution, "skew": args.skew}},
                       "schedule": {"comm": args.comm}}, check=False)
    rounds = []
    for r in range(args.repeats + 1):
        times, traffic = one_round(s, layer=r)
        rounds.append(times)
        print(f"round {r}{' (cold)' if r == 0 else ''}: " + ", ".join(f"{k} {v:.3f}" for k, v in times.items()),
              file=sys.stderr)
    warm = rounds[1:] or rounds
    med = {k: statistics.median(t[k] for t in warm) for k in warm[0]}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    summary = traffic.summary()
    print(f"routing+placement+traffic, EP={s.cluster.gpus} ({s.cluster.nodes}x{s.cluster.gpus_per_node}), "
          f"{s.workload.tokens_per_gpu} tokens/GPU, top-{s.model.top_k}, {args.distribution} skew {args.skew}, "
          f"{args.strategy}, {args.comm}:")
    print(f"  {med['total_s']:.2f} s median of {len(warm)} warm rounds (routing {med['routing_s']:.2f} s, "
          f"placement {med['placement_s']:.2f} s, traffic {med['traffic_s']:.2f} s; CPU time "
          f"{med['cpu_s']:.2f} s); cold first round "
          f"{rounds[0]['total_s']:.2f} s; peak memory {peak / 1e9:.2f} GB")
    print(f"  one core of {_cpu_name()}, numpy single-threaded")
    print(f"  last round: most loaded link {summary['max_link']} {summary['max_link_bytes'] / 1e9:.2f} GB, "
          f"inter-node {summary['inter_node_bytes'] / 1e9:.1f} GB, imbalance {summary['expert_load_imbalance']:.3f}, "
          f"{summary['dispatch_flows']} dispatch flows")
    over = med["total_s"] > BUDGET_S or peak > BUDGET_BYTES
    print(f"  budget {BUDGET_S:.0f} s / {BUDGET_BYTES / 1e9:.0f} GB: {'OVER' if over else 'within'}")
    return 1 if (args.check and over) else 0


if __name__ == "__main__":
    raise SystemExit(main())
