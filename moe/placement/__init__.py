"""Expert placement: which logical experts (and replicas) each GPU's expert slots hold.

    load = expected_load(scenario, layer)          # a sample of the layer's routing
    placement = place(scenario, load)              # the scenario's strategy (or strategy="random", ...)

A strategy is a pure function (scenario, expected load) -> Placement (moe.placement.strategies,
moe.placement.topology_aware); moe.placement.types says how replicas share a replicated expert's tokens
(nearest replica: same GPU, same node, then least loaded).
"""

from __future__ import annotations

from moe.errors import SpecError
from moe.placement.load import ExpectedLoad, expected_load, load_from_ids
from moe.placement.strategies import contiguous, one_per_gpu, random, replicate_hot
from moe.placement.types import Placement, make_placement, token_bucket
from moe.spec.schema import Scenario


def topology_aware(scenario: Scenario, load: ExpectedLoad) -> Placement:
    """moe.placement.topology_aware.topology_aware (imported on use: it needs moe.traffic)."""
    from moe.placement.topology_aware import topology_aware as search

    return search(scenario, load)


STRATEGIES = {"one_per_gpu": one_per_gpu, "contiguous": contiguous, "random": random,
              "replicate_hot": replicate_hot, "topology_aware": topology_aware}


def place(scenario: Scenario, load: ExpectedLoad | None = None, strategy: str | None = None) -> Placement:
    """Placement of the scenario's strategy (or `strategy`) for the expected load (default: a sample of
    MoE layer 0, step 0)."""
    name = strategy or scenario.placement.strategy
    if name not in STRATEGIES:
        raise SpecError("placement.strategy", name, f"unknown strategy; known: {', '.join(STRATEGIES)}")
    fn = STRATEGIES[name]
    return fn(scenario, expected_load(scenario) if load is None else load)


__all__ = ["STRATEGIES", "ExpectedLoad", "Placement", "contiguous", "expected_load", "load_from_ids",
           "make_placement", "one_per_gpu", "place", "random", "replicate_hot", "token_bucket", "topology_aware"]
