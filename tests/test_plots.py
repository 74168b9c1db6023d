"""`moetb plot`: every family's figures from the small sweeps, trace figures, and what the panels plot."""

from __future__ import annotations

import numpy as np
import pytest
from test_sweep_small import small_results

from moe.cli.main import main
from moe.plots import family_figures
from moe.plots.traces import bin_means, gantt, link_heatmap, read_trace
from moe.sweep import read_table

PNG = b"\x89PNG\r\n\x1a\n"
EXPECTED = {
    "ep_scaling": ["ep_scaling"],
    "placement": ["placement", "links_point5", "gantt_point5"],
    "overlap": ["overlap", "links_point4", "gantt_point4"],
    "load_balance": ["load_balance"],
    "mla_vs_mha": ["mla_vs_mha"],
    "hierarchical_vs_direct": ["hierarchical_vs_direct"],
    "validation": ["validation"],
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_plot_writes_the_family_figures_as_png(tmp_path, name, capsys):
    assert main(["plot", str(small_results() / name), "--out", str(tmp_path)]) == 0
    written = sorted(p.stem for p in tmp_path.glob("*.png"))
    assert written == sorted(EXPECTED[name])
    for p in tmp_path.glob("*.png"):
        data = p.read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000
    if name == "validation":
        table = (tmp_path / "validation.md").read_text().splitlines()
        assert len(table) == 4 and "| emu |" in table[2] + table[3] and "+" in table[2] + table[3]


def test_ep_scaling_panels_plot_the_table_columns():
    df = read_table(small_results() / "ep_scaling")
    fig = family_figures(df, "ep_scaling", [])["ep_scaling"]
    prefill = df[(df["workload.phase"] == "prefill") & (df["status"] == "ok") & (df["workload.routing.skew"] == 0.0)]
    line = fig.axes[0].lines[0]
    assert list(line.get_xdata()) == list(prefill["cluster.nodes"] * prefill["cluster.gpus_per_node"])
    assert np.allclose(line.get_ydata(), prefill["tokens_per_s_per_gpu"])
    crosses = fig.axes[0].collections[0].get_offsets()[:, 0]
    assert list(crosses) == [4]  # the EP 4 prefill point does not fit in memory
    # the breakdown panels' ticks: the whole transfer time, hidden or not (not the breakdown's waits)
    ok = df[df["status"] == "ok"]
    moved = set(np.round((ok["extra.dispatch_transfer_s"] + ok["extra.combine_transfer_s"]) * 1e3, 9))
    ticks = [y for ax in fig.axes[2:] for c in ax.collections for y in c.get_offsets()[:, 1]]
    assert ticks and all(round(float(y), 9) in moved for y in ticks)


def test_load_balance_panels_are_the_per_step_measures():
    df = read_table(small_results() / "load_balance")
    fig = family_figures(df, "load_balance", [])["load_balance"]
    bias = df[df["workload.load_balance.method"] == "bias"].iloc[0]
    ys = [ln.get_ydata() for ln in fig.axes[0].lines if ln.get_label() == "bias"][0]
    assert np.allclose(ys, bias["measure.step_gpu_imbalance"])


def test_empty_table_writes_nothing_and_says_so(tmp_path, capsys):
    from moe.sweep import run_sweep

    (tmp_path / "v.yaml").write_text("name: v\nmeasured: nothing-here\n")
    assert run_sweep(tmp_path / "v.yaml", out=tmp_path / "out") == 0
    err = capsys.readouterr().err
    assert "no emu measurements committed" in err and "no real measurements committed" in err
    assert main(["plot", str(tmp_path / "out")]) == 0
    assert "no completed points (0 rows); no figures written" in capsys.readouterr().err
    assert not (tmp_path / "out" / "figures").exists()


def test_plot_of_a_missing_table_exits_2(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "results=" in capsys.readouterr().err


def test_bin_means_integrate_the_held_counter_values():
    t_S, v_S = np.array([0.0, 1.0, 2.0]), np.array([1.0, 0.5, 0.0])
    means = bin_means(t_S, v_S, np.array([0.0, 0.5, 1.5, 3.0]))
    assert np.allclose(means, [1.0, 0.75, 0.25 / 1.5])
    assert np.allclose(bin_means(np.array([1.0]), np.array([0.8]), np.array([0.0, 1.0, 2.0])), [0.0, 0.8])


def test_trace_figures_read_the_chrome_trace():
    folder = small_results() / "overlap"
    df = read_table(folder)
    trace = read_trace(folder / df["trace"].dropna().iloc[0])
    fig = gantt(trace)
    lanes = {(e["pid"], e["tid"]) for e in trace["traceEvents"] if e.get("ph") == "X"}
    assert len(fig.axes[0].get_yticks()) == len(lanes)
    heat = link_heatmap(trace)
    links = {e["name"] for e in trace["traceEvents"] if e.get("ph") == "C"}
    assert heat.axes[0].images[0].get_array().shape[0] == len(links)
    no_counters = {"traceEvents": [e for e in trace["traceEvents"] if e.get("ph") != "C"]}
    assert link_heatmap(no_counters) is None
