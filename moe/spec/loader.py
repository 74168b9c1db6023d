"""YAML in, a validated Scenario out: the one place where scenario input enters the program.

Order: read the file safely -> apply `--set key.path=value` overrides -> fill `model` and `cluster`
from their presets -> validate strictly (unknown keys and wrong types fail with their key path) ->
cross-field checks (`moe.spec.checks`). Every failure is a `SpecError` naming the key and the value.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from moe.errors import SpecError
from moe.spec.schema import Scenario

PRESET_KINDS = ("model", "cluster")
DEFAULT_PRESET = {"model": "paper", "cluster": "h800-ib"}


def read_yaml(path: str | Path) -> Any:
    """Load one YAML document safely (plain data only: no tags construct objects)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SpecError(str(path), str(path), f"cannot read file ({err.strerror or err})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "somewhere"
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpecError(str(path), where, f"malformed YAML: {problem}") from None


@functools.cache
def _preset_files(kind: str) -> tuple[str, ...]:
    folder = resources.files("moe.spec") / "presets" / f"{kind}s"
    return tuple(sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")))


def preset_names(kind: str) -> list[str]:
    return list(_preset_files(kind))


def load_preset(kind: str, name: object, base_dir: Path | None = None) -> dict:
    """The key/value mapping of one preset: a YAML file shipped inside the package, or, when `name`
    ends in .yaml, a profile file (relative to the spec's folder), such as `moetb calibrate` writes."""
    if isinstance(name, str) and name.endswith((".yaml", ".yml")):
        path = Path(name)
        if not path.is_absolute() and base_dir is not None and not path.exists():
            path = base_dir / path
        if not path.exists():
            raise SpecError(f"{kind}.preset", name, "profile file not found")
        data = read_yaml(path) or {}
        if not isinstance(data, dict):
            raise SpecError(f"{kind}.preset", name, "profile file is not a mapping of keys")
        data.pop("preset", None)
        return data
    if not isinstance(name, str) or name not in preset_names(kind):
        raise SpecError(f"{kind}.preset", name, f"unknown preset; known: {', '.join(preset_names(kind))}")
    return copy.deepcopy(_packaged_preset(kind, name))


@functools.cache
def _packaged_preset(kind: str, name: str) -> dict:
    """Parsed once per process (sweeps build thousands of scenarios); callers get deep copies."""
    with resources.as_file(resources.files("moe.spec") / "presets" / f"{kind}s" / f"{name}.yaml") as p:
        return read_yaml(p) or {}


def parse_override(text: str) -> tuple[str, Any]:
    """`key.path=value` -> (key.path, typed value). The value is read as YAML: 4 is an int, 4.0 a
    float, true a bool, [1, 2] a list, anything else a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise SpecError("--set", text, "expected key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_override(raw: dict, key: str, value: Any) -> None:
    """Set raw[key.path] = value in place, creating intermediate mappings."""
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise SpecError(".".join(parts[: i + 1]), child, f"is not a section, cannot set {key}")
        node = child
    node[parts[-1]] = value


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _with_presets(raw: dict, base_dir: Path | None) -> dict:
    out = dict(raw)
    for kind in PRESET_KINDS:
        section = out.get(kind, {})
        if section is None:
            section = {}
        if not isinstance(section, dict):
            raise SpecError(kind, section, "must be a mapping of keys")
        name = section.get("preset", DEFAULT_PRESET[kind])
        out[kind] = _merge({**load_preset(kind, name, base_dir), "preset": name}, section)
    return out


def _first_error(err: ValidationError) -> SpecError:
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"]) or "scenario"
    if e["type"] == "extra_forbidden":
        return SpecError(key, e["input"], "unknown key")
    reason = e["msg"][0].lower() + e["msg"][1:]
    return SpecError(key, e.get("input"), reason)


def _resolve_paths(raw: dict, base_dir: Path | None) -> None:
    """A relative trace path in a spec file is relative to that file's folder."""
    try:
        routing = raw["workload"]["routing"]
        trace = routing["trace"]
    except (KeyError, TypeError):
        return
    if base_dir is not None and isinstance(trace, str) and not Path(trace).is_absolute():
        candidate = base_dir / trace
        if candidate.exists() and not Path(trace).exists():
            routing["trace"] = str(candidate)


def build_scenario(raw: Any, overrides: list[str] | tuple[str, ...] = (), base_dir: Path | None = None,
                   check: bool = True) -> Scenario:
    """Validate a raw mapping (as read from YAML) plus overrides into a Scenario."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpecError("scenario", raw, "the top level must be a mapping of keys")
    raw = json.loads(json.dumps(raw, default=str))  # deep copy; dates and other YAML types become str
    for text in overrides:
        apply_override(raw, *parse_override(text))
    _resolve_paths(raw, base_dir)
    try:
        scenario = Scenario.model_validate(_with_presets(raw, base_dir))
    except ValidationError as err:
        raise _first_error(err) from None
    if check:
        from moe.spec.checks import check_scenario

        check_scenario(scenario)
    return scenario


def load_scenario(source: str | Path | dict, overrides: list[str] | tuple[str, ...] = (),
                  check: bool = True) -> Scenario:
    """A Scenario from a YAML path or an already-read mapping, with `--set` overrides applied."""
    if isinstance(source, dict):
        return build_scenario(source, overrides, None, check)
    path = Path(source)
    return build_scenario(read_yaml(path), overrides, path.parent, check)


def scenario_dict(scenario: Scenario) -> dict:
    """The fully resolved scenario as plain JSON-able data."""
    return scenario.model_dump(mode="json")


def self_contained(data: dict) -> dict:
    """A resolved scenario mapping (every key explicit, as `scenario_dict` and `Result.spec` hold it) that
    loads on any machine: a preset named by a file path (a calibrated profile) is replaced by a built-in
    preset of its kind. Every key is given, so the values win and nothing changes but the name, which
    `spec_hash` ignores."""
    out = copy.deepcopy(data)
    for kind in PRESET_KINDS:
        section = out.get(kind)
        if isinstance(section, dict) and str(section.get("preset", "")).endswith((".yaml", ".yml")):
            section["preset"] = DEFAULT_PRESET[kind]
    return out


def spec_hash(scenario: Scenario) -> str:
    """Stable identity of what a scenario computes: independent of key order, of `name`, and of the preset
    names (every value the presets supplied is part of the scenario itself)."""
    data = scenario_dict(scenario)
    data.pop("name", None)
    for kind in PRESET_KINDS:
        data[kind].pop("preset", None)
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
