"""The sim backend end to end: determinism, Result consistency, bytes conserved, trace, CLI, options."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ROOT, small_spec

from moe.cli.main import main
from moe.placement import contiguous
from moe.routing import expert_ids
from moe.spec import sizes
from moe.spec.loader import build_scenario
from moe.topology import build_topology
from moe.traffic import compute_traffic
from sim.backend import run, simulate
from sim.events import Op, is_wait


def small(**sections):
    base = {"placement": {"strategy": "contiguous"}, "workload": {"tokens_per_gpu": 256, "context_len": 256}}
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v}
    return build_scenario(small_spec(**base))


def test_same_scenario_same_result_apart_from_wall_time():
    s = small(workload={"routing": {"distribution": "zipf", "skew": 1.0}})
    a, b = run(s).result.to_dict(), run(s).result.to_dict()
    assert a.pop("wall_s") >= 0 and b.pop("wall_s") >= 0
    assert a == b


def test_result_fields_are_consistent():
    s = small()
    r = run(s).result
    g, t = s.cluster.gpus, s.workload.tokens_per_gpu
    assert r.backend == "sim" and r.spec_hash and r.spec["name"] == s.name
    assert r.tokens_per_s == pytest.approx(g * t / r.step_time_s)
    assert r.tokens_per_s_per_gpu == pytest.approx(t / r.step_time_s)
    assert 0 < r.moe_layer_s * s.model.moe_layers < r.step_time_s
    assert all(v >= 0 for v in r.breakdown.model_dump().values())
    assert r.breakdown.expert_s > 0 and r.breakdown.dispatch_s > 0 and r.breakdown.combine_s > 0
    assert r.kv_cache_bytes_per_token == sizes.kv_cache_bytes_per_token(s.model)
    assert r.peak_memory_bytes_per_gpu == sizes.memory_per_gpu(s, 1)["total_bytes"]
    assert r.extra["critical_gpu"] in range(g)


def test_breakdown_is_the_busiest_gpus_as_the_runtimes_critical_rank():
    """Skewed routing without overlap: every GPU ends the step at about the same time (the collectives join
    them), but the one holding the hot expert computes longest; the breakdown is its (emu.report's critical
    rank: the most time computing), not that of whichever GPU happens to finish last."""
    s = small(workload={"routing": {"distribution": "zipf", "skew": 1.2}},
              schedule={"overlap": False, "micro_batches": 1})
    _, [(_, record, _, _)] = simulate(s)
    cols = record.spans.columns()
    work = ~is_wait(cols["op"])
    busy_G = np.bincount(cols["gpu"][work], weights=(cols["end"] - cols["start"])[work], minlength=s.cluster.gpus)
    expert = cols["op"] == int(Op.EXPERT)
    expert_G = np.bincount(cols["gpu"][expert], weights=(cols["end"] - cols["start"])[expert],
                           minlength=s.cluster.gpus)
    assert expert_G.max() > 1.2 * expert_G.min()  # the skew makes one GPU the straggler
    critical = run(s).result.extra["critical_gpu"]
    assert critical == int(np.argmax(busy_G))
    assert record.gpu_end[critical] <= max(record.gpu_end)


def test_bytes_are_conserved_between_traffic_and_result():
    s = small(workload={"routing": {"distribution": "zipf", "skew": 1.2}})
    r = run(s).result
    topo = build_topology(s.cluster)
    t = compute_traffic(s, topo, contiguous(s), expert_ids(s, 0))
    link = topo.link_names.index(r.max_link)
    assert r.max_link_bytes == pytest.approx(t.link_bytes_L[link])  # every micro-batch, both phases
    busy = t.link_bytes_L / topo.link_capacity_Bps
    assert busy[link] == pytest.approx(busy.max())  # the bottleneck is the link busy longest
    assert r.inter_node_bytes == pytest.approx(t.inter_node_bytes)
    assert r.expert_load_imbalance == pytest.approx(t.imbalance)


def test_trace_has_compute_and_comm_lanes_and_link_counters():
    s = small()
    out = run(s)
    lanes = {(sp.rank, sp.lane) for sp in out.trace.spans}
    for g in out.trace.rank_names:
        assert (g, "compute") in lanes and (g, "comm") in lanes
    assert {sp.name for sp in out.trace.spans} >= {"attention", "gate", "expert", "dispatch", "combine"}
    assert out.trace.samples and all(0 <= x.values["utilisation"] <= 1 + 1e-9 for x in out.trace.samples)
    quiet = run(small(sim={"link_timeline": False}))
    assert not quiet.trace.samples
    assert quiet.result.step_time_s == out.result.step_time_s


@pytest.mark.parametrize("over", [
    {"sim": {"network": "analytic"}},
    {"schedule": {"comm": "direct"}},
    {"workload": {"phase": "decode", "tokens_per_gpu": 32, "context_len": 512}},
    {"parallel": {"attention_tp": 2}, "model": {"shared_experts": 1}},
    {"schedule": {"micro_batches": 1, "layer_pipeline": True}},
])
def test_options_run_and_give_sane_results(over):
    r = run(small(**over)).result
    assert 0 < r.step_time_s < 1.0
    assert r.breakdown.expert_s > 0


def test_analytic_and_flow_are_close_on_uniform_routing():
    flow = run(small()).result.step_time_s
    analytic = run(small(sim={"network": "analytic"})).result.step_time_s
    assert analytic == pytest.approx(flow, rel=0.1)


def test_bias_balancing_over_steps_lists_every_step():
    s = small(workload={"steps": 3, "routing": {"distribution": "zipf", "skew": 1.0},
                        "load_balance": {"method": "bias", "gamma": 0.5}})
    r = run(s).result
    assert len(r.step_time_s_all) == 3 and r.step_time_s == r.step_time_s_all[-1]


def test_layer_samples_follow_layer_variation():
    assert run(small()).result.extra["layer_samples"] == 1
    varied = small(model={"layers": 5, "dense_layers": 1}, workload={"routing": {"layer_variation": 0.5}})
    assert run(varied).result.extra["layer_samples"] == 4
    assert run(small(sim={"layer_samples": 2})).result.extra["layer_samples"] == 2


def test_cli_runs_the_simulator(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text(json.dumps(small_spec(placement={"strategy": "contiguous"})))
    assert main(["run", str(spec), "--backend", "sim", "--out", str(tmp_path / "o"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["backend"] == "sim" and printed["step_time_s"] > 0
    assert json.loads((tmp_path / "o" / "result.json").read_text())["spec_hash"] == printed["spec_hash"]
    events = json.loads((tmp_path / "o" / "trace.json").read_text())["traceEvents"]
    assert any(e.get("ph") == "C" for e in events) and any(e.get("cat") == "comm" for e in events)
    assert main(["run", str(spec), "--out", str(tmp_path / "h")]) == 0
    text = capsys.readouterr().out
    assert "throughput" in text and "bottleneck link" in text


def test_quickstart_runs_small(tmp_path, capsys):
    """The demo's scenario, shrunk to two nodes (the demo itself runs it at four)."""
    assert main(["run", str(ROOT / "experiments/quickstart.yaml"), "--set", "cluster.nodes=2",
                 "--set", "model.layers=8", "--out", str(tmp_path)]) == 0
    assert "tokens/s" in capsys.readouterr().out
    r = json.loads((tmp_path / "result.json").read_text())
    assert np.isfinite(r["step_time_s"]) and r["max_link"]
