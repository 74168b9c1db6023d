"""MLA vs MHA figure: KV-cache bytes per token -> the largest decode batch that fits in GPU memory at
each context length -> decode throughput at that batch.

KV bytes per token over all layers come from Result.kv_cache_bytes_per_token (moe.spec.sizes); the batch
is the derived `workload.tokens_per_gpu` (moe.sweep.derive.max_fitting); contexts where not even the
smallest batch fits, or fewer sequences than micro-batches, are crossed on the axis.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from moe.plots.common import MARKERS, SERIES_COLORS, figure, infeasible, mark_infeasible, ok, series


def mla_vs_mha(df) -> dict[str, Figure]:
    fig, axes = figure(1, 3, 4.6, 3.8)
    good = ok(df)
    kinds = list(dict.fromkeys(df["model.attention.kind"].tolist()))
    mb = int(df["schedule.micro_batches"].iloc[0])
    kv = [good[good["model.attention.kind"] == k]["kv_cache_bytes_per_token"] for k in kinds]
    kv_kb = [float(v.iloc[0]) / 1e3 if len(v) else np.nan for v in kv]
    axes[0, 0].bar(kinds, kv_kb, color=SERIES_COLORS[: len(kinds)])
    for i, v in enumerate(kv_kb):
        if np.isfinite(v):
            axes[0, 0].annotate(f"{v:,.0f} KB", (i, v), textcoords="offset points", xytext=(0, 3), ha="center")
    axes[0, 0].set_ylabel("KV cache per token, all layers (KB)")
    axes[0, 0].set_yscale("log")
    for i, (kind, rows) in enumerate(series(df, "model.attention.kind")):
        style = {"marker": MARKERS[i], "color": SERIES_COLORS[i], "label": kind}
        fit = ok(rows).sort_values("workload.context_len")
        axes[0, 1].plot(fit["workload.context_len"], fit["workload.tokens_per_gpu"], **style)
        axes[0, 2].plot(fit["workload.context_len"], fit["tokens_per_s_per_gpu"], **style)
        for ax in axes[0, 1:]:
            mark_infeasible(ax, infeasible(rows)["workload.context_len"], f"{kind}: < {mb} sequences fit")
    axes[0, 1].set_ylabel("largest batch that fits (sequences/GPU)")
    axes[0, 2].set_ylabel("decode tokens/s per GPU")
    for ax in axes[0, 1:]:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (tokens)")
        ax.legend(fontsize=8)
    axes[0, 1].set_yscale("log", base=2)
    axes[0, 2].set_ylim(bottom=0)
    ep = int(df["cluster.nodes"].iloc[0] * df["cluster.gpus_per_node"].iloc[0])
    fig.suptitle(f"MLA vs MHA in decode: {df['model.preset'].iloc[0]}, EP {ep}, "
                 f"{df['cluster.memory_GB'].iloc[0]:.0f} GB per GPU")
    return {"mla_vs_mha": fig}
