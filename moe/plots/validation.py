"""Predicted vs measured (the validation sweep's table): a scatter with error bands, and a text table.

Left: predicted step time (x) against measured (y), log-log, one colour per measuring backend, the
y = x line and shaded bands where |predicted - measured| / measured <= 5% and <= 10% (the targets of
issue 7). Right: relative error of every compared quantity, one column of dots per quantity.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from moe.plots.common import MARKERS, SERIES_COLORS, figure, ok, series
from moe.sweep.validation import COMPARED

BANDS = (0.05, 0.10)


def validation(df) -> dict[str, Figure]:
    good = ok(df)
    fig, axes = figure(1, 2, 5.0, 4.2)
    ax = axes[0, 0]
    both = np.concatenate([good["step_time_s"].to_numpy(dtype=float),
                           good["measured.step_time_s"].to_numpy(dtype=float)])
    lo, hi = both[both > 0].min() / 1.5, both.max() * 1.5
    xs = np.geomspace(lo, hi, 50) * 1e3
    for band, alpha in zip(BANDS, (0.25, 0.12), strict=True):
        # |p - m| / m <= band  <=>  p / (1 + band) <= m <= p / (1 - band)
        ax.fill_between(xs, xs / (1 + band), xs / (1 - band), color="#55A868", alpha=alpha, lw=0,
                        label=f"within {band:.0%}")
    ax.plot(xs, xs, color="0.3", lw=0.8)
    for i, (backend, rows) in enumerate(series(good, "measured.backend")):
        ax.scatter(rows["step_time_s"] * 1e3, rows["measured.step_time_s"] * 1e3, marker=MARKERS[i],
                   color=SERIES_COLORS[i], label=f"{backend} ({len(rows)})", zorder=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"predicted step time, {df['backend'].iloc[0]} (ms)")
    ax.set_ylabel("measured step time (ms)")
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    for i, (backend, rows) in enumerate(series(good, "measured.backend")):
        for k, q in enumerate(COMPARED):
            col = f"rel_error.{q}"
            if col in rows:
                err = rows[col].to_numpy(dtype=float) * 100
                ax.scatter(np.full(len(err), k) + 0.12 * (i - 0.5), err, marker=MARKERS[i], color=SERIES_COLORS[i],
                           s=18, label=backend if k == 0 else None)
    for band in BANDS:
        ax.axhspan(-band * 100, band * 100, color="#55A868", alpha=0.12, lw=0)
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xticks(range(len(COMPARED)), [q.removeprefix("breakdown.") for q in COMPARED], rotation=45, ha="right")
    ax.set_ylabel("(predicted - measured) / measured (%)")
    ax.legend(fontsize=8)
    med = np.nanmedian(np.abs(good["rel_error.step_time_s"].to_numpy(dtype=float))) * 100
    fig.suptitle(f"validation: {len(good)} measurements, median |step time error| {med:.1f}%")
    return {"validation": fig}


def validation_table(df) -> str:
    """Markdown: one row per measurement - case, backend, machine, measured and predicted step time, error."""
    lines = ["| measurement | backend | machine | measured step (ms) | predicted step (ms) | error |",
             "|---|---|---|---:|---:|---:|"]
    for _, r in df.iterrows():
        if r["status"] != "ok":
            lines.append(f"| {r['measured.path']} | {r['measured.backend']} | {r['measured.machine']} | "
                         f"{r['measured.step_time_s'] * 1e3:.3f} | {r['status']}: {r['error']} | |")
            continue
        lines.append(f"| {r['measured.path']} | {r['measured.backend']} | {r['measured.machine']} | "
                     f"{r['measured.step_time_s'] * 1e3:.3f} | {r['step_time_s'] * 1e3:.3f} | "
                     f"{r['rel_error.step_time_s'] * 100:+.1f}% |")
    return "\n".join(lines) + "\n"
