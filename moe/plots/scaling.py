"""Scaling figures: throughput per GPU and what limits it as EP grows (ep_scaling, hierarchical_vs_direct),
and a generic figure for sweeps of any other family.

Per-MoE-layer breakdown on the critical GPU (Result.breakdown): attention + gate + expert is compute-stream
time, `exposed_comm_s` the time that stream waits for communication; their sum is about `moe_layer_s`.
The whole communication time, hidden or not, is the simulator's `extra.dispatch_transfer_s +
combine_transfer_s` (tables written before those columns: `breakdown.dispatch_s + combine_s`, which the
simulator then defined that way; they are now the waits, as in the runtimes).
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from moe.plots.common import (
    MARKERS,
    PHASE_COLORS,
    SERIES_COLORS,
    figure,
    gpus,
    infeasible,
    link_kind,
    mark_infeasible,
    ok,
    series,
)

STACK = (("attention", "breakdown.attention_s"), ("gate", "breakdown.gate_s"), ("expert", "breakdown.expert_s"),
         ("exposed comm", "breakdown.exposed_comm_s"))
"""exposed comm: the compute stream idles, waiting for its own transfers or for a slower GPU's."""


def _log2_gpus(ax, xs) -> None:
    ax.set_xscale("log", base=2)
    ticks = sorted(set(int(x) for x in xs))
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("GPUs (EP degree)")


def breakdown_bars(ax, rows, offset: float = 0.0, width: float = 0.7, hatch: str | None = None,
                   suffix: str = "") -> None:
    """Stacked per-MoE-layer compute and exposed communication (ms) at x = 0, 1, ... (+ offset), with
    the whole communication time (module docstring) as black ticks."""
    xs = np.arange(len(rows)) + offset
    bottom = np.zeros(len(rows))
    for label, col in STACK:
        ms = rows[col].to_numpy(dtype=float) * 1e3
        ax.bar(xs, ms, width, bottom=bottom, color=PHASE_COLORS[label], hatch=hatch, edgecolor="white",
               label=label + suffix)
        bottom += ms
    comm = rows["breakdown.dispatch_s"] + rows["breakdown.combine_s"]
    if "extra.dispatch_transfer_s" in rows:  # the simulator's (module docstring)
        moved = rows["extra.dispatch_transfer_s"] + rows["extra.combine_transfer_s"]
        comm = moved.where(moved.notna(), comm)
    comm = comm.to_numpy(dtype=float) * 1e3
    ax.scatter(xs, comm, marker="_", s=200, color="k", zorder=4, label="dispatch + combine" if not hatch else None)
    ax.set_ylabel("ms per MoE layer (critical GPU)")


def ep_scaling(df) -> dict[str, Figure]:
    """Top: tokens/s per GPU vs GPUs, one panel per phase and one line per routing skew, each point
    labelled with its bottleneck link class; EP degrees that do not fit are crossed on the axis.
    Bottom: per-MoE-layer breakdown per EP degree, one bar per skew (hatched: the second)."""
    phases = list(dict.fromkeys(df["workload.phase"].tolist()))
    skews = list(dict.fromkeys(df["workload.routing.skew"].tolist())) if "workload.routing.skew" in df else [None]
    fig, axes = figure(2, len(phases), 5.8, 4.0)
    for j, phase in enumerate(phases):
        sel = df[df["workload.phase"] == phase]
        ax, bars = axes[0, j], axes[1, j]
        ep_all = sorted(set(gpus(ok(sel))))
        width = 0.8 / len(skews)
        for i, skew in enumerate(skews):
            rows = sel if skew is None else sel[sel["workload.routing.skew"] == skew]
            good = ok(rows).sort_values("cluster.nodes")
            x = gpus(good)
            label = "" if skew is None else f"zipf skew {skew}"
            ax.plot(x, good["tokens_per_s_per_gpu"], marker=MARKERS[i], color=SERIES_COLORS[i], label=label or None)
            for xi, yi, link in zip(x, good["tokens_per_s_per_gpu"], good["max_link"], strict=True):
                ax.annotate(link_kind(link), (xi, yi), textcoords="offset points", xytext=(0, 6 if i == 0 else -12),
                            ha="center", fontsize=7, color=SERIES_COLORS[i])
            if i == 0:
                mark_infeasible(ax, gpus(infeasible(rows)), "does not fit in GPU memory")
            good = good.set_index(gpus(good).to_numpy()).reindex(ep_all)
            breakdown_bars(bars, good, offset=(i - (len(skews) - 1) / 2) * width, width=width,
                           hatch="//" if i else None, suffix=f" ({label})" if i and label else "")
        _log2_gpus(ax, list(gpus(ok(sel))) + list(gpus(infeasible(sel))))
        ax.set_ylim(bottom=0)
        ax.set_ylabel("tokens/s per GPU")
        ax.set_title(f"{phase}, {sel['workload.tokens_per_gpu'].iloc[0]} tokens per GPU (labels: bottleneck link)",
                     fontsize=9)
        ax.legend(fontsize=8)
        bars.set_xticks(np.arange(len(ep_all)), [str(int(g)) for g in ep_all])
        bars.set_xlabel("GPUs (EP degree)" + (f"; plain bars: zipf skew {skews[0]}" if len(skews) > 1 else ""))
    axes[1, 0].legend(fontsize=7, ncols=2, loc="center right")
    fig.suptitle(f"EP scaling: {df['model.preset'].iloc[0]} model on {df['cluster.preset'].iloc[0]}")
    return {"ep_scaling": fig}


def hierarchical_vs_direct(df) -> dict[str, Figure]:
    """Per skew: tokens/s per GPU (top) and the most loaded link's MB per MoE layer (bottom) vs GPUs, one
    line per transfer scheme."""
    skews = list(dict.fromkeys(df["workload.routing.skew"].tolist()))
    fig, axes = figure(2, len(skews), 5.2, 3.8)
    for j, skew in enumerate(skews):
        sel = ok(df[df["workload.routing.skew"] == skew])
        for i, (comm, rows) in enumerate(series(sel, "schedule.comm")):
            rows = rows.sort_values("cluster.nodes")
            x = gpus(rows)
            style = {"marker": MARKERS[i], "color": SERIES_COLORS[i], "label": comm}
            axes[0, j].plot(x, rows["tokens_per_s_per_gpu"], **style)
            axes[1, j].plot(x, rows["max_link_bytes"] / 1e6, **style)
            for xi, yi, link in zip(x, rows["max_link_bytes"] / 1e6, rows["max_link"], strict=True):
                axes[1, j].annotate(link_kind(link), (xi, yi), textcoords="offset points", xytext=(0, 5),
                                    ha="center", fontsize=7, color=SERIES_COLORS[i])
        for row in range(2):
            _log2_gpus(axes[row, j], gpus(sel))
            axes[row, j].set_ylim(bottom=0)
            axes[row, j].legend(fontsize=8)
        axes[0, j].set_title(f"zipf skew {skew}")
        axes[0, j].set_ylabel("tokens/s per GPU")
        axes[1, j].set_ylabel("most loaded link, MB per MoE layer")
    fig.suptitle(f"direct vs hierarchical transfers: {df['model.preset'].iloc[0]}, "
                 f"{df['workload.phase'].iloc[0]}")
    return {"hierarchical_vs_direct": fig}


def generic(df, axes_keys: list[str]) -> dict[str, Figure]:
    """Any sweep: tokens/s per GPU and step time against the first axis, one line per value of the second."""
    good = ok(df)
    if not axes_keys or not len(good):
        return {}
    x_key = axes_keys[0]
    fig, axes = figure(1, 2)
    groups = series(good, axes_keys[1]) if len(axes_keys) > 1 else [("", good)]
    for i, (value, rows) in enumerate(groups):
        rows = rows.sort_values(x_key)
        label = f"{axes_keys[1]}={value}" if len(axes_keys) > 1 else None
        style = {"marker": MARKERS[i % len(MARKERS)], "color": SERIES_COLORS[i % len(SERIES_COLORS)], "label": label}
        xs = rows[x_key].astype(str) if rows[x_key].dtype == object else rows[x_key]
        axes[0, 0].plot(xs, rows["tokens_per_s_per_gpu"], **style)
        axes[0, 1].plot(xs, rows["step_time_s"] * 1e3, **style)
    axes[0, 0].set_ylabel("tokens/s per GPU")
    axes[0, 1].set_ylabel("step time (ms)")
    for ax in axes[0]:
        ax.set_xlabel(x_key)
        if len(axes_keys) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(str(df["sweep"].iloc[0]))
    return {"sweep": fig}
