"""CLI behaviour that does not depend on a backend."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

from moe.cli.main import main


def test_python_dash_m_moe_describe_json():
    out = subprocess.run([sys.executable, "-m", "moe", "describe", str(ROOT / "experiments/quickstart.yaml"), "--json"],
                         capture_output=True, text=True, check=True)
    data = json.loads(out.stdout)
    assert data["spec"]["name"] == "quickstart" and len(data["spec_hash"]) == 16


def test_unknown_backend_exits_1(capsys):
    assert main(["run", str(ROOT / "experiments/quickstart.yaml"), "--backend", "quantum"]) == 1
    assert "unknown backend 'quantum'" in capsys.readouterr().err


def test_calibrate_with_unknown_backend_exits_1(tmp_path, capsys):
    assert main(["calibrate", "--backend", "quantum", "--out", str(tmp_path / "p.yaml")]) == 1
    assert not (tmp_path / "p.yaml").exists()
