"""Loading scenarios: presets, overrides, profile files, hashing."""

from __future__ import annotations

import pytest
import yaml
from conftest import ROOT, small_spec

from moe.errors import SpecError
from moe.spec import load_scenario, parse_override, preset_names, scenario_dict, spec_hash


@pytest.mark.parametrize("model", preset_names("model"))
@pytest.mark.parametrize("cluster", preset_names("cluster"))
def test_every_preset_pair_resolves(model, cluster):
    s = load_scenario({"model": {"preset": model}, "cluster": {"preset": cluster}}, check=False)
    assert s.model.preset == model and s.cluster.preset == cluster


def test_presets_are_the_published_configs():
    ds = load_scenario({"model": {"preset": "deepseek-v3"}}, check=False).model
    assert (ds.layers, ds.dense_layers, ds.hidden, ds.expert_hidden, ds.experts, ds.top_k) == (
        61, 3, 7168, 2048, 256, 8)
    assert (ds.groups, ds.topk_groups, ds.route_scale, ds.attention.kv_latent, ds.attention.rope_dim) == (
        8, 4, 2.5, 512, 64)
    paper = load_scenario({"model": {"preset": "paper"}}, check=False).model
    assert (paper.layers, paper.dense_layers, paper.hidden, paper.expert_hidden, paper.experts, paper.top_k) == (
        61, 3, 7168, 18432, 256, 8)
    assert paper.attention.heads * paper.attention.head_dim == 7168 and paper.dtype == "fp8"


def test_quickstart_loads():
    s = load_scenario(ROOT / "experiments" / "quickstart.yaml")
    assert s.name == "quickstart" and s.cluster.gpus == 32


def test_user_keys_override_preset_keys():
    s = load_scenario(small_spec(model={"experts": 32, "attention": {"heads": 8}},
                                 placement={"strategy": "contiguous"}))
    assert s.model.experts == 32 and s.model.attention.heads == 8
    assert s.model.attention.kv_latent == 64  # the rest of the section still comes from the tiny preset


@pytest.mark.parametrize(("text", "key", "value"), [
    ("cluster.nodes=4", "cluster.nodes", 4),
    ("cluster.nvlink_GBps=150.5", "cluster.nvlink_GBps", 150.5),
    ("schedule.overlap=false", "schedule.overlap", False),
    ("name=my run", "name", "my run"),
    ("workload.routing.trace=", "workload.routing.trace", ""),
])
def test_override_values_are_typed(text, key, value):
    assert parse_override(text) == (key, value)


def test_overrides_apply_and_validate():
    s = load_scenario(small_spec(), ["cluster.nodes=2", "placement.strategy=contiguous",
                                     "schedule.micro_batches=4", "workload.routing.skew=1.5"])
    assert (s.cluster.nodes, s.schedule.micro_batches, s.workload.routing.skew) == (2, 4, 1.5)
    with pytest.raises(SpecError, match="cluster.nodes='two'"):
        load_scenario(small_spec(), ["cluster.nodes=two"])


def test_spec_hash_ignores_key_order_and_name():
    a = small_spec(schedule={"overlap": True, "micro_batches": 2})
    b = dict(reversed(list(small_spec(schedule={"micro_batches": 2, "overlap": True}).items())))
    b["name"] = "another name"
    assert spec_hash(load_scenario(a)) == spec_hash(load_scenario(b))
    assert spec_hash(load_scenario(a)) != spec_hash(load_scenario(a, ["seed=1"]))


def test_a_profile_file_can_stand_for_the_cluster_preset(tmp_path):
    profile = yaml.safe_load((ROOT / "moe/spec/presets/clusters/h100-nvlink.yaml").read_text())
    profile["nvlink_GBps"] = 123.0
    (tmp_path / "measured.yaml").write_text(yaml.safe_dump(profile))
    spec = small_spec(cluster={"preset": "measured.yaml", "nodes": 4, "gpus_per_node": 4})
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    s = load_scenario(tmp_path / "spec.yaml")
    assert s.cluster.nvlink_GBps == 123.0 and s.cluster.preset == "measured.yaml"


def test_resolved_scenario_round_trips():
    s = load_scenario(small_spec())
    again = load_scenario(scenario_dict(s))
    assert again == s and spec_hash(again) == spec_hash(s)
