"""`moetb place`: every placement strategy on one scenario, with its traffic and memory.

For each strategy: the placement for the expected load of MoE layer 0 (moe.placement.load), then the
traffic of the layer's full batch (step 0) under the scenario's comm and dtypes: the most loaded link
(bytes / capacity; its name, bytes and busy time over dispatch + combine), inter- and intra-node bytes,
expert-load imbalance, dropped requests, slots used and memory per GPU. A strategy that cannot place this
scenario reports its error instead.
"""

from __future__ import annotations

from moe.errors import SpecError
from moe.placement import STRATEGIES, expected_load, place
from moe.routing.workload import expert_ids
from moe.spec import sizes
from moe.spec.schema import Scenario
from moe.topology import build_topology
from moe.traffic import compute_traffic


def _strategy_row(s: Scenario, strategy: str, load, topo, ids_BTK) -> dict:
    try:
        pl = place(s, load, strategy)
    except SpecError as err:
        return {"error": str(err)}
    t = compute_traffic(s, topo, pl, ids_BTK)
    slots = int(pl.used_slots_G.max())
    mem = sizes.memory_per_gpu(s, slots=slots)
    return {**t.summary(), "slots_per_gpu": slots, "replicas": int(pl.replicas_E.sum() - s.model.experts),
            "memory_per_gpu_bytes": mem["total_bytes"],
            "memory_fits": mem["total_bytes"] <= s.cluster.memory_GB * 1e9}


def place_report(scenario: Scenario) -> tuple[dict, str]:
    """({strategy: figures}, a text table) for every strategy (module docstring)."""
    s = scenario
    topo = build_topology(s.cluster)
    load = expected_load(s, layer=0)
    ids_BTK = expert_ids(s, 0, 0)
    report = {name: _strategy_row(s, name, load, topo, ids_BTK) for name in STRATEGIES}
    head = (f"{s.name}: {s.model.experts} experts top-{s.model.top_k} on {s.cluster.nodes} x "
            f"{s.cluster.gpus_per_node} GPUs, {s.schedule.comm} comm, routing {s.workload.routing.distribution}"
            f" (skew {s.workload.routing.skew}), {s.workload.tokens_per_gpu} tokens/GPU, layer 0 step 0")
    lines = [head, f"{'strategy':<15} {'max link':<24} {'max link MB':>11} {'busy ms':>8} {'inter-node GB':>13} "
                   f"{'imbalance':>9} {'dropped':>8} {'slots':>5} {'mem GB':>7}"]
    for name, r in report.items():
        if "error" in r:
            lines.append(f"{name:<15} not applicable: {r['error']}")
            continue
        lines.append(f"{name:<15} {r['max_link']:<24} {r['max_link_bytes'] / 1e6:>11.2f} "
                     f"{r['max_link_time_s'] * 1e3:>8.3f} {r['inter_node_bytes'] / 1e9:>13.3f} "
                     f"{r['expert_load_imbalance']:>9.3f} {r['dropped_tokens']:>8d} {r['slots_per_gpu']:>5d} "
                     f"{r['memory_per_gpu_bytes'] / 1e9:>7.2f}" + ("" if r["memory_fits"] else "  (exceeds memory)"))
    return report, "\n".join(lines)
