"""Derived keys: a value a sweep computes for each point instead of listing it, e.g. the largest decode
batch that fits in memory. A derivation is a pure function

    fn(build, key, current) -> value

where `build(value)` is the point's scenario with `key` set to `value` (schema-checked only) and `current`
is the key's value in that scenario before derivation. Failure to find a value is a SpecError naming
the key, which the sweep records as the point being infeasible.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from moe.errors import SpecError
from moe.spec import sizes
from moe.spec.schema import Scenario

Build = Callable[[Any], Scenario]


def memory_needed_bytes(s: Scenario) -> int:
    """Bytes one GPU holds (moe.spec.sizes.memory_per_gpu: weights, KV cache, buffers)."""
    return sizes.memory_per_gpu(s)["total_bytes"]


def memory_capacity_bytes(s: Scenario) -> int:
    """cluster.memory_GB x 1e9 (profiles use GB = 1e9 bytes)."""
    return int(s.cluster.memory_GB * 1e9)


def max_fitting(build: Build, key: str, current: Any) -> int:
    """The largest integer v in [1, current] such that the scenario with key = v fits in GPU memory
    (memory_needed_bytes <= memory_capacity_bytes). Memory grows with batch size and context length,
    so a bisection finds it: with `workload.tokens_per_gpu` in decode this is the largest decode batch
    (sequences per GPU) whose KV cache, weights and buffers fit; `current` is the upper bound the sweep
    allows (e.g. a latency limit)."""
    if not isinstance(current, int) or isinstance(current, bool) or current < 1:
        raise SpecError(key, current, "max_fitting needs a positive integer upper bound")

    def fits(v: int) -> bool:
        s = build(v)
        return memory_needed_bytes(s) <= memory_capacity_bytes(s)

    if not fits(1):
        s = build(1)
        raise SpecError(key, 1, f"nothing fits: even {key}=1 needs {memory_needed_bytes(s) / 1e9:.1f} GB of "
                                f"{memory_capacity_bytes(s) / 1e9:.0f} GB per GPU")
    lo, hi = 1, current  # fits(lo) holds
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


DERIVATIONS: dict[str, Callable[[Build, str, Any], Any]] = {"max_fitting": max_fitting}


def derivation(name: str, where: str) -> Callable[[Build, str, Any], Any]:
    if name not in DERIVATIONS:
        raise SpecError(where, name, f"unknown derivation; known: {', '.join(DERIVATIONS)}")
    return DERIVATIONS[name]
