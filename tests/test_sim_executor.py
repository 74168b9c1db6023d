"""The SimPy executor on hand-checkable timelines: hand-made plans, and a one-GPU model by FLOPs."""

from __future__ import annotations

import numpy as np
import pytest

from moe.spec.loader import build_scenario
from sim.backend import run
from sim.costs import LayerCosts
from sim.events import Op, is_wait
from sim.executor import ExpertWork, StepPlan, run_step, stretched
from sim.network import PhaseTiming


def timing(sync, done, arrive, share=None):
    arrive = np.asarray(arrive, dtype=float)
    share = np.full(arrive.shape, 1.0 / arrive.shape[1]) if share is None else np.asarray(share, dtype=float)
    return PhaseTiming(sync_s=sync, done_G=np.asarray(done, dtype=float), arrive_GC=arrive, share_GC=share,
                       link_bytes_L=np.zeros(1), seg_t_S1=np.zeros(1), seg_bytes_SL=np.zeros((0, 1)), rounds=1)


def linear_runs(gpus, chunks, per_chunk):
    """Expert work: chunks i..j-1 as one kernel take (j - i) x per_chunk seconds."""
    runs = np.zeros((gpus, chunks, chunks + 1))
    for i in range(chunks):
        for j in range(i + 1, chunks + 1):
            runs[:, i, j] = (j - i) * per_chunk
    return runs


def plan(pattern=(0,), mb=1, overlap=True, pipeline=False, costs=None, dispatch=None, combine=None, runs=None,
         runtime="grouped", local=None, after=()):
    costs = costs or LayerCosts(tokens=1, attention_s=1.0, attention_tp_comm_s=0.0, gate_s=0.5, dense_ffn_s=2.0,
                                shared_expert_s=0.0)
    dispatch = dispatch or timing(0.1, [2.0, 3.0], [[1, 1, 2, 2], [1, 2, 3, 3]])
    combine = combine or timing(0.1, [1.0, 1.0], [[1, 1, 1, 1], [1, 1, 1, 1]])
    runs = linear_runs(2, 4, 1.0) if runs is None else runs
    work = ExpertWork(runs_GCC1=runs, whole_G=runs[:, 0, -1],
                      local_G=np.zeros(0) if local is None else np.asarray(local, dtype=float))
    return StepPlan(gpus=2, micro_batches=mb, moe_layer_pattern=tuple(pattern), costs=(costs,) * mb,
                    dispatch=(dispatch,), combine=(combine,), expert=(work,), overlap=overlap,
                    layer_pipeline=pipeline, runtime=runtime, after=after)


def spans(rec, gpu, waits=False):
    """GPU `gpu`'s spans in order, the stream's blocked waits (Op.WAIT_*) only if asked for."""
    c = rec.spans.columns()
    sel = np.flatnonzero((c["gpu"] == gpu) & (waits | ~is_wait(c["op"])))
    return [(Op(int(c["op"][i])).name, round(float(c["start"][i]), 9), round(float(c["end"][i]), 9)) for i in sel]


def test_one_moe_layer_by_hand():
    """Attention [0, 1], gate [1, 1.5]; dispatch starts at 1.5 + sync 0.1 = 1.6. GPU 0's chunks land at
    2.6, 2.6, 3.6, 3.6: one kernel on the first two (2.6 -> 4.6), then one on the last two (-> 6.6).
    GPU 1's land at 2.6, 3.6, 4.6, 4.6: 2.6 -> 3.6, 3.6 -> 4.6, 4.6 -> 6.6. Combine starts at
    max(6.6, engines free at 3.6 and 4.6) + 0.1 = 6.7 and lands at 7.7."""
    rec = run_step(plan())
    waits = [("WAIT_DISPATCH", 1.5, 2.6), ("WAIT_COMBINE", 6.6, 7.7)]  # the stream blocked on the exchange
    assert spans(rec, 0, waits=True) == [("ATTENTION", 0.0, 1.0), ("GATE", 1.0, 1.5), waits[0],
                                         ("EXPERT", 2.6, 4.6), ("EXPERT", 4.6, 6.6), waits[1]]
    assert spans(rec, 1, waits=True) == [("ATTENTION", 0.0, 1.0), ("GATE", 1.0, 1.5), waits[0],
                                         ("EXPERT", 2.6, 3.6), ("EXPERT", 3.6, 4.6), ("EXPERT", 4.6, 6.6), waits[1]]
    starts = {(c.op, c.layer, c.mb): c.start_s for c in rec.collectives}
    assert starts == {(Op.DISPATCH, 0, 0): pytest.approx(1.6), (Op.COMBINE, 0, 0): pytest.approx(6.7)}
    assert rec.gpu_end == pytest.approx([7.7, 7.7])
    assert rec.end_s == pytest.approx(7.7)


def test_compute_inside_a_transfer_window_runs_slower():
    """stretched: 1 + slowdown times as long inside a window, full speed outside it."""
    w = [(2.0, 4.0), (6.0, 7.0)]
    assert stretched(0.0, 1.5, w, 1.0) == pytest.approx(1.5)  # ends before the first window
    assert stretched(1.0, 2.0, w, 1.0) == pytest.approx(4.0)  # 1 s before it, then 1 s of work in 2 s inside
    assert stretched(3.0, 3.0, w, 1.0) == pytest.approx(7.0)  # 0.5 in [3, 4], 2 in [4, 6], 0.5 in [6, 7]
    assert stretched(8.0, 1.0, w, 1.0) == pytest.approx(9.0)  # after every window
    assert stretched(1.0, 2.0, w, 0.0) == pytest.approx(3.0)
    assert stretched(3.5, 1.0, [(1.0, 3.0)] + w, 1.0) == pytest.approx(4.75)  # a window that has ended


def test_one_moe_layer_by_hand_with_compute_slowed_by_transfers():
    """As by hand above, with comm_slowdown 0.5. GPU 0's dispatch part runs 1.6 -> 3.6: its first kernel
    (2 s of work from 2.6) does 1 / 1.5 s of work by 3.6 and ends at 3.6 + 4/3; the second runs after it,
    outside the window. GPU 1's part runs 1.6 -> 4.6: 2.6 -> 4.1 (1 s at 2/3), 4.1 -> 4.6 + 2/3, then 2 s.
    The combine starts at GPU 1's end + 0.1; its window holds no compute."""
    base = plan()
    rec = run_step(StepPlan(**{**base.__dict__, "comm_slowdown": 0.5}))
    got = spans(rec, 0)
    assert [x[0] for x in got] == ["ATTENTION", "GATE", "EXPERT", "EXPERT"]
    assert [t for x in got for t in x[1:]] == pytest.approx([0.0, 1.0, 1.0, 1.5, 2.6, 3.6 + 4 / 3, 3.6 + 4 / 3,
                                                             5.6 + 4 / 3])
    g1_end = 4.6 + 2 / 3 + 2.0
    assert spans(rec, 1)[-1][1:] == pytest.approx((4.6 + 2 / 3, g1_end))
    combine = next(c for c in rec.collectives if c.op == Op.COMBINE)
    assert combine.start_s == pytest.approx(g1_end + 0.1)
    assert rec.end_s == pytest.approx(g1_end + 0.1 + 1.0)


def test_a_collective_waits_for_the_slowest_gpu_and_busy_engines():
    # GPU 1's dispatch part lasts until 1.6 + 30: the combine cannot start before its engine is free
    d = timing(0.1, [2.0, 30.0], [[1, 1, 2, 2], [1, 2, 3, 3]])
    rec = run_step(plan(dispatch=d))
    combine = next(c for c in rec.collectives if c.op == Op.COMBINE)
    assert combine.last_join_s == pytest.approx(6.6)
    assert combine.start_s == pytest.approx(1.6 + 30.0 + 0.1)


def test_dense_layers_then_a_moe_layer():
    rec = run_step(plan(pattern=(-1, 0)))
    # dense layer: attention [0, 1], FFN [1, 3]; the MoE layer is the one above shifted by 3
    assert spans(rec, 0)[:4] == [("ATTENTION", 0.0, 1.0), ("DENSE_FFN", 1.0, 3.0), ("ATTENTION", 3.0, 4.0),
                                 ("GATE", 4.0, 4.5)]
    assert rec.end_s == pytest.approx(7.7 + 3.0)


def test_two_micro_batches_overlap_communication_with_computation():
    """Each micro-batch: attention+gate 1.5, dispatch 2 (all at once), experts 4 x 1, combine 1."""
    d = timing(0.0, [2.0, 2.0], [[2, 2, 2, 2]] * 2)
    c = timing(0.0, [1.0, 1.0], [[1, 1, 1, 1]] * 2)
    serial = run_step(plan(mb=2, overlap=False, dispatch=d, combine=c)).end_s
    overlapped = run_step(plan(mb=2, overlap=True, dispatch=d, combine=c)).end_s
    one = run_step(plan(mb=1, dispatch=d, combine=c)).end_s
    assert one == pytest.approx(1.5 + 2 + 4 + 1)
    assert serial == pytest.approx(2 * one)  # no overlap: one micro-batch in flight at a time
    # grouped: mb1's front runs during mb0's dispatch (1.5..3.0); mb0's experts at 3.5..7.5; mb1's
    # dispatch waits for the engines (3.5..5.5), its experts after mb0's (7.5..11.5), its combine 11.5..12.5
    assert overlapped == pytest.approx(12.5)


def test_messages_runtime_computes_own_rows_first_and_shards_before_fronts():
    """messages: a GPU's own rows (1 s) run right after its front; a landed shard goes before the next
    micro-batch's front. Shards land 2 s after the dispatch starts, in one chunk of 2 s of work."""
    d = timing(0.0, [2.0, 2.0], [[2, 2, 2, 2]] * 2)
    c = timing(0.0, [0.5, 0.5], [[0.5] * 4] * 2)
    runs = np.zeros((2, 4, 5))
    runs[:, 0, 4] = 2.0  # the remote rows of a micro-batch, all landed at once
    rec = run_step(plan(mb=2, dispatch=d, combine=c, runs=runs, runtime="messages", local=[1.0, 1.0]))
    # t 0: front mb0 [0, 1.5] (posts at 1.5); its own rows [1.5, 2.5]; nothing landed: front mb1
    # [2.5, 4.0]; then the earliest key first, as the runtime's queue: mb0's shard (landed at 3.5)
    # [4.0, 6.0], then mb1's own rows with its shard, which has landed by then (engines free at 3.5, its
    # dispatch starts at 4.0 and lands at 6.0) [6.0, 9.0]; mb1's combine starts at 9.0 and lands at 9.5
    assert spans(rec, 0) == [("ATTENTION", 0.0, 1.0), ("GATE", 1.0, 1.5), ("EXPERT", 1.5, 2.5),
                             ("ATTENTION", 2.5, 3.5), ("GATE", 3.5, 4.0), ("EXPERT", 4.0, 6.0),
                             ("EXPERT", 6.0, 9.0)]
    assert rec.end_s == pytest.approx(9.5)


def test_without_layer_pipeline_a_layer_is_a_barrier_across_micro_batches():
    """Two MoE layers, two micro-batches with different attention costs: without pipelining mb0 starts
    layer 1 only when mb1 finished layer 0; with it, as soon as its own combine is summed."""
    d = timing(0.0, [0.0, 0.0], [[0, 0, 0, 0]] * 2)
    c = timing(0.0, [0.0, 0.0], [[0, 0, 0, 0]] * 2)
    runs = linear_runs(2, 4, 0.0)
    cheap = LayerCosts(tokens=1, attention_s=1.0, attention_tp_comm_s=0.0, gate_s=0.0, dense_ffn_s=0.0,
                       shared_expert_s=0.0)
    costly = LayerCosts(tokens=1, attention_s=3.0, attention_tp_comm_s=0.0, gate_s=0.0, dense_ffn_s=0.0,
                        shared_expert_s=0.0)

    def step(pipeline):
        p = plan(pattern=(0, 0), mb=2, dispatch=d, combine=c, runs=runs, pipeline=pipeline, runtime="messages")
        return run_step(StepPlan(**{**p.__dict__, "costs": (cheap, costly)}))

    base, piped = step(False), step(True)
    att = [s for s in spans(base, 0) if s[0] == "ATTENTION"]
    assert att == [("ATTENTION", 0.0, 1.0), ("ATTENTION", 1.0, 4.0), ("ATTENTION", 4.0, 5.0), ("ATTENTION", 5.0, 8.0)]
    att = [s for s in spans(piped, 0) if s[0] == "ATTENTION"]
    # pipelined: mb0's layer 1 (ready at 1) runs before mb1's layer 0 front (the earlier layer wins only
    # among ready fronts): both orders give the same end here, the total attention work
    assert piped.end_s == pytest.approx(base.end_s) == pytest.approx(8.0)
    assert {s[1] for s in att} >= {0.0, 1.0}


def bare(nodes=1, gpn=1, layers=2, dense=2, phase="prefill", tokens=256, ctx=256, mb=1):
    """A scenario whose compute is pure FLOPs at the peak rates: no GEMM table, no launch cost, HBM and
    links so fast that bytes take no time."""
    return build_scenario({
        "model": {"preset": "tiny", "layers": layers, "dense_layers": dense},
        "cluster": {"preset": "h800-ib", "nodes": nodes, "gpus_per_node": gpn, "gemm_table": [],
                    "launch_overhead_us": 0.0, "message_overhead_us": 0.0, "hbm_GBps": 1e15,
                    "nvlink_latency_us": 0.0, "nic_latency_us": 0.0, "comm_copy_GBps": 0.0},
        "placement": {"strategy": "contiguous"},
        "workload": {"phase": phase, "tokens_per_gpu": tokens, "context_len": ctx},
        "schedule": {"micro_batches": mb}, "sim": {"link_timeline": False}})


def test_one_gpu_step_is_flops_over_peak():
    s = bare()
    m, a, T = s.model, s.model.attention, 256
    h, qk = a.heads, a.head_dim + a.rope_dim
    proj = 2 * T * (m.hidden * (a.kv_latent + a.rope_dim) + m.hidden * a.q_latent + a.q_latent * h * qk
                    + a.kv_latent * h * (a.head_dim + a.v_head_dim) + h * a.v_head_dim * m.hidden)
    keys = (256 + 1) / 2
    core = 2 * T * h * (qk + a.v_head_dim) * keys
    ffn = 3 * 2 * T * m.hidden * m.dense_hidden
    fp8, bf16 = s.cluster.fp8_TFLOPS * 1e12, s.cluster.bf16_TFLOPS * 1e12
    expect = m.layers * ((proj + ffn) / fp8 + core / bf16)
    r = run(s).result
    assert r.step_time_s == pytest.approx(expect, rel=1e-9)
    assert r.tokens_per_s == pytest.approx(T / expect, rel=1e-9)
