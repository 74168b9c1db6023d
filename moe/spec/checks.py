"""Cross-field rules of a Scenario: what one key alone cannot say. Each failure names a key and value."""

from __future__ import annotations

from moe.errors import SpecError
from moe.spec import sizes
from moe.spec.schema import Scenario


def check_model(s: Scenario) -> None:
    m = s.model
    if m.dense_layers > m.layers:
        raise SpecError("model.dense_layers", m.dense_layers, f"more than model.layers ({m.layers})")
    if m.top_k > m.experts:
        raise SpecError("model.top_k", m.top_k, f"more than model.experts ({m.experts})")
    if m.experts % m.groups:
        raise SpecError("model.groups", m.groups, f"does not divide model.experts ({m.experts})")
    if m.topk_groups > m.groups:
        raise SpecError("model.topk_groups", m.topk_groups, f"more than model.groups ({m.groups})")
    reachable = m.topk_groups * (m.experts // m.groups)
    if m.top_k > reachable:
        raise SpecError("model.top_k", m.top_k,
                        f"more than the {reachable} experts in model.topk_groups={m.topk_groups} groups")


def check_cluster(s: Scenario) -> None:
    c, p = s.cluster, s.parallel
    if c.gpus_per_node % p.attention_tp:
        raise SpecError("parallel.attention_tp", p.attention_tp,
                        f"does not divide cluster.gpus_per_node ({c.gpus_per_node})")
    if p.attention_tp > 1 and s.model.attention.heads % p.attention_tp:
        raise SpecError("parallel.attention_tp", p.attention_tp,
                        f"does not divide model.attention.heads ({s.model.attention.heads})")


def check_workload(s: Scenario) -> None:
    w = s.workload
    if s.schedule.micro_batches > w.tokens_per_gpu:
        raise SpecError("schedule.micro_batches", s.schedule.micro_batches,
                        f"more than workload.tokens_per_gpu ({w.tokens_per_gpu})")
    r = w.routing
    if r.distribution == "trace" and not r.trace:
        raise SpecError("workload.routing.trace", r.trace, "distribution 'trace' needs a trace file")


def check_placement(s: Scenario) -> None:
    """Enough expert slots for every logical expert and replica; one_per_gpu needs experts <= GPUs."""
    p, experts, gpus = s.placement, s.model.experts, s.cluster.gpus
    if p.strategy == "one_per_gpu":
        if experts > gpus:
            raise SpecError("placement.strategy", p.strategy,
                            f"needs model.experts ({experts}) <= GPUs ({gpus}); use contiguous, "
                            "replicate_hot or topology_aware to pack several experts per GPU")
        if p.replicas > gpus - experts:
            raise SpecError("placement.replicas", p.replicas,
                            f"one_per_gpu has only {gpus - experts} spare GPUs for replicas")
        if p.slots_per_gpu > 1:
            raise SpecError("placement.slots_per_gpu", p.slots_per_gpu, "one_per_gpu holds one expert per GPU")
        return
    slots = sizes.slots_per_gpu(s)
    if slots * gpus < experts + p.replicas:
        raise SpecError("placement.slots_per_gpu", p.slots_per_gpu,
                        f"{slots} slots x {gpus} GPUs cannot hold {experts} experts + {p.replicas} replicas")
    if p.replicas and p.strategy in ("contiguous", "random"):
        raise SpecError("placement.replicas", p.replicas,
                        f"strategy {p.strategy} places no replicas; use replicate_hot or topology_aware")
    if p.replicas > experts * (gpus - 1):
        raise SpecError("placement.replicas", p.replicas,
                        f"at most one copy of an expert per GPU: {experts} experts x {gpus} GPUs allow "
                        f"{experts * (gpus - 1)} replicas")


def check_memory(s: Scenario) -> None:
    mem = sizes.memory_per_gpu(s)
    capacity = s.cluster.memory_GB * 1e9
    if mem["total_bytes"] > capacity:
        top = max((k for k in mem if k != "total_bytes"), key=mem.get)
        raise SpecError("cluster.memory_GB", s.cluster.memory_GB,
                        f"scenario needs {mem['total_bytes'] / 1e9:.1f} GB per GPU "
                        f"(largest part {top.removesuffix('_bytes')}: {mem[top] / 1e9:.1f} GB)")


def check_scenario(s: Scenario) -> None:
    check_model(s)
    check_cluster(s)
    check_workload(s)
    check_placement(s)
    check_memory(s)
