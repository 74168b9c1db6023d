"""moe.model.optable: the runtime's operations timed on this device, as op-table points the simulator reads."""

from __future__ import annotations

import torch

from emu.calibrate import runtime_ops
from moe.model.optable import Grid, measure, prefill_pairs
from moe.model.shapes import OPS, op_signature
from moe.spec.loader import build_scenario
from moe.spec.schema import Cluster

GRID = Grid(tokens=(4, 16), rows=(2, 8), prefill=((8, 16), (16, 16), (32, 16)), decode=((2, 16),))


def tiny():
    return build_scenario({"model": {"preset": "tiny"}, "cluster": {"preset": "cpu-host"},
                           "placement": {"strategy": "contiguous"}}).model


class CountingTimer:
    """Calls each operation once and returns a fixed time: the points' structure, not this box's speed."""

    def __init__(self):
        self.calls = 0

    def __call__(self, fn):
        self.calls += 1
        fn()
        return 1e-3


def test_every_operation_of_the_runtime_is_measured_with_its_signature():
    m, timer = tiny(), CountingTimer()
    points = measure(m, timer, GRID, ops=runtime_ops(torch.device("cpu"), ("fp8", "bf16")), ranks=2)
    assert {p["op"] for p in points} == set(OPS)
    assert all(p["model"] == op_signature(m, p["op"]) for p in points)
    assert timer.calls == len(points)
    prefill = sorted((p["tokens"], p["context"]) for p in points if p["op"] == "attention.prefill")
    assert prefill == sorted(GRID.prefill)
    assert sorted(p["tokens"] for p in points if p["op"] == "expert") == [2, 8]
    # the profile accepts them as they are
    Cluster(op_table=tuple({**p, "per_node": 2} for p in points))


def test_without_runtime_calls_the_model_level_operations_remain():
    points = measure(tiny(), CountingTimer(), GRID)
    assert {p["op"] for p in points} == {"attention.prefill", "attention.decode", "gate", "shared", "dense", "expert"}


def test_a_timer_that_reports_host_seconds_gives_each_point_its_issue_cost():
    """A GPU's timer answers (device seconds, host seconds); a call doing n units of an op (the expert op's
    cycled experts) divides both."""
    class HostTimer(CountingTimer):
        def __call__(self, fn):
            return super().__call__(fn), 4e-4

    points = measure(tiny(), HostTimer(), GRID)
    expert = [p for p in points if p["op"] == "expert"]
    assert all(p["host_s"] / p["s"] == 0.4 for p in points)
    assert all(p["s"] < 1e-3 for p in expert)  # several experts per call
    Cluster(op_table=tuple(points))
    assert "host_s" not in measure(tiny(), CountingTimer(), GRID)[0]


def test_prefill_points_are_chunks_or_whole_sequences():
    """T < S: the last chunk of a sequence of S keys; T >= S: T / S whole sequences (S must divide T)."""
    assert prefill_pairs((8, 16, 24, 32, 64), (16,), 32) == ((8, 16), (16, 16), (32, 16))


def test_a_chunk_attends_after_the_cached_part_of_its_sequence():
    """The timed chunk call appends T tokens after S - T cached ones, every time it is called."""
    from moe.model.model import build_layer
    from moe.model.optable import attention_calls

    m = tiny()
    two = m.model_copy(update={"layers": 2, "dense_layers": 1})
    block = build_layer(two, 0, 0)
    seen = []
    original = block.attention

    def spy(x, cache, **kw):
        seen.append((x.shape[0], cache.batch, cache.length, cache.capacity))
        return original(x, cache, **kw)

    block.attention = spy
    grid = Grid(tokens=(), rows=(), prefill=((8, 32), (64, 32)), decode=((3, 16),))
    with torch.inference_mode():
        for _op, _t, _s, call in attention_calls(block, m, grid, "cpu", 0):
            call()
            call()
    assert seen == [(8, 1, 24, 32)] * 2 + [(64, 2, 0, 32)] * 2 + [(3, 3, 16, 17)] * 2


def test_the_expert_op_is_net_of_the_shards_fixed_work(monkeypatch):
    """With the runtime's calls, a timed shard of n experts = its fixed work + n expert calls: the `expert`
    point is one expert call, the `shard` point the fixed work on the shard's n x R rows."""
    from moe.model.layer import Block

    calls = {"n": 0}
    forward = Block.expert_forward

    def counted(self, expert, x):
        calls["n"] += 1
        return forward(self, expert, x)

    monkeypatch.setattr(Block, "expert_forward", counted)

    def timer(fn):  # 1 ms of fixed work per call, 2 ms per expert call made
        before = calls["n"]
        fn()
        return 1e-3 + 2e-3 * (calls["n"] - before)

    points = measure(tiny(), timer, GRID, ops=runtime_ops(torch.device("cpu"), ("fp8", "bf16")), ranks=2)
    expert = [p for p in points if p["op"] == "expert"]
    shard = [p for p in points if p["op"] == "shard"]
    assert [p["s"] for p in expert] == [2e-3] * len(GRID.rows)
    assert [p["s"] for p in shard] == [1e-3] * len(GRID.rows)
    n = [s["tokens"] // e["tokens"] for e, s in zip(expert, shard, strict=True)]
    assert all(k >= 1 for k in n) and shard[0]["tokens"] == n[0] * GRID.rows[0]


def test_a_shard_of_a_new_top_k_is_measured_without_its_expert_op():
    """`shard`'s signature holds top_k and `expert`'s does not: a model whose expert op an earlier model
    measured (only without "expert") still gets its shard points, and no expert points."""
    points = measure(tiny(), lambda fn: (fn(), 1e-3)[1], GRID, ops=runtime_ops(torch.device("cpu"), ("fp8", "bf16")),
                     ranks=2, only=("shard",))
    assert {p["op"] for p in points} == {"shard"} and len(points) == len(GRID.rows)
