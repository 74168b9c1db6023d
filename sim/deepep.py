"""DeepEP's normal-kernel benchmark as a scenario, and the "bottleneck bandwidth" it prints.

What DeepEP's tests do (deepseek-ai/DeepEP tests/test_intranode.py and tests/test_internode.py, V1):
- 4096 tokens per rank, hidden 7168, 256 experts (contiguous: rank = expert // (256 / ranks)), top-8;
  scores = |N(0, 1)| + 1 per (token, expert); internode: the experts form one group per node, a token
  keeps the min(nodes, 4) groups with the largest maximum score (`num_topk_groups` default), then its
  top-8 experts among them; intranode: top-8 of all 256. Any i.i.d. continuous score gives the same
  choices in distribution, so the scenario uses the `gate` routing (i.i.d. normal logits, group score =
  max, no bias) with groups = nodes and topk_groups = min(nodes, 4).
- FP8 dispatch (bytes = BF16 bytes x (1 + 4/128) / 2, i.e. hidden + one float32 scale per 128), BF16
  combine; the timed calls are cached-layout dispatch and combine (`bench` of the kernel on each rank).
- metric, internode: rdma_send_bytes / t, where rdma_send_bytes = num_rdma_token_sent x bytes per token
  and num_rdma_token_sent counts the rank's distinct (token, node) pairs **including its own node** (that
  copy never crosses the NIC); intranode: nvl_recv_bytes / t with the rank's received tokens (its own
  included). Combine divides the same token counts at BF16 by the combine time. Rank 0 prints it.
The simulated time of the rank is the phase's sync plus rank 0's completion offset (sim.network).
"""

from __future__ import annotations

from moe.spec import sizes
from moe.spec.loader import build_scenario
from moe.spec.schema import Scenario

PUBLISHED = {8: (153.0, 158.0), 16: (43.0, 43.0), 32: (58.0, 57.0), 64: (51.0, 50.0)}
"""(dispatch, combine) bottleneck GB/s by EP size: ../shared/data/deepep_normal_h800.csv (DeepEP V1 README)."""


def deepep_scenario(ep: int, cluster: str = "h800-ib", **sim_options) -> Scenario:
    """One MoE layer of DeepEP's benchmark at EP size `ep` (8 GPUs per node), one micro-batch."""
    nodes = ep // 8
    return build_scenario({
        "name": f"deepep-normal-ep{ep}",
        "model": {"preset": "deepseek-v3", "layers": 1, "dense_layers": 0, "groups": nodes,
                  "topk_groups": min(nodes, 4), "shared_experts": 0},
        "cluster": {"preset": cluster, "nodes": nodes, "gpus_per_node": 8},
        "placement": {"strategy": "contiguous"},
        "workload": {"phase": "prefill", "tokens_per_gpu": 4096,
                     "routing": {"distribution": "gate", "skew": 0.0}},
        "schedule": {"micro_batches": 1, "overlap": True, "dispatch_dtype": "fp8", "combine_dtype": "bf16",
                     "comm": "hierarchical"},
        "sim": {"link_timeline": False, **sim_options},
    })


def bottleneck_GBps(scenario: Scenario, result) -> tuple[float, float]:
    """(dispatch, combine) bottleneck bandwidth of rank 0 as DeepEP's tests compute it (module docstring)."""
    extra = result.extra
    phases = extra["phases"][0]
    internode = scenario.cluster.nodes > 1
    tokens = extra["node_tokens_rank0"][0] if internode else extra["received_tokens_rank0"][0]
    # DeepEP counts the activations (payload and scales), not the routing meta that travels with them
    act = sizes.activation_bytes_per_token(scenario.model.hidden, scenario.schedule.dispatch_dtype)
    dispatch = tokens * act / phases["dispatch"]["rank0_s"]
    combine = tokens * sizes.combine_bytes_per_token(scenario) / phases["combine"]["rank0_s"]
    return dispatch / 1e9, combine / 1e9
