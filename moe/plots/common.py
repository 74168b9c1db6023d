"""Shared pieces of the sweep figures: row selection, units, colours, the 'does not fit' markers.

Figures are `matplotlib.figure.Figure` objects built without pyplot (no global state, no display needed),
so the same functions serve `moetb plot` (PNG files) and the notebooks (shown inline).
"""

from __future__ import annotations

import re

from matplotlib.figure import Figure

PHASE_COLORS = {"attention": "#4C72B0", "gate": "#8172B2", "expert": "#55A868", "dispatch": "#DD8452",
                "combine": "#C44E52", "exposed comm": "#937860", "dense_ffn": "#64B5CD", "shared_expert": "#8C8C8C",
                "attention_tp": "#2A4A80"}
SERIES_COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B2", "#937860", "#DA8BC3", "#8C8C8C")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def figure(rows: int = 1, cols: int = 1, width: float = 5.2, height: float = 3.8, **kw):
    """A Figure and its axes grid (always 2-D) of rows x cols panels, each width x height inches."""
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, **kw)
    return fig, axes


def ok(df):
    return df[df["status"] == "ok"]


def infeasible(df):
    return df[df["status"] == "infeasible"]


def gpus(df):
    """GPUs of each row: cluster.nodes x cluster.gpus_per_node."""
    return df["cluster.nodes"] * df["cluster.gpus_per_node"]


def link_kind(name: object) -> str:
    """'nic_out[g37]' -> 'nic_out' (the link class that bottlenecks)."""
    return re.sub(r"\[.*\]$", "", name) if isinstance(name, str) and name else "-"


def short_reason(text: object, width: int = 60) -> str:
    """The reason part of an infeasible point's error, shortened for a label."""
    if not isinstance(text, str):
        return ""
    reason = text.split(": ", 1)[-1]
    return reason if len(reason) <= width else reason[: width - 3] + "..."


def mark_infeasible(ax, xs, label: str = "does not fit / infeasible") -> None:
    """Crosses on the bottom edge of a panel at the x positions of infeasible points."""
    xs = list(xs)
    if not xs:
        return
    ax.scatter(xs, [0.02] * len(xs), marker="x", color="#C44E52", transform=ax.get_xaxis_transform(),
               clip_on=False, zorder=5, label=label)


def series(df, key: str):
    """(value, rows) per distinct value of column `key`, in first-seen order."""
    for value in dict.fromkeys(df[key].tolist()):
        yield value, df[df[key] == value]

