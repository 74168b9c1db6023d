"""A sweep file: a base scenario, axes over scenario keys, a backend. Parsed and validated here.

    name: placement                  # the table's name and the default output folder results/<name>
    description: one line of what the sweep asks
    backend: sim                     # sim | emu | real (`moetb sweep --backend` overrides it)
    base: quickstart.yaml            # a scenario file (relative to this file) or an inline mapping
    set: {sim.link_timeline: false}  # optional: key paths set on the base (like `--set`)
    axes:
      grid:                          # every combination (the first axis varies slowest)
        workload.routing.skew: [0.0, 0.5, 1.0]
      zip:                           # paired lists of equal length (several groups: a list of mappings)
        placement.strategy: [contiguous, replicate_hot]
        placement.replicas: [0, 32]
    derive: {workload.tokens_per_gpu: max_decode_batch}   # a key computed per point (moe.sweep.derive)
    measures: [per_step_load]        # extra per-point quantities (moe.sweep.measures)
    traces: [0, 3]                   # keep trace.json for these points (true: all; default none)
    plot: placement                  # figure family for `moetb plot` (default: the name when known)
    measured: validation             # validation only: folder of committed measurements (moe.sweep.validation)

Every key and axis is checked here, before any point runs: an unknown file key, an axis whose key is not
a scenario key or whose values do not validate, an empty axis, or zip axes of different lengths is a
SpecError naming the axis (`axes.grid.<key>`, `axes.zip[<i>].<key>`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moe.errors import SpecError
from moe.spec.loader import apply_override, build_scenario, read_yaml
from moe.spec.schema import Scenario

FILE_KEYS = ("name", "description", "backend", "base", "set", "axes", "derive", "measures", "traces", "plot",
             "measured")


@dataclass(frozen=True)
class Axis:
    key: str
    """Scenario key path, as in `--set key.path=value`."""
    values: tuple[Any, ...]
    where: str
    """Where the axis sits in the sweep file, for messages: axes.grid.<key> or axes.zip[i].<key>."""


@dataclass(frozen=True)
class Sweep:
    name: str
    path: Path | None
    backend: str
    base_raw: dict
    """The base scenario mapping with `set` applied (not yet validated into a Scenario)."""
    base_dir: Path | None
    grid: tuple[Axis, ...] = ()
    zips: tuple[tuple[Axis, ...], ...] = ()
    derive: dict[str, str] = field(default_factory=dict)
    measures: tuple[str, ...] = ()
    traces: bool | frozenset[int] = False
    plot: str = ""
    measured: Path | None = None
    description: str = ""

    @property
    def axes(self) -> tuple[Axis, ...]:
        return self.grid + tuple(a for group in self.zips for a in group)

    def keeps_trace(self, index: int) -> bool:
        return self.traces if isinstance(self.traces, bool) else index in self.traces


def _check_key_path(key: object, where: str) -> str:
    if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
        raise SpecError(where, key, "expected a scenario key path such as workload.routing.skew")
    return key


def _axis(key: object, values: object, where_prefix: str) -> Axis:
    where = f"{where_prefix}.{key}"
    key = _check_key_path(key, where)
    if not isinstance(values, list):
        raise SpecError(where, values, "an axis is a list of values")
    if not values:
        raise SpecError(where, values, "empty axis: give at least one value")
    return Axis(key=key, values=tuple(values), where=where)


def _count(axis: Axis) -> str:
    n = len(axis.values)
    return f"{n} value" + ("" if n == 1 else "s")


def _axes(raw: object) -> tuple[tuple[Axis, ...], tuple[tuple[Axis, ...], ...]]:
    if raw is None:
        return (), ()
    if not isinstance(raw, dict):
        raise SpecError("axes", raw, "expected a mapping with grid and/or zip")
    for key in raw:
        if key not in ("grid", "zip"):
            raise SpecError(f"axes.{key}", raw[key], "unknown axes kind; known: grid, zip")
    grid_raw = raw.get("grid") or {}
    if not isinstance(grid_raw, dict):
        raise SpecError("axes.grid", grid_raw, "expected a mapping of key path -> list of values")
    grid = tuple(_axis(k, v, "axes.grid") for k, v in grid_raw.items())
    zip_raw = raw.get("zip") or []
    groups_raw = [zip_raw] if isinstance(zip_raw, dict) else zip_raw
    if not isinstance(groups_raw, list):
        raise SpecError("axes.zip", zip_raw, "expected a mapping of key path -> list, or a list of such mappings")
    zips = []
    for i, group in enumerate(groups_raw):
        prefix = "axes.zip" if isinstance(zip_raw, dict) else f"axes.zip[{i}]"
        if not isinstance(group, dict) or not group:
            raise SpecError(prefix, group, "expected a non-empty mapping of key path -> list of values")
        axes = tuple(_axis(k, v, prefix) for k, v in group.items())
        lengths = {a.key: len(a.values) for a in axes}
        if len(set(lengths.values())) > 1:
            first = axes[0]
            odd = next(a for a in axes if len(a.values) != len(first.values))
            raise SpecError(odd.where, list(odd.values),
                            f"zip axes have different lengths: {odd.key} has {_count(odd)}, "
                            f"{first.key} has {_count(first)}")
        zips.append(axes)
    seen: dict[str, str] = {}
    for axis in grid + tuple(a for g in zips for a in g):
        for other_key, other_where in seen.items():
            if axis.key == other_key or axis.key.startswith(other_key + ".") or other_key.startswith(axis.key + "."):
                raise SpecError(axis.where, list(axis.values), f"overlaps the axis {other_where}")
        seen[axis.key] = axis.where
    return grid, tuple(zips)


def _base(raw: dict, sweep_dir: Path | None) -> tuple[dict, Path | None]:
    base = raw.get("base")
    if base is None:
        return {}, sweep_dir
    if isinstance(base, dict):
        return copy.deepcopy(base), sweep_dir
    if isinstance(base, str):
        path = Path(base)
        if not path.is_absolute() and sweep_dir is not None:
            path = sweep_dir / path
        if not path.exists():
            raise SpecError("base", base, "scenario file not found")
        data = read_yaml(path)
        if data is not None and not isinstance(data, dict):
            raise SpecError("base", base, "the scenario file's top level must be a mapping of keys")
        return data or {}, path.parent
    raise SpecError("base", base, "expected a scenario file path or an inline scenario mapping")


def _traces(value: object) -> bool | frozenset[int]:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        return frozenset(value)
    raise SpecError("traces", value, "expected true, false or a list of point indices")


def _text(raw: dict, key: str, default: str) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str):
        raise SpecError(key, value, "expected a string")
    return value


def parse_sweep(raw: object, path: Path | None = None, backend: str | None = None) -> Sweep:
    """A validated Sweep from a mapping read from YAML (`path` locates relative files)."""
    if not isinstance(raw, dict):
        raise SpecError(str(path or "sweep"), raw, "a sweep file's top level must be a mapping of keys")
    for key in raw:
        if key not in FILE_KEYS:
            raise SpecError(str(key), raw[key], f"unknown sweep key; known: {', '.join(FILE_KEYS)}")
    sweep_dir = path.parent if path is not None else None
    name = _text(raw, "name", path.stem if path is not None else "sweep")
    if not name or "/" in name:
        raise SpecError("name", name, "expected a non-empty name without '/'")
    base_raw, base_dir = _base(raw, sweep_dir)
    sets = raw.get("set") or {}
    if not isinstance(sets, dict):
        raise SpecError("set", sets, "expected a mapping of key path -> value")
    for key, value in sets.items():
        apply_override(base_raw, _check_key_path(key, f"set.{key}"), value)
    derive = raw.get("derive") or {}
    if not isinstance(derive, dict) or not all(isinstance(v, str) for v in derive.values()):
        raise SpecError("derive", derive, "expected a mapping of key path -> derivation name")
    for key in derive:
        _check_key_path(key, f"derive.{key}")
    measures = raw.get("measures") or []
    if not isinstance(measures, list) or not all(isinstance(m, str) for m in measures):
        raise SpecError("measures", measures, "expected a list of measure names")
    measured = raw.get("measured")
    if measured is not None and not isinstance(measured, str):
        raise SpecError("measured", measured, "expected a folder path")
    grid, zips = _axes(raw.get("axes"))
    sweep = Sweep(name=name, path=path, backend=backend or _text(raw, "backend", "sim"), base_raw=base_raw,
                  base_dir=base_dir, grid=grid, zips=zips, derive=dict(derive), measures=tuple(measures),
                  traces=_traces(raw.get("traces")), plot=_text(raw, "plot", ""),
                  measured=(sweep_dir or Path(".")) / measured if measured is not None else None,
                  description=_text(raw, "description", ""))
    check_axes(sweep)
    return sweep


def load_sweep(path: str | Path, backend: str | None = None) -> Sweep:
    path = Path(path)
    return parse_sweep(read_yaml(path), path, backend)


def scenario_with(sweep: Sweep, values: dict[str, Any], check: bool = False) -> Scenario:
    """The base scenario with key path -> value settings applied (typed values, not strings), through the
    loader, which names the key of an invalid value."""
    raw = copy.deepcopy(sweep.base_raw)
    for key, value in values.items():
        apply_override(raw, key, value)
    return build_scenario(raw, (), sweep.base_dir, check=check)


def _blame(err: SpecError, key: str) -> str:
    return err.reason if err.key == key else f"{err.key}={err.value!r}: {err.reason}"


def check_axes(sweep: Sweep) -> None:
    """Every axis value on the base alone must validate (schema only; cross-field feasibility is a
    property of each point and is recorded per point). Errors name the axis."""
    try:
        scenario_with(sweep, {})
    except SpecError as err:
        raise SpecError("base", err.key, f"the base scenario does not validate: {err}") from None
    for axis in sweep.axes:
        for value in axis.values:
            try:
                scenario_with(sweep, {axis.key: value})
            except SpecError as err:
                if err.reason == "unknown key" or err.reason.startswith("is not a section"):
                    raise SpecError(axis.where, list(axis.values),
                                    f"{axis.key} is not a scenario key ({err.key}: {err.reason})") from None
                raise SpecError(axis.where, value, _blame(err, axis.key)) from None
