"""`moetb plot RESULTS`: the figures of a sweep's table as PNG files (the notebooks show the same ones).

    plot_results("results/placement")            # -> results/placement/figures/placement.png, ...
    figs = family_figures(read_table(...), "placement", axes_keys)   # {name: matplotlib Figure}

The figure family comes from the sweep's manifest (sweep.json, key `plot`) next to the table, else from
the table's `sweep` column; an unknown family gets the generic figure (throughput and step time against
the first axis). Points whose trace was kept (the table's `trace` column) also get a link-utilisation
heatmap and a Gantt chart of their step.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from moe.errors import SpecError

MAX_TRACE_FIGURES = 4
"""Points whose trace figures are drawn (the first ones with a kept trace)."""


def families() -> dict[str, Callable]:
    from moe.plots.memory import mla_vs_mha
    from moe.plots.overlap import overlap
    from moe.plots.placement import load_balance, placement
    from moe.plots.scaling import ep_scaling, hierarchical_vs_direct
    from moe.plots.validation import validation

    return {"ep_scaling": ep_scaling, "hierarchical_vs_direct": hierarchical_vs_direct, "placement": placement,
            "load_balance": load_balance, "overlap": overlap, "mla_vs_mha": mla_vs_mha, "validation": validation}


def family_figures(df, family: str, axes_keys: list[str]) -> dict:
    """{name: Figure} of one family (the generic figure for an unknown family); {} without ok rows."""
    if not len(df) or not (df["status"] == "ok").any():
        return {}
    fn = families().get(family)
    if fn is None:
        from moe.plots.scaling import generic

        return generic(df, axes_keys)
    return fn(df)


def point_label(row, axes_keys: list[str]) -> str:
    return f"point {row['point']}: " + ", ".join(f"{k}={row[k]}" for k in axes_keys if k in row)


def trace_figures(df, folder: Path, axes_keys: list[str], limit: int = MAX_TRACE_FIGURES) -> dict:
    """{name: Figure}: link heatmap and Gantt chart of the first `limit` points with a kept trace."""
    from moe.plots.traces import gantt, link_heatmap, read_trace

    out = {}
    if "trace" not in df:
        return out
    rows = df[df["trace"].notna() & (df["status"] == "ok")].head(limit)
    for _, row in rows.iterrows():
        trace = read_trace(folder / row["trace"])
        label = point_label(row, axes_keys)
        for kind, fn in (("links", link_heatmap), ("gantt", gantt)):
            fig = fn(trace, title=f"{kind}: {label}")
            if fig is not None:
                out[f"{kind}_point{int(row['point'])}"] = fig
    return out


def _manifest(folder: Path) -> dict:
    path = folder / "sweep.json"
    return json.loads(path.read_text()) if path.exists() else {}


def plot_results(results: str | Path, out: str | Path | None = None) -> int:
    """Write every figure of the table at `results` (a table file or a sweep output folder) as PNG."""
    from moe.sweep.table import read_table, table_path

    table = table_path(results)
    if not table.is_file():
        raise SpecError("results", str(results), "no result table here (expected results.parquet or results.csv, "
                                                  "as `moetb sweep` writes)")
    folder = table.parent
    df = read_table(table)
    manifest = _manifest(folder)
    family = manifest.get("plot") or (str(df["sweep"].iloc[0]) if len(df) else "")
    axes_keys = manifest.get("axes") or []
    out_dir = Path(out) if out is not None else folder / "figures"
    figs = family_figures(df, family, axes_keys)
    if not figs:
        print(f"moetb plot: {table} has no completed points ({len(df)} rows); no figures written", file=sys.stderr)
        return 0
    figs.update(trace_figures(df, folder, axes_keys))
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, fig in figs.items():
        fig.savefig(out_dir / f"{name}.png", dpi=110)
        print(f"wrote {out_dir / f'{name}.png'}", file=sys.stderr)
    if family == "validation":
        from moe.plots.validation import validation_table
        from moe.result import write_text_atomic

        write_text_atomic(out_dir / "validation.md", validation_table(df))
        print(f"wrote {out_dir / 'validation.md'}", file=sys.stderr)
    return 0
