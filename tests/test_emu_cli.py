"""The emulator from the command line: `moetb run --backend emu --ranks N` and `moetb validate sim,emu`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SPEC = {"name": "emu-cli", "model": {"preset": "tiny"},
        "cluster": {"preset": "cpu-host", "nodes": 1, "gpus_per_node": 2},
        "placement": {"strategy": "contiguous"}, "workload": {"tokens_per_gpu": 32, "context_len": 32},
        "emu": {"warmup": 1, "repeats": 3, "threads": 1}}


def moetb(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moe", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.mpi
def test_validate_runs_the_simulator_and_two_launched_ranks(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    proc = moetb("validate", str(spec), "--backends", "sim,emu", "--ranks", "2", "--out", str(tmp_path / "v"))
    assert proc.returncode == 0, proc.stderr
    assert "sim (predicted)" in proc.stdout and "emu (measured)" in proc.stdout
    rows = json.loads((tmp_path / "v" / "validate.json").read_text())
    assert {r["quantity"] for r in rows} >= {"step_time_s", "moe_layer_s", "expert_s"}

    r = json.loads((tmp_path / "v" / "emu" / "result.json").read_text())
    assert r["backend"] == "emu" and r["repeats"] == 3 and len(r["step_time_s_all"]) == 3
    assert r["step_time_s"] == sorted(r["step_time_s_all"])[1]  # the median
    assert r["tokens_per_s"] == pytest.approx(2 * 32 / r["step_time_s"])
    assert r["extra"]["traffic_matches_model"] is True
    assert r["extra"]["ranks"] == 2 and len(r["extra"]["step_s_per_rank"]) == 2
    assert r["extra"]["host_probe_s"] > 0 and len(r["extra"]["host_probe_s_per_rank"]) == 2
    assert r["spec"]["name"] == "emu-cli"  # the parent's scenario, not the launched child's copy
    b = r["breakdown"]
    assert b["expert_s"] > 0 and b["attention_s"] > 0 and b["exposed_comm_s"] <= b["dispatch_s"] + b["combine_s"]

    trace = json.loads((tmp_path / "v" / "emu" / "trace.json").read_text())["traceEvents"]
    spans = [e for e in trace if e["ph"] == "X"]
    assert {e["pid"] for e in spans} == {0, 1}  # one merged trace, every rank
    assert {"attention", "gate", "dispatch", "expert", "combine"} <= {e["name"] for e in spans}
    assert all(e["dur"] >= 0 and e["ts"] >= 0 for e in spans)


def test_run_json_on_one_rank(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({**SPEC, "cluster": {"preset": "cpu-host", "nodes": 1, "gpus_per_node": 1}}))
    proc = moetb("run", str(spec), "--backend", "emu", "--json", "--out", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["backend"] == "emu" and r["step_time_s"] > 0 and r["extra"]["ranks"] == 1
    assert (tmp_path / "o" / "trace.json").exists()
