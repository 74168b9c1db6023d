"""Derived quantities against hand calculation."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT

from moe.cli.main import main
from moe.spec import load_scenario, sizes


def paper(**over):
    spec = {"model": {"preset": "paper", **over}, "cluster": {"preset": "h800-ib", "nodes": 32}}
    return load_scenario(spec)


def test_block_scales_and_linear_bytes():
    assert sizes.block_scale_count(128, 128) == 1 and sizes.block_scale_count(129, 256) == 4
    # 7168 x 18432 FP8 weight: payload + (56 x 144 blocks) x 4 B
    assert sizes.linear_weight_bytes(7168, 18432, "fp8") == 7168 * 18432 + 56 * 144 * 4
    assert sizes.linear_weight_bytes(7168, 18432, "bf16") == 7168 * 18432 * 2


def test_paper_expert_by_hand():
    m = paper().model
    assert sizes.expert_params(m) == 3 * 7168 * 18432 == 396_361_728
    assert sizes.expert_weight_bytes(m) == 396_361_728 + 3 * 56 * 144 * 4


def test_kv_cache_mla_is_a_small_fraction_of_mha():
    m = paper().model
    # MLA: (kv_latent 512 + rope 64) x 2 B per layer; MHA: 128 heads x (56 + 56) x 2 B per layer; 61 layers
    assert sizes.kv_cache_bytes_per_token(m) == (512 + 64) * 2 * 61 == 70_272
    mha = paper(attention={"kind": "mha"}).model
    assert sizes.kv_cache_bytes_per_token(mha) == 128 * (56 + 56) * 2 * 61 == 1_748_992
    assert sizes.kv_cache_bytes_per_token(m) / sizes.kv_cache_bytes_per_token(mha) < 0.05


def test_attention_params_by_hand():
    m = paper().model
    mla = 7168 * 1536 + 1536 * 128 * (56 + 64) + 7168 * (512 + 64) + 512 * 128 * (56 + 56) + 128 * 56 * 7168
    assert sizes.attention_params(m) == mla
    mha = paper(attention={"kind": "mha"}).model
    assert sizes.attention_params(mha) == 4 * 7168 * 128 * 56


def test_wire_bytes_per_token():
    s = paper()
    # routing meta (slot and weight of each of the 8 choices), FP8 payload, one float32 scale per 128 channels
    assert sizes.dispatch_bytes_per_token(s) == 8 * 8 + 7168 + 56 * 4
    assert sizes.combine_bytes_per_token(s) == 7168 * 2  # BF16


def test_deepseek_v3_totals_match_the_published_671b_37b():
    m = load_scenario({"model": {"preset": "deepseek-v3"}}, check=False).model
    assert sizes.model_params(m) == pytest.approx(671e9, rel=0.01)
    assert sizes.activated_params_per_token(m) == pytest.approx(37e9, rel=0.03)


def test_memory_per_gpu_parts_add_up_and_scale_with_slots():
    s = load_scenario({"model": {"preset": "deepseek-v3"}, "cluster": {"nodes": 4},
                       "placement": {"strategy": "contiguous"}})
    mem = sizes.memory_per_gpu(s)
    assert mem["total_bytes"] == sum(v for k, v in mem.items() if k != "total_bytes")
    assert mem["routed_expert_bytes"] == 58 * 8 * sizes.expert_weight_bytes(s.model)  # 256 experts / 32 GPUs
    more = sizes.memory_per_gpu(s, slots=9)
    assert more["routed_expert_bytes"] - mem["routed_expert_bytes"] == 58 * sizes.expert_weight_bytes(s.model)


def test_mla_kv_is_replicated_under_tp_but_mha_is_split():
    base = {"model": {"preset": "deepseek-v3"}, "cluster": {"nodes": 4}, "placement": {"strategy": "contiguous"},
            "workload": {"phase": "decode", "tokens_per_gpu": 16, "context_len": 4096}}
    s1 = load_scenario(base)
    s4 = load_scenario(base, ["parallel.attention_tp=4"])
    assert sizes.kv_cache_bytes_per_gpu(s4) == 4 * sizes.kv_cache_bytes_per_gpu(s1)
    m1 = load_scenario(base, ["model.attention.kind=mha"], check=False)
    m4 = load_scenario(base, ["model.attention.kind=mha", "parallel.attention_tp=4"], check=False)
    assert sizes.kv_cache_bytes_per_gpu(m4) == sizes.kv_cache_bytes_per_gpu(m1)


def test_describe_json_is_one_object_with_derived_quantities(capsys):
    assert main(["describe", str(ROOT / "experiments/quickstart.yaml"), "--json",
                 "--set", "model.preset=paper", "--set", "cluster.nodes=32",
                 "--set", "placement.strategy=one_per_gpu"]) == 0
    data = json.loads(capsys.readouterr().out)
    d = data["derived"]
    assert d["kv_cache_bytes_per_token_mla"] == 70_272 and d["kv_mla_over_mha"] < 0.05
    assert d["memory_per_gpu"]["total_bytes"] < d["memory_capacity_bytes"]
