"""Small versions of the shipped experiments (tiny model, a few CPU-sized 'GPUs'), run once per test session
and shared by the plot and notebook tests; the tests here check that each produces the rows its figures
read. Each small sweep keeps its experiment's name, figure family and axis keys."""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

import yaml

from moe.result import Result
from moe.sweep import read_table, run_sweep

TINY = {"model": {"preset": "tiny"}, "cluster": {"preset": "h800-ib", "nodes": 2, "gpus_per_node": 4},
        "placement": {"strategy": "contiguous"},
        "workload": {"tokens_per_gpu": 64, "context_len": 64, "routing": {"distribution": "zipf", "skew": 0.5}},
        "sim": {"link_timeline": False}}
MOE_LAYERS_TINY = 2  # tiny: 3 layers, the first dense

SMALL = {
    "ep_scaling": {
        "base": {**TINY, "cluster": {**TINY["cluster"], "memory_GB": 0.0033}},  # 4 GPUs x 4 experts: too big
        "axes": {"grid": {"workload.routing.skew": [0.0, 0.5]},
                 "zip": [{"cluster.nodes": [1, 2, 4],
                          "placement.strategy": ["contiguous", "contiguous", "one_per_gpu"]},
                         {"workload.phase": ["prefill", "decode"], "workload.tokens_per_gpu": [64, 8]}]}},
    "placement": {
        "base": TINY,
        "axes": {"grid": {"workload.routing.skew": [0.0, 1.0]},
                 "zip": {"placement.strategy": ["contiguous", "replicate_hot", "topology_aware"],
                         "placement.replicas": [0, 4, 4], "placement.search_iters": [1, 1, 50]}},
        "set": {"sim.link_timeline": True}, "traces": [5]},
    "overlap": {
        "base": TINY, "set": {"sim.link_timeline": True},
        "axes": {"grid": {"schedule.micro_batches": [1, 2], "schedule.layer_pipeline": [False, True]},
                 "zip": {"workload.phase": ["prefill", "decode"], "workload.tokens_per_gpu": [64, 16]}},
        "traces": [4]},
    "load_balance": {
        "base": TINY, "set": {"workload.steps": 4, "workload.load_balance.gamma": 0.5},
        "axes": {"grid": {"workload.routing.skew": [1.0],
                          "workload.load_balance.method": ["none", "bias", "capacity"]}},
        "measures": ["per_step_load"]},
    "mla_vs_mha": {
        "base": {**TINY, "cluster": {**TINY["cluster"], "memory_GB": 0.004},
                 "workload": {**TINY["workload"], "phase": "decode", "tokens_per_gpu": 512}},
        "axes": {"grid": {"model.attention.kind": ["mla", "mha"], "workload.context_len": [64, 256, 4096]}},
        "derive": {"workload.tokens_per_gpu": "max_fitting"}},
    "hierarchical_vs_direct": {
        "base": TINY,
        "axes": {"grid": {"workload.routing.skew": [0.0], "cluster.nodes": [2, 4],
                          "schedule.comm": ["direct", "hierarchical"]}}},
}


def write_measurements(folder: Path, root: Path) -> None:
    """Fake committed measurements for the validation sweep: sim Results of two tiny scenarios relabelled
    as emu/real with step times 7% and -3% off (test data, never committed)."""
    from moe.backends import load_backend
    from moe.spec import load_scenario

    sim = load_backend("sim")
    for case, (backend, factor) in {"a": ("emu", 1.07), "b": ("real", 0.97)}.items():
        s = load_scenario({**TINY, "name": f"case-{case}"})
        r = sim.run(s).result.to_dict()
        r.update(backend=backend, machine="test box", step_time_s=r["step_time_s"] * factor,
                 moe_layer_s=r["moe_layer_s"] * factor)
        Result.model_validate(r)
        out = folder / case / backend / "result.json"
        out.parent.mkdir(parents=True)
        out.write_text(json.dumps(r))
        (folder / case / "validate.json").write_text("[]")  # other JSON files are skipped


def make_small(root: Path, name: str) -> Path:
    """Write and run the small sweep `name` under root; returns its output folder."""
    if name == "validation":
        write_measurements(root / "measured", root)
        body = {"name": name, "plot": name, "measured": "measured"}
    else:
        body = {"name": name, "plot": name, **SMALL[name]}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    out = root / "results" / name
    assert run_sweep(path, out=out) == 0
    return out


@functools.lru_cache(maxsize=1)
def small_results() -> Path:
    """Every small sweep, run once per session: <tmp>/results/<name>/."""
    root = Path(tempfile.mkdtemp(prefix="moetb-small-"))
    atexit.register(shutil.rmtree, root, True)
    for name in [*SMALL, "validation"]:
        make_small(root, name)
    return root / "results"


def test_small_sweeps_have_the_rows_their_figures_read():
    results = small_results()
    ep = read_table(results / "ep_scaling")
    assert len(ep) == 12 and set(ep["status"]) == {"ok", "infeasible"}
    bad = ep[ep["status"] == "infeasible"]
    assert set(zip(bad["cluster.nodes"], bad["workload.phase"], strict=True)) == {(1, "prefill")}
    assert all("cluster.memory_GB" in e for e in bad["error"])
    lb = read_table(results / "load_balance")
    assert all(len(v) == 4 for v in lb["measure.step_gpu_imbalance"])
    mla = read_table(results / "mla_vs_mha").set_index(["model.attention.kind", "workload.context_len"])
    assert mla.loc[("mla", 4096), "workload.tokens_per_gpu"] > mla.loc[("mha", 64), "workload.tokens_per_gpu"] or \
        mla.loc[("mha", 4096), "status"] == "infeasible"
    val = read_table(results / "validation")
    assert sorted(val["measured.backend"]) == ["emu", "real"]
    by = val.set_index("measured.backend")
    assert abs(by.loc["emu", "rel_error.step_time_s"] - (1 / 1.07 - 1)) < 1e-9
    assert abs(by.loc["real", "rel_error.step_time_s"] - (1 / 0.97 - 1)) < 1e-9
    assert by["measured.spec_unchanged"].all()
