"""The simulator's measured-operation lookup (sim.optable) and its use in costs, network and the step."""

from __future__ import annotations

import numpy as np
import pytest

from moe.model.shapes import OPS, op_signature
from moe.spec.loader import build_scenario
from moe.spec.schema import CurvePoint, OpPoint
from moe.topology import build_topology
from sim import costs
from sim.backend import build_plan, placement_for, resolve_runtime, route_steps, run
from sim.network import curve_GBps, phase_input, solve_phase
from sim.optable import op_time_s


def cluster(points=(), **over):
    s = build_scenario({"model": {"preset": "tiny"}, "cluster": {"preset": "cpu-host", "nodes": 1, "gpus_per_node": 2},
                        "placement": {"strategy": "contiguous"}})
    return s.cluster.model_copy(update={"op_table": tuple(OpPoint(**p) for p in points), **over})


def pts(op, model, table, context=0, per_node=0):
    return [{"op": op, "model": model, "tokens": t, "context": context, "s": s, "per_node": per_node}
            for t, s in table]


def test_tokens_interpolate_inside_hold_below_and_scale_per_token_above():
    c = cluster(pts("gate", "sig", [(16, 1e-3), (64, 2e-3)]))
    assert op_time_s(c, "gate", "sig", 40) == pytest.approx(1.5e-3)
    assert op_time_s(c, "gate", "sig", 4) == pytest.approx(1e-3)  # fixed costs dominate below the grid
    assert op_time_s(c, "gate", "sig", 128) == pytest.approx(4e-3)  # the last point's time per token
    assert list(op_time_s(c, "gate", "sig", np.array([0.0, 16.0]))) == pytest.approx([0.0, 1e-3])
    assert op_time_s(c, "gate", "other-model", 40) is None
    assert op_time_s(c, "dense", "sig", 40) is None


def test_device_time_is_the_host_ahead_timing_where_every_point_has_it():
    both = [{**p, "device_s": p["s"] / 4} for p in pts("gate", "sig", [(16, 1e-3), (64, 2e-3)])]
    assert op_time_s(cluster(both), "gate", "sig", 40) == pytest.approx(1.5e-3 / 4)
    one_lacks = both[:1] + pts("gate", "sig", [(64, 2e-3)])  # an older point: the idle-GPU times throughout
    assert op_time_s(cluster(one_lacks), "gate", "sig", 40) == pytest.approx(1.5e-3)


def test_op_points_carry_each_part_of_a_timers_answer_per_unit():
    from moe.model.optable import _net, _point

    p = _point("expert", "sig", 64, 0, _net((4e-3, 2e-3, 1e-3), (1e-3, 1e-3, 5e-4)), share=2)
    assert (p["s"], p["host_s"], p["device_s"]) == pytest.approx((1.5e-3, 5e-4, 2.5e-4))
    assert "device_s" not in _point("gate", "sig", 64, 0, (1e-3, 5e-4)) and "host_s" not in _point("g", "s", 1, 0, 1e-3)


def test_contexts_interpolate_and_extrapolate_linearly_with_a_floor():
    c = cluster(pts("attention.prefill", "a", [(512, 10e-3)], 256)
                + pts("attention.prefill", "a", [(512, 40e-3)], 1024))
    at = lambda ctx: op_time_s(c, "attention.prefill", "a", 512, ctx)  # noqa: E731
    assert at(512) == pytest.approx(20e-3)
    assert at(2048) == pytest.approx(40e-3 + 30e-3 / 768 * 1024)
    assert at(128) == pytest.approx(max(10e-3 - 30e-3 / 768 * 128, 10e-3 * 128 / 256))


def test_points_of_the_scenarios_ranks_per_node_win():
    table = pts("gate", "g", [(16, 1e-3)], per_node=1) + pts("gate", "g", [(16, 2e-3)], per_node=2)
    assert op_time_s(cluster(table, gpus_per_node=2), "gate", "g", 16) == pytest.approx(2e-3)
    assert op_time_s(cluster(table, gpus_per_node=1), "gate", "g", 16) == pytest.approx(1e-3)
    assert op_time_s(cluster(table, gpus_per_node=4), "gate", "g", 16) == pytest.approx(2e-3)  # nearest
    gpu = table + pts("gate", "g", [(16, 5e-3)], per_node=0)
    assert op_time_s(cluster(gpu, gpus_per_node=8), "gate", "g", 16) == pytest.approx(5e-3)


def tiny_scenario(table=(), **sections):
    spec = {"model": {"preset": "tiny"},
            "cluster": {"preset": "cpu-host", "nodes": 1, "gpus_per_node": 1, "launch_overhead_us": 0.0,
                        "op_table": list(table)},
            "placement": {"strategy": "contiguous"},
            "workload": {"tokens_per_gpu": 64, "context_len": 64},
            "schedule": {"micro_batches": 1, "comm": "direct"}, "sim": {"link_timeline": False}}
    for k, v in sections.items():
        spec[k] = {**spec.get(k, {}), **v}
    return build_scenario(spec)


def full_table(model, per_node=1, scale=1.0):
    """Every operation of `model` at 1 and 1000 tokens, time proportional to tokens (rows), 1e-5 s each."""
    out = []
    for op in OPS:
        ctx = 64 if op.startswith("attention") or op == "kv_setup.decode" else 0
        out += pts(op, op_signature(model, op), [(1, 1e-5 * scale), (1000, 1e-2 * scale)], ctx, per_node)
    return out


def test_costs_take_the_table_for_the_scenarios_model_and_physics_for_another():
    s = tiny_scenario()
    s = tiny_scenario(full_table(s.model))
    mb = costs.micro_batches(s)[0]
    assert costs.attention_s(s, mb) == pytest.approx(64e-5)
    assert costs.gate_s(s, 64) == pytest.approx(64e-5) and costs.pack_s(s, 64) == pytest.approx(64e-5)
    assert float(costs.expert_s(s, [10.0, 0.0, 30.0])) == pytest.approx(40e-5)  # one call per slot with rows
    wide = tiny_scenario(full_table(s.model), model={"hidden": 512})  # other dims: no entry applies
    assert costs.attention_s(wide, mb) != pytest.approx(64e-5)
    assert costs.attention_s(wide, mb) == pytest.approx(costs.attention_physics_s(wide, mb))


def with_host(table, host_s):
    return [{**p, "host_s": host_s} for p in table]


def test_host_costs_come_from_the_tables_host_seconds_once_the_exchange_is_measured():
    """host_front = gate + dispatch issue, then the exchange's bookkeeping; the pack's device work from
    kernels timed with the host ahead (device_s), else physics; floors stand in for missing host_s; no exchange
    op, no host model (sim.costs.layer_costs)."""
    base = tiny_scenario()
    m, sig = base.model, op_signature(base.model, "exchange")
    exchange = pts("exchange", sig, [(16, 3e-3), (1000, 4e-3)])
    s = tiny_scenario(with_host(full_table(m), 2e-4) + exchange)
    mb = costs.micro_batches(s)[0]  # 64 tokens
    c = costs.layer_costs(s, mb)
    assert costs.host_model(s)
    assert (c.host_gate_s, c.host_pack_s) == pytest.approx((2e-4, 2e-4))  # gate, dispatch
    assert c.host_exchange_s == pytest.approx(float(np.interp(64, [16, 1000], [3e-3, 4e-3])))
    assert (c.host_attention_s, c.host_dense_s, c.host_combine_s) == pytest.approx((2e-4,) * 3)
    assert c.pack_s == pytest.approx(costs.pack_physics_s(s, 64))  # no device_s: the pack's memory traffic
    ahead = [{**p, "device_s": p["s"] / 5} if p["op"] == "dispatch" else p for p in with_host(full_table(m), 2e-4)]
    timed = costs.layer_costs(tiny_scenario(ahead + exchange), mb)  # the pack's kernels, timed with the host ahead
    assert (timed.pack_s, timed.host_pack_s) == pytest.approx((64e-5 / 5, 2e-4))
    # one call per slot with rows, and the shard's fixed work once
    assert float(costs.expert_issue_s(s, [3.0, 0.0, 5.0], 8.0)) == pytest.approx(6e-4)
    floors = tiny_scenario(full_table(m) + exchange)  # no host_s: each op's least time, 1e-5 s
    assert costs.layer_costs(floors, mb).host_attention_s == pytest.approx(1e-5)
    plain = costs.layer_costs(tiny_scenario(with_host(full_table(m), 2e-4)), mb)
    assert (plain.host_pack_s, plain.host_attention_s, plain.pack_s) == (0.0, 0.0, pytest.approx(64e-5))


def test_expert_calls_cost_their_padded_rows_where_the_real_runtime_replays_them():
    base = tiny_scenario()
    exchange = pts("exchange", op_signature(base.model, "exchange"), [(16, 3e-3)])
    gpu = tiny_scenario(full_table(base.model) + exchange)  # the host model's table: a GPU calibration
    eager = tiny_scenario(full_table(base.model) + exchange, real={"graphs": False})
    cpu = tiny_scenario(full_table(base.model))
    assert float(costs.expert_s(gpu, [300.0, 17.0])) == pytest.approx((304 + 32) * 1e-5)  # sizes.graph_rows
    assert float(costs.expert_s(eager, [300.0, 17.0])) == pytest.approx(317e-5)
    assert float(costs.expert_s(cpu, [300.0, 17.0])) == pytest.approx(317e-5)


def test_a_host_bound_step_takes_the_hosts_time_and_a_device_bound_one_hides_it():
    """One GPU: with every issue cost above the device's work the stream waits for the host at every task,
    so the step is the host's total; with negligible issue costs the host stays ahead (sim.executor)."""
    base = tiny_scenario()
    exchange = pts("exchange", op_signature(base.model, "exchange"), [(1, 1e-9), (1000, 1e-9)])
    fast = tiny_scenario(with_host(full_table(base.model), 0.0) + exchange)
    slow = tiny_scenario(with_host(full_table(base.model), 1e-2) + exchange)
    topo = build_topology(slow.cluster)
    plan = build_plan(slow, topo, route_steps(slow, topo, placement_for(slow))[0])
    c, m = plan.costs[0], slow.model
    per_moe = c.host_attention_s + c.host_gate_s + c.host_pack_s + c.host_exchange_s + c.host_shared_s \
        + float(plan.expert[0].host_G[0]) + c.host_combine_s
    host_total = plan.setup_s + m.dense_layers * (c.host_attention_s + c.host_dense_s) + m.moe_layers * per_moe
    r_slow, r_fast = run(slow).result, run(fast).result
    assert r_slow.step_time_s == pytest.approx(host_total, rel=1e-3)
    assert r_fast.step_time_s < 0.2 * r_slow.step_time_s
    assert r_slow.breakdown.dispatch_s > r_fast.breakdown.dispatch_s  # the stream's idle time is counted
    # each wait counts in the phase of the task it issues, as a real run's CUDA events count it
    mbs = len(plan.costs)
    assert r_slow.breakdown.attention_s == pytest.approx(mbs * c.host_attention_s, rel=1e-3)
    assert r_slow.breakdown.expert_s == pytest.approx(mbs * (c.host_shared_s + float(plan.expert[0].host_G[0])),
                                                      rel=1e-3)
    assert r_slow.breakdown.gate_s == pytest.approx(mbs * c.host_gate_s, rel=1e-3)
    assert r_slow.breakdown.dispatch_s == pytest.approx(mbs * c.host_pack_s, rel=1e-3)  # the exchange's
    # bookkeeping in no phase, as the runtimes' spans leave it out


def test_one_gpu_step_is_the_sum_of_the_measured_operations():
    """One rank, one micro-batch, no launch cost: setup + dense layer + MoE layers, each op as measured."""
    base = tiny_scenario()
    s = tiny_scenario(full_table(base.model))
    assert resolve_runtime(s) == "messages"  # measured on CPU ranks: the emulator's schedule
    m, t, u = s.model, 64, 1e-5
    requests = t * m.top_k  # every (token, expert) pair is computed here, one call per slot: linear
    setup = m.layers * t * u
    dense = 2 * t * u  # attention, dense FFN
    moe = 6 * t * u + requests * u  # attention, gate, pack, shared, combine sum, the shard's t rows; the experts
    r = run(s).result
    assert r.step_time_s == pytest.approx(setup + m.dense_layers * dense + m.moe_layers * moe)


def test_chunked_prefill_micro_batches_cost_what_their_keys_cost():
    base = tiny_scenario()
    table = pts("attention.prefill", op_signature(base.model, "attention.prefill"), [(16, 1e-3), (64, 4e-3)], 64)
    table += pts("attention.prefill", op_signature(base.model, "attention.prefill"), [(16, 2e-3), (64, 8e-3)], 128)
    s = tiny_scenario(table, workload={"tokens_per_gpu": 64, "context_len": 64}, schedule={"micro_batches": 2})
    topo = build_topology(s.cluster)
    plan = build_plan(s, topo, route_steps(s, topo, placement_for(s))[0])
    # two chunks of 32 tokens of one 64-token sequence: the second attends to 64 keys, the first to 32
    assert plan.after == (None, 0)
    assert plan.costs[1].attention_s == pytest.approx(2e-3)
    assert plan.costs[0].attention_s == pytest.approx(max(2e-3 - 2e-3 / 64 * 32, 2e-3 * 32 / 64))


def test_flows_inside_a_node_move_at_the_measured_rate_of_their_size():
    curve = (CurvePoint(bytes=1024, GBps=0.1), CurvePoint(bytes=1 << 20, GBps=2.0))
    assert float(curve_GBps(curve, 512)) == pytest.approx(0.05)  # below: latency-bound, time held
    assert float(curve_GBps(curve, 1 << 25)) == pytest.approx(2.0)
    assert float(curve_GBps(curve, 32 * 1024)) == pytest.approx(0.1 + 1.9 * 0.5)
    s = tiny_scenario(cluster={"gpus_per_node": 2, "p2p_curve": [c.model_dump() for c in curve], "nvlink_GBps": 2.0,
                               "nvlink_latency_us": 0.0, "message_overhead_us": 0.0})
    topo = build_topology(s.cluster)
    t = route_steps(s, topo, placement_for(s))[0][0]
    bpt = 264
    peak = solve_phase(phase_input(t.dispatch, t, topo, s.cluster, "dispatch", bpt), s.cluster, "flow", 2)
    measured = solve_phase(phase_input(t.dispatch, t, topo, s.cluster, "dispatch", bpt, curve="p2p"), s.cluster,
                           "flow", 2)
    sent = t.dispatch.bytes_F.astype(float)
    expect = (sent / (curve_GBps(curve, sent) * 1e9)).max()
    assert peak.duration_s == pytest.approx(sent.max() / 2e9)
    assert measured.duration_s == pytest.approx(expect)


def test_the_slowest_host_paces_every_gpu():
    """Two GPUs, host-bound: with host factors (1, 2) the exchanges make both wait for the slow host, so the
    step takes about twice the host time of factors (1, 1) (sim.costs.host_factors, sim.executor)."""
    base = tiny_scenario()
    table = with_host(full_table(base.model), 1e-2) + pts("exchange", op_signature(base.model, "exchange"),
                                                             [(1, 1e-9), (1000, 1e-9)])
    two = {"gpus_per_node": 2}
    even = tiny_scenario(table, cluster={**two, "host_factors": [1.0, 1.0]})
    uneven = tiny_scenario(table, cluster={**two, "host_factors": [1.0, 2.0]})
    assert costs.host_factors(uneven) == (1.0, 2.0)
    assert costs.host_factors(tiny_scenario(with_host(full_table(base.model), 1e-2), cluster=two)) == ()
    t_even, t_uneven = run(even).result.step_time_s, run(uneven).result.step_time_s
    assert t_uneven == pytest.approx(2 * t_even, rel=0.05)


def test_a_shards_fixed_work_is_paid_once_per_key_in_grouped_mode():
    """Grouped runtime (a GPU table): the shard's fixed work on the GPU's received rows joins the key's first
    expert task once, whatever the slots; without a `shard` op nothing is added."""
    base = tiny_scenario()
    table = full_table(base.model, per_node=0)
    with_shard = tiny_scenario(table, sim={"runtime": "grouped"})
    without = tiny_scenario([p for p in table if p["op"] != "shard"], sim={"runtime": "grouped"})
    assert resolve_runtime(with_shard) == "grouped"
    topo = build_topology(with_shard.cluster)
    plan = build_plan(with_shard, topo, route_steps(with_shard, topo, placement_for(with_shard))[0])
    assert float(plan.expert[0].fixed_G[0]) == pytest.approx(64e-5)  # 64 rows received, 1e-5 s each
    extra = run(with_shard).result.step_time_s - run(without).result.step_time_s
    assert extra == pytest.approx(with_shard.model.moe_layers * 64e-5, rel=1e-6)


def test_each_micro_batch_pads_its_own_rows():
    """With padded expert calls and two micro-batches, a GPU's expert time is the mean of each micro-batch's
    padded calls on its own rows (moe.traffic.counts.slot_requests_of), not the padded mean rows."""
    from moe.spec import sizes
    from moe.traffic.counts import slot_requests_of

    base = tiny_scenario()
    exchange = pts("exchange", op_signature(base.model, "exchange"), [(16, 3e-3)])
    s = tiny_scenario(full_table(base.model, per_node=0) + exchange, cluster={"gpus_per_node": 2},
                      workload={"tokens_per_gpu": 200, "context_len": 50},
                      schedule={"micro_batches": 2, "overlap": True})
    topo = build_topology(s.cluster)
    traffics = route_steps(s, topo, placement_for(s))[0]
    plan = build_plan(s, topo, traffics)
    t = traffics[0]
    own = slot_requests_of(t.assignment, sizes.micro_batch_tokens(s), len(t.slot_tokens_X)).reshape(2, 2, -1)
    assert np.array_equal(own.sum(axis=0).ravel(), t.slot_tokens_X)
    want = (costs.expert_s(s, own[0]) + costs.expert_s(s, own[1])) / 2
    assert plan.expert[0].whole_G == pytest.approx(want)
    mean_rows = costs.expert_s(s, t.slot_tokens_X.reshape(2, -1) / 2.0)
    assert not np.allclose(want, mean_rows)  # the case the mean misses


def test_the_exchange_comes_from_the_job_size_nearest_the_scenarios_gpus():
    """Exchange points measured by 1, 2 and 4 ranks (`ranks`): a scenario takes the nearest size in ratio
    (a tie to the larger), beyond them the largest; points without a size are one curve for every size."""
    tagged = [{**p, "ranks": r} for r in (1, 2, 4) for p in pts("exchange", "sig", [(16, r * 1e-3)])]

    def lookup(table, gpus):
        return op_time_s(cluster(table, gpus_per_node=gpus), "exchange", "sig", 16)

    assert [lookup(tagged, g) for g in (1, 2, 3, 4, 64)] == pytest.approx([1e-3, 2e-3, 4e-3, 4e-3, 4e-3])
    untagged = pts("exchange", "sig", [(16, 5e-3)])
    assert lookup(untagged, 1) == lookup(untagged, 8) == pytest.approx(5e-3)
