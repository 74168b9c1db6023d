"""Placement and load-balancing figures.

placement: for each strategy, against routing skew: the most loaded link's bytes per MoE layer, the step
time, and the expert-load imbalance (max/mean routed tokens per GPU).
load_balance: against the step number, per method: load imbalance per GPU (measure.step_gpu_imbalance),
step time (Result.step_time_s_all) and the fraction of requests dropped (measure.step_dropped_fraction).
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from moe.plots.common import MARKERS, SERIES_COLORS, figure, ok, series


def placement(df) -> dict[str, Figure]:
    good = ok(df)
    fig, axes = figure(1, 3, 4.6, 3.8)
    panels = (("max_link_bytes", 1e-6, "most loaded link, MB per MoE layer"), ("step_time_s", 1e3, "step time (ms)"),
              ("expert_load_imbalance", 1.0, "expert load imbalance (max/mean per GPU)"))
    for i, (strategy, rows) in enumerate(series(good, "placement.strategy")):
        rows = rows.sort_values("workload.routing.skew")
        replicas = int(rows["placement.replicas"].iloc[0])
        label = strategy + (f" (+{replicas} replicas)" if replicas else "")
        for ax, (col, scale, _) in zip(axes[0], panels, strict=True):
            ax.plot(rows["workload.routing.skew"], rows[col] * scale, marker=MARKERS[i], color=SERIES_COLORS[i],
                    label=label)
    for ax, (_, _, ylabel) in zip(axes[0], panels, strict=True):
        ax.set_xlabel("zipf skew of expert popularity")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
    axes[0, 0].legend(fontsize=8)
    gpu_count = int(good["cluster.nodes"].iloc[0] * good["cluster.gpus_per_node"].iloc[0]) if len(good) else 0
    fig.suptitle(f"placement under skew: {df['model.preset'].iloc[0]}, EP {gpu_count}, "
                 f"{df['workload.phase'].iloc[0]}")
    return {"placement": fig}


def load_balance(df) -> dict[str, Figure]:
    good = ok(df)
    skews = list(dict.fromkeys(good["workload.routing.skew"].tolist()))
    fig, axes = figure(len(skews), 3, 4.6, 3.4)
    for r, skew in enumerate(skews):
        sel = good[good["workload.routing.skew"] == skew]
        for i, (method, row) in enumerate(series(sel, "workload.load_balance.method")):
            row = row.iloc[0]
            style = {"color": SERIES_COLORS[i], "label": method}
            imb = np.asarray(row["measure.step_gpu_imbalance"], dtype=float)
            steps = np.arange(len(imb))
            axes[r, 0].plot(steps, imb, **style)
            times = np.asarray(row["step_time_s_all"] or [row["step_time_s"]], dtype=float) * 1e3
            axes[r, 1].plot(np.arange(len(times)), times, **style)
            axes[r, 2].plot(steps, 100 * np.asarray(row["measure.step_dropped_fraction"], dtype=float), **style)
        axes[r, 0].set_ylabel(f"skew {skew}\nload imbalance (max/mean per GPU)")
        axes[r, 1].set_ylabel("step time (ms)")
        axes[r, 2].set_ylabel("requests dropped (%)")
        axes[r, 0].axhline(1.0, color="0.6", lw=0.8)
        for ax in axes[r]:
            ax.set_xlabel("step")
            ax.set_ylim(bottom=0)
        axes[r, 0].legend(fontsize=8)
    gamma = df["workload.load_balance.gamma"].iloc[0]
    factor = df["workload.load_balance.capacity_factor"].iloc[0]
    fig.suptitle(f"load balancing over steps: bias (gamma {gamma}) vs capacity (factor {factor}) vs none "
                 f"- MoE layer 0 of {df['model.preset'].iloc[0]}")
    return {"load_balance": fig}
