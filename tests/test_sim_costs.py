"""Compute cost model of the simulator: GEMM table and roofline, memory-bound ops, attention, experts."""

from __future__ import annotations

import numpy as np
import pytest

from moe.spec.loader import build_scenario
from moe.spec.schema import GemmPoint
from sim import costs
from sim.gemm import gemm_efficiency, gemm_time_s, memory_time_s


def scenario(**sections):
    spec = {"model": {"preset": "deepseek-v3"}, "cluster": {"preset": "h800-ib", "nodes": 32},
            "workload": {"tokens_per_gpu": 4096, "context_len": 4096}}
    for k, v in sections.items():
        spec[k] = {**spec.get(k, {}), **v}
    return build_scenario(spec)


def bare_cluster(**over):
    """A profile without a GEMM table, for roofline arithmetic by hand."""
    c = scenario().cluster
    return c.model_copy(update={"gemm_table": (), **over})


def test_table_points_are_reproduced_exactly():
    """Points of equal weight size and M (7168x18432 and 18432x7168 at M=4096) share their mean rate."""
    c = scenario().cluster
    for p in c.gemm_table:
        same = [q.TFLOPS for q in c.gemm_table if q.m == p.m and q.k * q.n == p.k * p.n]
        expect = 2 * p.m * p.k * p.n / (np.mean(same) * 1e12)
        assert float(gemm_time_s(c, p.m, p.k, p.n)) == pytest.approx(expect, rel=1e-9)


def test_small_m_gemms_are_far_below_peak_and_time_is_monotonic_in_m():
    c = scenario().cluster
    m = np.array([1, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 65536])
    t = gemm_time_s(c, m, 7168, 2048)
    assert np.all(np.diff(t) >= 0)
    assert float(gemm_time_s(c, 128, 7168, 2048)) > 10 * 2 * 128 * 7168 * 2048 / (c.fp8_TFLOPS * 1e12)
    # below the smallest measured M the time is held at that point's time (weights and latency dominate)
    assert float(gemm_time_s(c, 16, 7168, 2048)) == pytest.approx(float(gemm_time_s(c, 128, 7168, 2048)))
    # far above, the rate stays at the largest point's rate: time proportional to M
    assert float(gemm_time_s(c, 65536, 7168, 2048)) == pytest.approx(4 * float(gemm_time_s(c, 16384, 7168, 2048)))


def test_roofline_without_table_is_flops_over_peak_or_bytes_over_hbm_plus_launch():
    c = bare_cluster(hbm_GBps=1e9, launch_overhead_us=0.0)  # effectively infinite memory bandwidth
    assert float(gemm_time_s(c, 1000, 2000, 3000)) == pytest.approx(2 * 1000 * 2000 * 3000 / (c.fp8_TFLOPS * 1e12))
    assert float(gemm_time_s(c, 1000, 2000, 3000, "bf16")) == pytest.approx(
        2 * 1000 * 2000 * 3000 / (c.bf16_TFLOPS * 1e12))
    slow = bare_cluster(hbm_GBps=1.0, launch_overhead_us=5.0)  # 1 GB/s: memory-bound
    nbytes = 10 * 4096 + 4096 * 4096 + 10 * 4096 * 2
    assert float(gemm_time_s(slow, 10, 4096, 4096)) == pytest.approx(nbytes / 1e9 + 5e-6)
    assert float(gemm_time_s(slow, 0, 4096, 4096)) == 0.0


def test_memory_bound_op_is_bytes_over_hbm_plus_launch():
    c = scenario().cluster
    assert float(memory_time_s(c, c.hbm_GBps * 1e9)) == pytest.approx(1.0 + c.launch_overhead_us * 1e-6)
    assert float(memory_time_s(c, 0)) == 0.0


def test_prefill_attention_core_is_quadratic_in_context_per_sequence():
    bare = bare_cluster(hbm_GBps=1e9, launch_overhead_us=0.0)
    s1 = scenario(workload={"context_len": 4096}).model_copy(update={"cluster": bare})
    s2 = scenario(workload={"context_len": 8192, "tokens_per_gpu": 8192}).model_copy(update={"cluster": bare})
    one, two = costs.MicroBatch(4096, 1, 4096, 4096), costs.MicroBatch(8192, 1, 8192, 8192)
    # per token the keys double, so one sequence of twice the length costs four times as much
    assert costs.attention_core_s(s2, two) / costs.attention_core_s(s1, one) == pytest.approx(4.0, rel=1e-3)
    a = s1.model.attention
    keys = (4096 + 1) / 2  # causal: the average query sees half its sequence
    flops = 2 * a.heads * (a.head_dim + a.rope_dim + a.v_head_dim) * 4096 * keys
    assert costs.attention_core_s(s1, one) == pytest.approx(flops / (bare.bf16_TFLOPS * 1e12))
    # the second half of a sequence (a chunk after 2048 cached tokens) sees 2048 + 2049/2 keys per query
    late = costs.MicroBatch(2048, 1, 2048, 4096)
    assert costs.attention_core_s(s1, late) == pytest.approx(
        2 * a.heads * (a.head_dim + a.rope_dim + a.v_head_dim) * 2048 * (2048 + 2049 / 2) / (bare.bf16_TFLOPS * 1e12))


def test_micro_batches_follow_the_runtime_layout():
    """Whole sequences per micro-batch when there are enough; else chunks of every sequence, each after
    the previous one and attending to the keys up to its end; a prompt shorter than context_len is one
    sequence of its own length."""
    whole = costs.micro_batches(scenario(workload={"tokens_per_gpu": 8192, "context_len": 2048}))
    assert [(m.tokens, m.sequences, m.keys, m.after) for m in whole] == [(4096, 2, 2048, None)] * 2
    chunks = costs.micro_batches(scenario(workload={"tokens_per_gpu": 1024, "context_len": 4096}))
    assert [(m.tokens, m.new, m.keys, m.after) for m in chunks] == [(512, 512, 512, None), (512, 512, 1024, 0)]
    decode = costs.micro_batches(scenario(workload={"phase": "decode", "tokens_per_gpu": 64, "context_len": 999}))
    assert [(m.tokens, m.sequences, m.new, m.keys) for m in decode] == [(32, 32, 1, 999)] * 2


def test_decode_attention_reads_the_latent_cache_and_tp_does_not_shrink_it():
    over = {"workload": {"phase": "decode", "tokens_per_gpu": 16, "context_len": 32768},
            "model": {"attention": {"heads": 16}}}  # few heads: clearly memory-bound
    s = scenario(**over)
    c, m = s.cluster, s.model
    rows, keys = 64, 32768
    cache = rows * keys * (m.attention.kv_latent + m.attention.rope_dim) * 2
    mb = costs.MicroBatch(rows, rows, 1, keys)
    assert costs.attention_core_s(s, mb) == pytest.approx(float(memory_time_s(c, cache)))
    # TP 4: each GPU runs the group's 4x rows at 1/4 of the heads, but reads the whole group's latent cache
    s4 = s.model_copy(update={"parallel": s.parallel.model_copy(update={"attention_tp": 4})})
    assert costs.attention_core_s(s4, mb) == pytest.approx(float(memory_time_s(c, 4 * cache)))


def test_attention_tp_pays_its_nvlink_collectives():
    s = scenario(parallel={"attention_tp": 4})
    c, m = s.cluster, s.model
    one = ((3 * 1024 * m.hidden * 2) / (c.nvlink_GBps * 1e9) + 3 * c.nvlink_latency_us * 1e-6
           + c.launch_overhead_us * 1e-6)
    assert costs.attention_tp_comm_s(s, 1024) == pytest.approx(2 * one)
    assert costs.attention_tp_comm_s(scenario(), 1024) == 0.0


def test_grouped_expert_kernel_pays_the_fixed_cost_once():
    s = scenario()
    one_slot = float(costs.expert_s(s, [1024.0]))
    eight_slots = float(costs.expert_s(s, [128.0] * 8))
    # eight experts of 128 tokens: the rate of M = 1024 plus seven more experts' weights
    extra = 7 * costs.expert_weight_bytes(s.model) / (s.cluster.hbm_GBps * 1e9)
    assert eight_slots == pytest.approx(one_slot + extra)
    assert eight_slots < 8 * float(costs.expert_s(s, [128.0]))
    assert float(costs.expert_s(s, [0.0, 0.0])) == 0.0


def test_layer_costs_scale_with_tokens():
    s = scenario(model={"shared_experts": 1})
    small, big = (costs.layer_costs(s, costs.MicroBatch(t, 1, t, t), t) for t in (1024, 4096))
    for name in ("attention_s", "gate_s", "dense_ffn_s", "shared_expert_s", "pack_s", "combine_sum_s"):
        assert 0 < getattr(small, name) < getattr(big, name)


def test_points_of_another_dtype_never_change_a_gemm():
    """The emulator engineer's failure: slow BF16 points (an attention product, ~10x below the GEMM
    rate) added to the table moved the FP8 experts' times. Families are per dtype now."""
    c = scenario().cluster
    m = np.array([16, 128, 1024, 8192])
    before = gemm_time_s(c, m, 7168, 4096)
    slow = [GemmPoint(m=q, k=64, n=4096, dtype="bf16", TFLOPS=5.0) for q in (128, 1024, 8192)]
    after = gemm_time_s(c.model_copy(update={"gemm_table": c.gemm_table + tuple(slow)}), m, 7168, 4096)
    assert np.array_equal(before, after)
    # and BF16 GEMMs of a table without BF16 points stay on the BF16 roofline (with the launch cost)
    assert float(gemm_time_s(c, 4096, 7168, 7168, "bf16")) == pytest.approx(
        2 * 4096 * 7168 * 7168 / (c.bf16_TFLOPS * 1e12) + c.launch_overhead_us * 1e-6)


def test_a_gemm_between_two_families_of_its_dtype_interpolates_in_log_weight():
    c = scenario().cluster  # fp8 families: 7168 x 2048 and 7168 x 18432
    lo, hi, mid = (gemm_efficiency(c, 1024, 7168, n) for n in (2048, 18432, 6144))
    frac = (np.log2(7168 * 6144) - np.log2(7168 * 2048)) / (np.log2(7168 * 18432) - np.log2(7168 * 2048))
    assert float(mid) == pytest.approx(float(lo + frac * (hi - lo)))
