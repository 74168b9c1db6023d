"""Routing workloads: which experts each token chooses, per MoE layer and step, and load balancing.

    ids_BTK = expert_ids(scenario, layer, step)                  # every GPU's tokens
    ids_BTK = expert_ids(scenario, layer, step, gpus=[3], tokens=range(0, 512))   # a slice, same ids

See moe.routing.workload (distributions), moe.routing.gate (the gate's math), moe.routing.balance (bias
and capacity), moe.routing.trace (trace files).
"""

from moe.routing.balance import BalancedStep, balanced_steps, load_imbalance, update_bias
from moe.routing.gate import gate
from moe.routing.trace import EXAMPLE_TRACE, example_trace, load_trace, write_trace
from moe.routing.workload import expert_ids, expert_requests

__all__ = ["EXAMPLE_TRACE", "BalancedStep", "balanced_steps", "example_trace", "expert_ids", "expert_requests",
           "gate", "load_imbalance", "load_trace", "update_bias", "write_trace"]
