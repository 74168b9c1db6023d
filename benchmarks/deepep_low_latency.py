"""Simulated DeepEP low-latency kernels (decode) against DeepEP's published table. Not tuned on.

    .venv/bin/python benchmarks/deepep_low_latency.py [--out results/deepep_ll.json]

DeepEP's README (V1, "Low-latency kernels with pure RDMA"): H800, one CX7 400 Gb/s NIC per GPU, 128 tokens
per rank, hidden 7168, top-8 of 256 experts (no groups: tests/test_low_latency.py takes the top-8 of all
scores), FP8 dispatch, BF16 combine; each kernel's latency. The scenario: one `deepseek-v3` MoE layer, decode
of 128 tokens per GPU, `gate` routing (i.i.d. scores, one group), contiguous placement, one micro-batch,
`comm: direct` on `h800-ib`; a phase's latency is rank 0's simulated time (`sim.deepep`). One difference
the simulator does not model: DeepEP's low-latency kernels send everything over RDMA, also inside a node,
while `direct` uses NVLink there, so at small EP (most pairs inside a node) the simulator is faster.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moe.result import write_json_atomic  # noqa: E402
from moe.spec.loader import build_scenario  # noqa: E402
from sim.backend import run  # noqa: E402

PUBLISHED_US = {8: (77.0, 114.0), 16: (118.0, 195.0), 32: (155.0, 273.0), 64: (173.0, 314.0),
                128: (192.0, 369.0), 256: (194.0, 360.0)}
"""(dispatch, combine) latency in us by EP size: DeepEP README, low-latency kernels on H800 (V1 table)."""


def scenario(ep: int):
    return build_scenario({
        "name": f"deepep-low-latency-ep{ep}",
        "model": {"preset": "deepseek-v3", "layers": 1, "dense_layers": 0, "groups": 1, "topk_groups": 1,
                  "shared_experts": 0},
        "cluster": {"preset": "h800-ib", "nodes": ep // 8, "gpus_per_node": 8},
        "placement": {"strategy": "contiguous"},
        "workload": {"phase": "decode", "tokens_per_gpu": 128, "context_len": 4096,
                     "routing": {"distribution": "gate", "skew": 0.0}},
        "schedule": {"micro_batches": 1, "overlap": True, "dispatch_dtype": "fp8", "combine_dtype": "bf16",
                     "comm": "direct"},
        "sim": {"link_timeline": False},
    })


def simulate(ep: int) -> tuple[float, float]:
    """(dispatch, combine) latency of rank 0 in us."""
    phases = run(scenario(ep)).result.extra["phases"][0]
    return phases["dispatch"]["rank0_s"] * 1e6, phases["combine"]["rank0_s"] * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="JSON report (optional)")
    args = p.parse_args(argv)
    rows = []
    print(f"{'EP':>4} {'dispatch us':>12} {'published':>10} {'error':>7} {'combine us':>11} {'published':>10} "
          f"{'error':>7}")
    for ep, (pd, pc) in PUBLISHED_US.items():
        d, c = simulate(ep)
        rows.append({"ep": ep, "dispatch_us": d, "published_dispatch_us": pd, "combine_us": c,
                     "published_combine_us": pc})
        print(f"{ep:>4} {d:>12.1f} {pd:>10.0f} {100 * (d / pd - 1):>+6.1f}% {c:>11.1f} {pc:>10.0f} "
              f"{100 * (c / pc - 1):>+6.1f}%")
    if args.out:
        write_json_atomic(args.out, {"benchmark": "deepep_low_latency", "date": time.strftime("%Y-%m-%d"),
                                     "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
