"""A Sweep -> its points: axis products, derived keys, each point's Scenario, spec_hash and feasibility.

Order: grid axes in file order (the first varies slowest), then zip groups; a point's index is its
position in that order. A point whose scenario fails a cross-field check (memory, placement) or whose
derivation finds no value is *infeasible*: it is recorded in the table with the reason and not run.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from moe.errors import SpecError
from moe.spec import scenario_dict, spec_hash
from moe.spec.checks import check_scenario
from moe.spec.schema import Scenario
from moe.sweep.derive import derivation
from moe.sweep.spec import Sweep, scenario_with


@dataclass(frozen=True)
class Point:
    index: int
    values: dict[str, Any]
    """Axis key -> value of this point, then derived key -> derived value."""
    scenario: Scenario | None
    """None only for a validation row whose committed spec no longer loads."""
    spec_hash: str
    infeasible: str = ""
    """Why the point cannot run ("" when it can): a SpecError's text."""
    columns: dict[str, Any] = field(default_factory=dict)
    """Extra table columns of this point (committed measurements of the validation sweep)."""


def key_value(scenario: Scenario, key: str) -> Any:
    node: Any = scenario_dict(scenario)
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise SpecError(key, None, "not a scenario key")
        node = node[part]
    return node


def combinations(sweep: Sweep) -> list[dict[str, Any]]:
    """Axis key -> value for every point, in point order (one empty point when there are no axes)."""
    blocks: list[list[dict[str, Any]]] = [[{a.key: v} for v in a.values] for a in sweep.grid]
    for group in sweep.zips:
        blocks.append([{a.key: a.values[i] for a in group} for i in range(len(group[0].values))])
    out = []
    for combo in itertools.product(*blocks):
        values: dict[str, Any] = {}
        for part in combo:
            values.update(part)
        out.append(values)
    return out


def _derive(sweep: Sweep, values: dict[str, Any]) -> dict[str, Any]:
    values = dict(values)
    for key, name in sweep.derive.items():
        fn = derivation(name, f"derive.{key}")
        current = key_value(scenario_with(sweep, values), key)
        values[key] = fn(lambda v, key=key: scenario_with(sweep, {**values, key: v}), key, current)
    return values


def make_point(sweep: Sweep, index: int, values: dict[str, Any], columns: dict[str, Any] | None = None) -> Point:
    """One point; schema errors of a combination are SpecErrors naming its axes (bad input)."""
    try:
        scenario = scenario_with(sweep, values)
    except SpecError as err:
        where = ", ".join(a.where for a in sweep.axes if a.key in values) or "base"
        raise SpecError(where, values, f"point {index} does not validate: {err}") from None
    infeasible = ""
    try:
        derived = _derive(sweep, values)
        if derived != values:
            values, scenario = derived, scenario_with(sweep, derived)
        check_scenario(scenario)
    except SpecError as err:
        infeasible = str(err)
        values = {**values, **{k: None for k in sweep.derive if k not in values}}  # not derived: no value
    return Point(index=index, values=values, scenario=scenario, spec_hash=spec_hash(scenario),
                 infeasible=infeasible, columns=columns or {})


def expand(sweep: Sweep) -> list[Point]:
    """Every point of an axes sweep, validated up front."""
    for key in sweep.derive:
        if any(a.key == key for a in sweep.axes):
            raise SpecError(f"derive.{key}", sweep.derive[key], "the key is also an axis")
        derivation(sweep.derive[key], f"derive.{key}")
        try:
            key_value(scenario_with(sweep, {}), key)
        except SpecError:
            raise SpecError(f"derive.{key}", sweep.derive[key], f"{key} is not a scenario key") from None
    return [make_point(sweep, i, values) for i, values in enumerate(combinations(sweep))]
