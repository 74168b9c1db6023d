"""The validation sweep: predictions for committed measurements, as one sim-vs-emu-vs-real table.

Measurements are Result records committed under the sweep's `measured` folder, in any layout; the one
`moetb validate SPEC --backends sim,emu --out experiments/validation/<case>` writes is
`<case>/<backend>/result.json` (plus validate.json, ignored here). Every Result whose backend is not the
sweep's backend (emu, real) is one measurement and one row: its fully resolved `spec` is rerun on the
sweep's backend now (so the table always shows the current simulator against the fixed measurement), and
its numbers enter the row as `measured.*` columns, with `rel_error.<q>` = (predicted - measured) /
measured for step time, MoE layer time and each phase. `measured.spec_unchanged` is false where the
rerun scenario's spec_hash differs from the measured one (a key was added since, with its default). A
measured spec that no longer loads (the schema changed) is an infeasible row that says why.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from moe.errors import SpecError
from moe.result import Result
from moe.result.summary import PHASES, relative_error
from moe.spec.loader import self_contained
from moe.sweep.points import Point, make_point
from moe.sweep.spec import Sweep

MEASURING_BACKENDS = ("emu", "real")
COMPARED = ("step_time_s", "moe_layer_s", "tokens_per_s_per_gpu") + tuple(f"breakdown.{p}" for p in PHASES)


def find_results(folder: Path) -> list[tuple[Path, Result]]:
    """Every Result record under `folder` (other JSON files, traces included, are skipped), sorted by path."""
    found = []
    if not folder.is_dir():
        return found
    for path in sorted(folder.rglob("*.json")):
        if path.name == "trace.json" or path.name.endswith(".trace.json"):
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(data, dict) or "backend" not in data or "step_time_s" not in data:
            continue
        try:
            found.append((path, Result.model_validate(data)))
        except ValidationError:
            continue
    return found


def measured_columns(folder: Path, path: Path, r: Result) -> dict[str, Any]:
    cols: dict[str, Any] = {"measured.path": str(path.relative_to(folder)), "measured.backend": r.backend,
                            "measured.machine": r.machine, "measured.spec_hash": r.spec_hash,
                            "measured.repeats": r.repeats, "measured.step_time_s_all": list(r.step_time_s_all)}
    data = r.to_dict()
    for q in COMPARED:
        node: Any = data
        for part in q.split("."):
            node = node[part]
        cols[f"measured.{q}"] = node
    return cols


def validation_points(sweep: Sweep) -> list[Point]:
    """One point per committed measurement, in path order."""
    assert sweep.measured is not None
    points = []
    for path, r in find_results(sweep.measured):
        if r.backend == sweep.backend:
            continue
        cols = measured_columns(sweep.measured, path, r)
        base = dataclasses.replace(sweep, base_raw=self_contained(r.spec), base_dir=path.parent)
        try:
            point = make_point(base, len(points), {}, cols)
            unchanged = point.spec_hash == r.spec_hash
            point = dataclasses.replace(point, columns={**cols, "measured.spec_unchanged": unchanged})
        except SpecError as err:
            point = Point(index=len(points), values={}, scenario=None, spec_hash=r.spec_hash,
                          infeasible=f"the committed spec no longer loads: {err}", columns=cols)
        points.append(point)
    return points


def missing_report(sweep: Sweep, points: list[Point]) -> list[str]:
    """Lines saying which measuring backends have nothing committed (empty when all have some)."""
    have = {p.columns.get("measured.backend") for p in points}
    lines = []
    for backend in MEASURING_BACKENDS:
        if backend not in have:
            lines.append(f"{sweep.name}: no {backend} measurements committed under {sweep.measured} "
                         f"(expected <case>/{backend}/result.json, e.g. from `moetb validate SPEC --backends "
                         f"{sweep.backend},{backend} --out {sweep.measured}/<case>`); the {backend} column "
                         "of the table is missing")
    return lines


def error_columns(columns: dict[str, Any], result: dict[str, Any] | None) -> dict[str, float]:
    """rel_error.<q> for every measured.<q> of COMPARED that the prediction has."""
    if not result:
        return {}
    out = {}
    for q in COMPARED:
        node: Any = result
        for part in q.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        measured = columns.get(f"measured.{q}")
        if isinstance(node, int | float) and isinstance(measured, int | float):
            out[f"rel_error.{q}"] = relative_error(float(node), float(measured))
    return out

