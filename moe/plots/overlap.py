"""Overlap figure: per phase, the MoE layer time at 1/2/4 micro-batches with layer pipelining off and on,
split into compute-stream time and exposed communication (Result.moe_layer_s, breakdown.exposed_comm_s),
with the step-time speed-up over one micro-batch without pipelining written above each bar."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from moe.plots.common import PHASE_COLORS, figure, ok


def overlap(df) -> dict[str, Figure]:
    good = ok(df)
    phases = list(dict.fromkeys(good["workload.phase"].tolist()))
    fig, axes = figure(1, len(phases), 5.6, 4.0)
    for j, phase in enumerate(phases):
        ax = axes[0, j]
        sel = good[good["workload.phase"] == phase].sort_values(["schedule.micro_batches", "schedule.layer_pipeline"])
        mbs = sorted(set(sel["schedule.micro_batches"]))
        base = sel[(sel["schedule.micro_batches"] == mbs[0]) & (~sel["schedule.layer_pipeline"].astype(bool))]
        base_step = float(base["step_time_s"].iloc[0]) if len(base) else float("nan")
        width = 0.38
        for k, pipeline in enumerate((False, True)):
            rows = sel[sel["schedule.layer_pipeline"].astype(bool) == pipeline].set_index("schedule.micro_batches")
            rows = rows.reindex(mbs)
            xs = np.arange(len(mbs)) + (k - 0.5) * width
            exposed = rows["breakdown.exposed_comm_s"].to_numpy(dtype=float) * 1e3
            busy = rows["moe_layer_s"].to_numpy(dtype=float) * 1e3 - exposed
            hatch = "//" if pipeline else None
            label = "layer pipelining" if pipeline else "no pipelining"
            ax.bar(xs, busy, width, color=PHASE_COLORS["expert"], hatch=hatch, edgecolor="white",
                   label=f"compute, {label}")
            ax.bar(xs, exposed, width, bottom=busy, color=PHASE_COLORS["exposed comm"], hatch=hatch,
                   edgecolor="white", label=f"exposed comm, {label}")
            for x, top, step in zip(xs, busy + exposed, rows["step_time_s"].to_numpy(dtype=float), strict=True):
                if np.isfinite(step):
                    ax.annotate(f"{base_step / step:.2f}x", (x, top), textcoords="offset points", xytext=(0, 3),
                                ha="center", fontsize=7)
        ax.set_xticks(np.arange(len(mbs)), [str(m) for m in mbs])
        ax.set_xlabel("micro-batches")
        ax.set_ylabel("ms per MoE layer (critical GPU)")
        tokens = sel["workload.tokens_per_gpu"].iloc[0]
        ax.set_title(f"{phase}, {tokens} tokens per GPU (labels: step speed-up)")
    axes[0, 0].legend(fontsize=7)
    ep = int(good["cluster.nodes"].iloc[0] * good["cluster.gpus_per_node"].iloc[0])
    fig.suptitle(f"overlap: {df['model.preset'].iloc[0]}, EP {ep}")
    return {"overlap": fig}
