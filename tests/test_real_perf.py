"""benchmarks/real_perf.py in its CPU smoke mode (`--quick`: tiny model, 2 gloo ranks under torchrun): every
section runs and the report carries the figures the issue's targets are judged on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_run_reports_every_target(tmp_path):
    out = tmp_path / "perf.json"
    proc = subprocess.run([sys.executable, "benchmarks/real_perf.py", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rep = json.loads(out.read_text())
    assert rep["ranks"] == 2 and rep["backend"] == "gloo"
    assert len(rep["gemm_per_rank"]) == 2 and all(g["ratio"] > 0 for g in rep["gemm_per_rank"])
    assert {(r["transport"], r["overlap"]) for r in rep["runs"]} == {(t, o) for t in ("p2p", "all_to_all")
                                                                     for o in (True, False)}
    assert all(r["traffic_matches_model"] for r in rep["runs"])
    for mode in ("p2p", "all_to_all"):
        v = rep["per_transport"][mode]
        assert v["compute_only_s"] > 0 and v["comm_only_s"] > 0 and v["overlap_ratio"] > 0
        assert v["bandwidth_ratio"] > 0
    assert rep["targets"]["faster_transport"] in ("p2p", "all_to_all")
    assert "faster transport" in proc.stdout


@pytest.mark.slow
def test_exchange_only_reports_the_exchange_and_its_host_issue_time(tmp_path):
    out = tmp_path / "exchange.json"
    proc = subprocess.run([sys.executable, "benchmarks/real_perf.py", "--quick", "--exchange-only", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rep = json.loads(out.read_text())
    assert rep["section"] == "exchange" and "runs" not in rep and "gemm_per_rank" not in rep
    for mode in ("p2p", "all_to_all"):
        t = rep["exchange"]["transports"][mode]
        assert 0 < t["host_issue_s"] and 0 < t["comm_only_s"] and t["bandwidth_ratio"] > 0
    assert "host issue" in proc.stdout
