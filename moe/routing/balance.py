"""Load balancing across steps: DeepSeek-V3's auxiliary-loss-free bias, and the capacity limit.

Shape letters: E experts, B source GPUs, T tokens, K = top_k.

- bias: every step each expert's selection bias moves by gamma * sign(mean load - load) (DeepSeek-V3
  technical report, section 2.1.2): overloaded experts become less likely to be chosen, underloaded ones
  more. The bias only changes which experts are selected, never the routing weights. Its unit is that of
  the selection scores: sigmoid/softmax scores for the `gate` distribution, log-weights for `uniform` and
  `zipf` (moe.routing.popularity).
- capacity: applied where tokens meet slots (moe.traffic.assign): each slot accepts
  ceil(capacity_factor * mean requests per slot) of a batch and the overflow is dropped and counted.
- none: nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from moe.routing.workload import expert_ids, expert_requests
from moe.spec.schema import Scenario


def update_bias(bias_E: np.ndarray, load_E: np.ndarray, gamma: float) -> np.ndarray:
    """bias + gamma * sign(mean(load) - load)."""
    load_E = np.asarray(load_E, dtype=np.float64)
    return np.asarray(bias_E, dtype=np.float64) + gamma * np.sign(load_E.mean() - load_E)


def load_imbalance(load: np.ndarray) -> float:
    """max / mean of a load vector (1.0 is perfectly even)."""
    load = np.asarray(load, dtype=np.float64)
    return float(load.max() / load.mean()) if load.mean() > 0 else 1.0


@dataclass(frozen=True, eq=False)
class BalancedStep:
    step: int
    ids_BTK: np.ndarray
    bias_E: np.ndarray
    """The bias the step was routed with (before its own update)."""
    expert_load_E: np.ndarray


def balanced_steps(scenario: Scenario, layer: int, steps: int | None = None, *, gpus=None,
                   tokens=None) -> Iterator[BalancedStep]:
    """Route `steps` (default workload.steps) steps of one MoE layer, updating the bias after each step
    from the loads of the routed batch when workload.load_balance.method is bias."""
    lb, experts = scenario.workload.load_balance, scenario.model.experts
    steps = scenario.workload.steps if steps is None else steps
    bias_E = np.zeros(experts)
    for step in range(steps):
        use_bias = bias_E if lb.method == "bias" else None
        ids_BTK = expert_ids(scenario, layer, step, gpus=gpus, tokens=tokens, bias_E=use_bias)
        load_E = expert_requests(ids_BTK, experts)
        yield BalancedStep(step=step, ids_BTK=ids_BTK, bias_E=bias_E.copy(), expert_load_E=load_E)
        if lb.method == "bias":
            bias_E = update_bias(bias_E, load_E, lb.gamma)
