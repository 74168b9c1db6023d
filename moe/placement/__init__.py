"""Expert placement: which logical experts (and replicas) each GPU's expert slots hold.

A strategy is a pure function (scenario, expected load) -> Placement; `moe.placement.types` says how
replicas share a replicated expert's tokens (nearest replica: same GPU, same node, then least loaded).
"""

from moe.placement.types import BUCKETS, Placement, make_placement, request_bucket

__all__ = ["BUCKETS", "Placement", "make_placement", "request_bucket"]
