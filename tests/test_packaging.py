"""environment.yml stays in step with pyproject.toml; the Makefile and CI run the README's commands."""

from __future__ import annotations

import re
import tomllib

import yaml
from conftest import ROOT

CONDA_NAMES = {"torch": "pytorch"}  # PyPI name -> conda-forge name where they differ
PIP_ONLY = {"moetb"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!\[ ;]", requirement, maxsplit=1)[0].strip().lower()


def test_environment_yml_lists_every_pyproject_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    wanted = {CONDA_NAMES.get(_name(r), _name(r)) for r in reqs} - PIP_ONLY
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    have = {_name(d) for d in env["dependencies"] if isinstance(d, str)}
    assert wanted <= have, f"missing from environment.yml: {sorted(wanted - have)}"
    extra = have - wanted - {"python", "pip", "cpuonly"}
    assert not extra, f"in environment.yml but not in pyproject.toml: {sorted(extra)}"


def test_ci_and_readme_run_make_test():
    assert "make test" in (ROOT / ".ci/run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme
