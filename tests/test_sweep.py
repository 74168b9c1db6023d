"""Sweep files: parsing, axis expansion, derived keys, and bad input (exit 2 naming the axis, nothing run)."""

from __future__ import annotations

import pytest
import yaml
from conftest import ROOT

from moe.cli.main import main
from moe.errors import SpecError
from moe.spec import sizes
from moe.sweep import expand, load_sweep, parse_sweep, sweep_points

BASE = {"model": {"preset": "tiny"}, "cluster": {"nodes": 2, "gpus_per_node": 4},
        "placement": {"strategy": "contiguous"}, "workload": {"tokens_per_gpu": 64, "context_len": 64}}


def sweep(**body) -> dict:
    return {"name": "t", "base": BASE, **body}


def test_grid_is_a_product_first_axis_slowest_and_zip_pairs():
    s = parse_sweep(sweep(axes={"grid": {"workload.routing.skew": [0.0, 1.0], "schedule.micro_batches": [1, 2]},
                                "zip": {"schedule.comm": ["direct", "hierarchical"], "cluster.nodes": [2, 4]}}))
    points = expand(s)
    assert len(points) == 2 * 2 * 2
    head = {"workload.routing.skew": 0.0, "schedule.micro_batches": 1}
    assert [p.values for p in points[:3]] == [
        {**head, "schedule.comm": "direct", "cluster.nodes": 2},
        {**head, "schedule.comm": "hierarchical", "cluster.nodes": 4},
        {**head, "schedule.micro_batches": 2, "schedule.comm": "direct", "cluster.nodes": 2}]
    assert points[-1].scenario.workload.routing.skew == 1.0 and points[-1].scenario.cluster.nodes == 4
    assert [p.index for p in points] == list(range(8))
    assert len({p.spec_hash for p in points}) == 8


def test_several_zip_groups_multiply_and_set_applies_to_the_base():
    phases = {"workload.phase": ["prefill", "decode"], "workload.tokens_per_gpu": [64, 8]}
    s = parse_sweep(sweep(set={"workload.steps": 3}, axes={"zip": [{"cluster.nodes": [2, 4]}, phases]}))
    points = expand(s)
    assert len(points) == 4
    assert {(p.scenario.cluster.nodes, p.scenario.workload.phase, p.scenario.workload.tokens_per_gpu)
            for p in points} == {(2, "prefill", 64), (2, "decode", 8), (4, "prefill", 64), (4, "decode", 8)}
    assert all(p.scenario.workload.steps == 3 for p in points)


def test_no_axes_is_one_point_and_base_may_be_a_file(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "one", "base": str(ROOT / "experiments/quickstart.yaml")}))
    points = sweep_points(load_sweep(path))
    assert len(points) == 1 and points[0].scenario.model.preset == "deepseek-v3"


def test_infeasible_points_carry_their_reason_and_are_not_bad_input():
    s = parse_sweep(sweep(axes={"grid": {"placement.strategy": ["contiguous", "one_per_gpu"]}}))
    ok, bad = expand(s)
    assert ok.infeasible == ""
    assert bad.infeasible.startswith("placement.strategy='one_per_gpu': needs model.experts (16) <= GPUs (8)")


def test_max_fitting_is_the_largest_batch_that_fits():
    s = parse_sweep(sweep(set={"workload.phase": "decode", "workload.tokens_per_gpu": 100000,
                               "cluster.memory_GB": 0.004},
                          axes={"grid": {"workload.context_len": [64, 512]}},
                          derive={"workload.tokens_per_gpu": "max_fitting"}))
    for p in expand(s):
        b = p.values["workload.tokens_per_gpu"]
        assert p.scenario.workload.tokens_per_gpu == b
        cap = p.scenario.cluster.memory_GB * 1e9
        assert sizes.memory_per_gpu(p.scenario)["total_bytes"] <= cap
        bigger = p.scenario.model_copy(update={"workload": p.scenario.workload.model_copy(
            update={"tokens_per_gpu": b + 1})})
        assert sizes.memory_per_gpu(bigger)["total_bytes"] > cap
    small, large = expand(s)
    assert small.values["workload.tokens_per_gpu"] > large.values["workload.tokens_per_gpu"]


def test_max_fitting_respects_the_upper_bound_and_reports_nothing_fits():
    s = parse_sweep(sweep(set={"workload.phase": "decode", "workload.tokens_per_gpu": 5},
                          axes={"grid": {"cluster.memory_GB": [80.0, 0.0001]}},
                          derive={"workload.tokens_per_gpu": "max_fitting"}))
    roomy, tiny = expand(s)
    assert roomy.values["workload.tokens_per_gpu"] == 5 and not roomy.infeasible
    assert "nothing fits" in tiny.infeasible


BAD = [
    ({"axes": {"grid": {"model.foo": [1, 2]}}}, "axes.grid.model.foo=[1, 2]: model.foo is not a scenario key"),
    ({"axes": {"grid": {"workload.routing.skew": []}}}, "axes.grid.workload.routing.skew=[]: empty axis"),
    ({"axes": {"zip": {"cluster.nodes": [2, 4], "schedule.comm": ["direct"]}}},
     "axes.zip.schedule.comm=['direct']: zip axes have different lengths: schedule.comm has 1 value, "
     "cluster.nodes has 2 values"),
    ({"axes": {"zip": [{"cluster.nodes": [2]}, {"schedule.comm": ["direct", "x"], "workload.steps": [1]}]}},
     "axes.zip[1].workload.steps=[1]: zip axes have different lengths"),
    ({"axes": {"grid": {"workload.phase": ["prefill", "sideways"]}}}, "axes.grid.workload.phase='sideways': input"),
    ({"axes": {"grid": {"cluster.nodes": "2"}}}, "axes.grid.cluster.nodes='2': an axis is a list of values"),
    ({"axes": {"grid": {"cluster.nodes": [2]}, "zip": {"cluster.nodes": [4]}}},
     "axes.zip.cluster.nodes=[4]: overlaps the axis axes.grid.cluster.nodes"),
    ({"axes": {"grid": {"workload": [1]}}}, "axes.grid.workload=1: input should be a valid dictionary"),
    ({"axes": {"grid": {"model..x": [1]}}}, "axes.grid.model..x='model..x': expected a scenario key path"),
    ({"axes": {"diagonal": {}}}, "axes.diagonal={}: unknown axes kind"),
    ({"axis": {}}, "axis={}: unknown sweep key"),
    ({"derive": {"workload.tokens_per_gpu": "guess"}}, "derive.workload.tokens_per_gpu='guess': unknown derivation"),
    ({"derive": {"workload.nope": "max_fitting"}}, "derive.workload.nope='max_fitting': workload.nope is not"),
    ({"measures": ["vibes"]}, "measures[0]='vibes': unknown measure"),
    ({"base": "missing.yaml"}, "base='missing.yaml': scenario file not found"),
    ({"base": {**BASE, "model": {"preset": "huge"}}}, "base='model.preset': the base scenario does not validate"),
    ({"traces": "some"}, "traces='some': expected true, false or a list"),
]


@pytest.mark.parametrize(("body", "message"), BAD, ids=[m.split("=")[0] for _, m in BAD])
def test_bad_sweep_exits_2_naming_the_axis_before_anything_runs(tmp_path, capsys, body, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(sweep(**body)))
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moetb sweep: error: " + message), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_bad_jobs_and_missing_file_exit_2(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(sweep()))
    assert main(["sweep", str(path), "--jobs", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--jobs=0" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "nope.yaml")]) == 2


def test_shipped_experiments_expand_without_error():
    names = ["ep_scaling", "placement", "overlap", "load_balance", "mla_vs_mha", "hierarchical_vs_direct"]
    counts = {}
    for name in names:
        s = load_sweep(ROOT / "experiments" / f"{name}.yaml")
        assert s.name == name and s.plot == name and s.backend == "sim"
        counts[name] = len(expand(s))
    assert counts == {"ep_scaling": 28, "placement": 16, "overlap": 12, "load_balance": 6, "mla_vs_mha": 14,
                      "hierarchical_vs_direct": 16}


def test_spec_errors_are_spec_errors():
    with pytest.raises(SpecError):
        parse_sweep(["not", "a", "mapping"])


def test_fast_settings_build_the_same_scenario_as_the_loader():
    from moe.spec import spec_hash
    from moe.spec.loader import apply_override, build_scenario

    for name in ("ep_scaling", "mla_vs_mha", "placement"):
        s = load_sweep(ROOT / "experiments" / f"{name}.yaml")
        for p in expand(s)[::5]:
            raw = yaml.safe_load(yaml.safe_dump(s.base_raw))
            for key, value in p.values.items():
                apply_override(raw, key, value)
            assert spec_hash(build_scenario(raw, (), s.base_dir, check=False)) == p.spec_hash


def test_preset_axes_go_through_the_loader():
    s = parse_sweep(sweep(axes={"grid": {"cluster.preset": ["h800-ib", "h100-ib"]}}))
    a, b = expand(s)
    assert a.scenario.cluster.nvlink_GBps != b.scenario.cluster.nvlink_GBps  # the preset's values, not the base's
    assert b.scenario.cluster.nodes == 2  # the base's own setting still wins over the preset


def test_a_failed_derivation_leaves_the_key_empty_in_the_table(tmp_path):
    from moe.sweep import read_table, run_sweep

    path = tmp_path / "s.yaml"
    body = sweep(set={"workload.phase": "decode"}, derive={"workload.tokens_per_gpu": "max_fitting"},
                 axes={"grid": {"cluster.memory_GB": [80.0, 0.0001]}})
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    assert run_sweep(path, out=tmp_path / "out") == 0
    df = read_table(tmp_path / "out")
    assert list(df["status"]) == ["ok", "infeasible"]
    assert df["workload.tokens_per_gpu"][0] == 64 and df["workload.tokens_per_gpu"].isna()[1]


def test_sweep_and_plots_import_no_simulator_mpi_torch_or_plotting():
    import subprocess
    import sys

    code = ("import sys, moe.sweep, moe.plots; "
            "bad = {'simpy', 'mpi4py', 'torch', 'matplotlib', 'pandas', 'pyarrow'} & set(sys.modules); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
