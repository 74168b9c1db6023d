"""Overlap and pipelining are never slower than running everything in turn (compute- and comm-bound)."""

from __future__ import annotations

import pytest

from moe.spec.loader import build_scenario
from sim.backend import run


def scenario(model: str, overlap: bool, pipeline: bool = False, **cluster):
    return build_scenario({
        "model": {"preset": model, "layers": 6, "dense_layers": 1},
        "cluster": {"preset": "h800-ib", "nodes": 4, **cluster},
        "placement": {"strategy": "contiguous"},
        "workload": {"tokens_per_gpu": 4096, "context_len": 4096},
        "schedule": {"overlap": overlap, "micro_batches": 2, "layer_pipeline": pipeline},
        "sim": {"link_timeline": False}})


CASES = {
    # the paper model's 18432-wide experts on a fast network: compute dominates every MoE layer
    "compute-bound": ("paper", {"nic_GBps": 400.0, "nvlink_GBps": 900.0, "comm_copy_GBps": 2000.0}),
    # DeepSeek-V3's narrow experts on 5 GB/s NICs: dispatch and combine dominate
    "comm-bound": ("deepseek-v3", {"nic_GBps": 5.0}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_overlap_is_never_slower(case):
    model, cluster = CASES[case]
    serial = run(scenario(model, overlap=False, **cluster)).result
    overlapped = run(scenario(model, overlap=True, **cluster)).result
    piped = run(scenario(model, overlap=True, pipeline=True, **cluster)).result
    b = serial.breakdown
    compute = b.attention_s + b.gate_s + b.expert_s
    comm = serial.extra["dispatch_transfer_s"] + serial.extra["combine_transfer_s"]
    assert (compute > 2 * comm) if case == "compute-bound" else (comm > 2 * compute)
    # without overlap the stream waits out every transfer: the breakdown's dispatch and combine hold them
    assert b.dispatch_s + b.combine_s >= 0.9 * comm
    if case == "compute-bound":  # with overlap most are hidden: the breakdown holds only what is not
        o = overlapped.breakdown
        assert o.dispatch_s + o.combine_s < 0.8 * (b.dispatch_s + b.combine_s)
    assert overlapped.step_time_s < serial.step_time_s
    assert piped.step_time_s <= overlapped.step_time_s * (1 + 1e-9)
    # what overlap hides comes out of the exposed communication
    assert overlapped.breakdown.exposed_comm_s < serial.breakdown.exposed_comm_s
