"""Figures from one Chrome trace (trace.json, moe.result.trace): a link-utilisation heatmap from the
counter samples, and a Gantt chart of one step from the spans.

Trace format: "X" events are spans (pid = rank, tid = lane, ts/dur in microseconds); "C" events are
counter samples (one counter per link, args.utilisation in [0, 1]) that hold their value until the next
sample of the same counter; "M" events name processes and threads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from moe.plots.common import PHASE_COLORS, SERIES_COLORS, figure

HEATMAP_BINS = 600
OTHER_COLOR = "#BBBBBB"


def read_trace(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def _names(events: list[dict]) -> tuple[dict[int, str], dict[tuple[int, int], str]]:
    procs, threads = {}, {}
    for e in events:
        if e.get("ph") != "M":
            continue
        if e["name"] == "process_name":
            procs[e["pid"]] = e["args"]["name"]
        elif e["name"] == "thread_name":
            threads[(e["pid"], e["tid"])] = e["args"]["name"]
    return procs, threads


def link_series(trace: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Counter name -> (times in s, utilisation), sorted by time."""
    raw: dict[str, list[tuple[float, float]]] = {}
    for e in trace["traceEvents"]:
        if e.get("ph") == "C":
            value = next(iter(e["args"].values()), 0.0)
            raw.setdefault(e["name"], []).append((e["ts"] * 1e-6, float(value)))
    out = {}
    for name, pts in raw.items():
        arr = np.array(sorted(pts))
        out[name] = (arr[:, 0], arr[:, 1])
    return out


def bin_means(t_S: np.ndarray, v_S: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Mean over each [edges[i], edges[i+1]) of the step function that holds v_S[s] from t_S[s] (0 before
    the first sample): the integral F(t) = sum of v x time up to t, differenced at the edges."""
    cum = np.concatenate([[0.0], np.cumsum(v_S[:-1] * np.diff(t_S))])
    idx = np.searchsorted(t_S, edges, side="right") - 1
    held = np.where(idx >= 0, v_S[np.clip(idx, 0, None)], 0.0)
    F = np.where(idx >= 0, cum[np.clip(idx, 0, None)] + held * (edges - t_S[np.clip(idx, 0, None)]), 0.0)
    return np.diff(F) / np.diff(edges)


def _end_s(trace: dict) -> float:
    ends = [(e["ts"] + e.get("dur", 0.0)) * 1e-6 for e in trace["traceEvents"] if e.get("ph") in ("X", "C")]
    return max(ends) if ends else 0.0


def link_heatmap(trace: dict, title: str = "", zoom_layers: int = 2) -> Figure | None:
    """Links (rows) x time (columns), colour = utilisation averaged over each time bin, for the whole
    step (top) and for the window of the first `zoom_layers` MoE layers (bottom, as in `gantt`); None
    when the trace has no link counters (sim.link_timeline off, or a backend that records none)."""
    series = link_series(trace)
    if not series:
        return None
    names = sorted(series)
    windows = [(0.0, _end_s(trace))]
    zoom = zoom_window(trace, zoom_layers)
    if zoom is not None:
        windows.append(zoom)
    fig, axes = figure(len(windows), 1, 11, 0.3 * len(names) + 1.4)
    for ax, (t0, t1) in zip(axes[:, 0], windows, strict=True):
        edges = np.linspace(t0, t1, HEATMAP_BINS + 1)
        util_LB = np.vstack([bin_means(*series[n], edges) for n in names])
        im = ax.imshow(util_LB, aspect="auto", interpolation="nearest", vmin=0, vmax=1, cmap="magma",
                       extent=(t0 * 1e3, t1 * 1e3, len(names) - 0.5, -0.5))
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xlabel("time in the step (ms)")
        fig.colorbar(im, ax=ax, label="utilisation (bin mean)", pad=0.01)
    axes[0, 0].set_title(title or f"link utilisation of the {len(names)} busiest links", fontsize=9)
    if zoom is not None:
        axes[1, 0].set_title(f"zoom: the first {zoom_layers} MoE layers", fontsize=9)
    return fig


def _spans(trace: dict) -> list[dict]:
    return [e for e in trace["traceEvents"] if e.get("ph") == "X" and e.get("pid", -1) >= 0]


def _draw_lanes(ax, spans: list[dict], lanes: list[tuple[int, int]], label_of, colors: dict[str, str]) -> None:
    row = {lane: i for i, lane in enumerate(lanes)}
    by_key: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for e in spans:
        key = (row[(e["pid"], e["tid"])], e["name"])
        by_key.setdefault(key, []).append((e["ts"] * 1e-3, max(e.get("dur", 0.0), 0.0) * 1e-3))
    for (r, name), bars in by_key.items():
        ax.broken_barh(bars, (r - 0.4, 0.8), facecolors=colors.get(name, OTHER_COLOR), edgecolor="none")
    ax.set_yticks(range(len(lanes)), [label_of(lane) for lane in lanes], fontsize=7)
    ax.set_ylim(len(lanes) - 0.5, -0.5)


def zoom_window(trace: dict, layers: int = 2) -> tuple[float, float] | None:
    """(start, end) in seconds of the spans of the first `layers` MoE layers (layers with a dispatch)."""
    spans = _spans(trace)
    moe = sorted({e["args"]["layer"] for e in spans if e["name"] == "dispatch" and "layer" in e.get("args", {})})
    window = set(moe[:layers])
    sel = [e for e in spans if e.get("args", {}).get("layer") in window]
    if not sel:
        return None
    return min(e["ts"] for e in sel) * 1e-6, max(e["ts"] + e.get("dur", 0.0) for e in sel) * 1e-6


def gantt(trace: dict, title: str = "", zoom_layers: int = 2) -> Figure | None:
    """Top: the whole step, one row per (rank, lane). Bottom: the window of the first `zoom_layers` MoE
    layers (every span in it, whatever its layer), where single kernels and transfers are visible."""
    spans = _spans(trace)
    if not spans:
        return None
    procs, threads = _names(trace["traceEvents"])
    lanes = sorted({(e["pid"], e["tid"]) for e in spans})
    names = sorted({e["name"] for e in spans})
    colors = {n: PHASE_COLORS.get(n, SERIES_COLORS[i % len(SERIES_COLORS)]) for i, n in enumerate(names)}

    def label_of(lane: tuple[int, int]) -> str:
        proc = procs.get(lane[0], f"rank {lane[0]}").split(" (")[0]
        return f"{proc} {threads.get(lane, lane[1])}"

    window = zoom_window(trace, zoom_layers)
    fig, axes = figure(2 if window else 1, 1, 11, 0.2 * len(lanes) + 1.3)
    for ax in axes[:, 0]:
        _draw_lanes(ax, spans, lanes, label_of, colors)
        ax.set_xlabel("time (ms)")
    axes[0, 0].set_title(title or "one step", fontsize=9)
    if window:
        axes[1, 0].set_xlim(window[0] * 1e3, window[1] * 1e3)
        axes[1, 0].set_title(f"zoom: the first {zoom_layers} MoE layers", fontsize=9)
    fig.legend(handles=[Patch(color=colors[n], label=n) for n in names], fontsize=7, ncols=min(len(names), 8),
               loc="outside lower center")
    return fig
