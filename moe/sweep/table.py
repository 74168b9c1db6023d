"""The sweep's table: one row per point, written as Parquet (pyarrow) and CSV, atomically.

Columns, in order: `sweep`, `point`, `status`, `error`, `backend`, `spec_hash`, `wall_s`; the axis keys;
the Result's fields flattened with dots (`step_time_s`, `breakdown.expert_s`,
`extra.link_utilisation.nic_out.max`, ...; `spec` and duplicates left out); `measure.<name>` columns;
other per-point columns (validation: `measured.*`); then every scenario key flattened with dots
(`cluster.nodes`, `workload.routing.skew`, ...). Lists of numbers stay lists (Parquet list columns, JSON
text in the CSV); anything nested deeper is JSON text.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moe.result import write_text_atomic

META = ("sweep", "point", "status", "error", "backend", "spec_hash", "wall_s")
TABLE_STEM = "results"
SCALARS = (int, float, str, bool, type(None))


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1, "c": [1, 2], "d": [{"e": 1}]}} -> {"a.b": 1, "a.c": [1, 2], "a.d": '[{"e": 1}]'}."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            if value:
                out.update(flatten(value, name + "."))
            else:
                out[name] = None
        elif isinstance(value, list | tuple):
            out[name] = list(value) if all(isinstance(v, SCALARS) for v in value) else json.dumps(value)
        else:
            out[name] = value
    return out


def make_row(meta: dict[str, Any], axes: dict[str, Any], result: dict | None, measures: dict[str, Any],
             columns: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    row = {k: meta.get(k) for k in META}
    row.update({k: _cell(v) for k, v in axes.items()})
    if result:
        skip = {"spec", "spec_hash", "backend", "wall_s"}
        row.update(flatten({k: v for k, v in result.items() if k not in skip}))
    row.update(flatten(measures, "measure."))
    row.update(flatten(columns))
    for key, value in flatten(spec).items():
        row.setdefault(key, value)
    return row


def _cell(value: Any) -> Any:
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return list(value) if all(isinstance(v, SCALARS) for v in value) else json.dumps(value)
    return value


def column_names(rows: list[dict[str, Any]]) -> list[str]:
    """Columns in first-seen order; the META columns when there are no rows (an empty table still has
    a header)."""
    names: dict[str, None] = dict.fromkeys(META)
    for row in rows:
        for key in row:
            names.setdefault(key, None)
    return list(names)


def _csv_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return json.dumps(value)
    return str(value)


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    names = column_names(rows)
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(names)
    for row in rows:
        writer.writerow([_csv_text(row.get(n)) for n in names])
    return buf.getvalue()


def _arrow_column(values: list[Any]):
    import pyarrow as pa

    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types in one column: keep them as JSON text
        return pa.array([None if v is None else v if isinstance(v, str) else json.dumps(v) for v in values])


def _write_atomic(path: Path, write: Callable[[str], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_table(out: Path, rows: list[dict[str, Any]]) -> list[Path]:
    """OUT/results.csv always; OUT/results.parquet when pyarrow is installed. Returns the paths written."""
    written = [out / f"{TABLE_STEM}.csv"]
    write_text_atomic(written[0], to_csv(rows))
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return written
    names = column_names(rows)
    table = pa.table({n: _arrow_column([row.get(n) for row in rows]) for n in names})
    path = out / f"{TABLE_STEM}.parquet"
    _write_atomic(path, lambda tmp: pq.write_table(table, tmp))
    written.append(path)
    return written


def table_path(results: str | Path) -> Path:
    """A table file, or the table inside a sweep output folder (Parquet preferred)."""
    path = Path(results)
    if path.is_dir():
        for suffix in (".parquet", ".csv"):
            if (path / f"{TABLE_STEM}{suffix}").exists():
                return path / f"{TABLE_STEM}{suffix}"
    return path


def _parse_list(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def read_table(results: str | Path):
    """The table as a pandas DataFrame (list columns as Python lists, from Parquet or CSV)."""
    import pandas as pd

    from moe.errors import SpecError

    path = table_path(results)
    if not path.is_file():
        raise SpecError("results", str(results), "no result table here (expected results.parquet or results.csv)")
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
        for col in df.columns:
            if df[col].dtype == object:
                df[col] = [v.tolist() if hasattr(v, "tolist") else v for v in df[col]]
        return df
    df = pd.read_csv(path, keep_default_na=True)
    for col in df.columns:
        if df[col].dtype == object or pd.api.types.is_string_dtype(df[col]):
            df[col] = [_parse_list(v) for v in df[col]]
    return df
