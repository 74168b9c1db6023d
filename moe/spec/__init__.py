"""The scenario: schema, presets, loader and derived sizes. Import from here."""

from moe.spec.loader import load_scenario, parse_override, preset_names, scenario_dict, spec_hash
from moe.spec.schema import Cluster, Model, Scenario

__all__ = ["Cluster", "Model", "Scenario", "load_scenario", "parse_override", "preset_names",
           "scenario_dict", "spec_hash"]
