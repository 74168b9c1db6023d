"""`moetb place`: one row per strategy in text, one JSON object keyed by strategy, exit 2 on bad input."""

from __future__ import annotations

import json

import pytest

from moe.cli.main import main
from moe.placement import STRATEGIES

SPEC = """name: place-cli
model: {preset: tiny, experts: 12, groups: 1, topk_groups: 1}
cluster: {preset: h800-ib, nodes: 4, gpus_per_node: 4}
placement: {strategy: one_per_gpu, search_iters: 30}
workload: {tokens_per_gpu: 32, context_len: 32, routing: {distribution: zipf, skew: 1.2}}
"""


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "place.yaml"
    path.write_text(SPEC)
    return str(path)


def test_json_has_every_strategy(spec, capsys):
    assert main(["place", spec, "--json"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out)
    assert set(data) == set(STRATEGIES)
    for name, row in data.items():
        assert row["max_link"].split("[")[0] in ("nvlink_out", "nvlink_in", "nic_out", "nic_in", "leaf_up",
                                                 "leaf_down"), name
        assert row["max_link_bytes"] > 0 and row["inter_node_bytes"] > 0
        assert row["expert_load_imbalance"] >= 1.0 and row["memory_per_gpu_bytes"] > 0
    assert data["one_per_gpu"]["replicas"] == 4  # the 16 - 12 spare GPUs
    assert data["topology_aware"]["max_link_time_s"] <= min(data["contiguous"]["max_link_time_s"],
                                                            data["random"]["max_link_time_s"])


def test_text_has_a_row_per_strategy_and_says_when_one_cannot_apply(spec, capsys):
    assert main(["place", spec, "--set", "model.experts=32", "--set", "placement.strategy=contiguous"]) == 0
    out = capsys.readouterr().out
    for name in STRATEGIES:
        assert any(line.startswith(name) for line in out.splitlines())
    assert "one_per_gpu     not applicable" in out and "experts (32) <= GPUs (16)" in out


@pytest.mark.parametrize("override,key", [
    ("workload.routing.skew=-1", "workload.routing.skew"),
    ("placement.replicas=9", "placement.replicas"),
    ("placement.strategy=nearest", "placement.strategy"),
])
def test_bad_input_exits_2_in_one_line(spec, capsys, override, key):
    assert main(["place", spec, "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"moetb place: error: {key}=")
