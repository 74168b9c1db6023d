"""`moetb run SPEC --backend real`: launched ranks (torchrun) hand one Result and one merged trace back; one rank
runs in-process; the real.* options drive the run. CPU ranks talk gloo; `-m gpu` repeats the launched run
over NCCL on 2 GPUs and checks what only a GPU run records (GPU names, transfer spans)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from moe.spec import load_scenario

ROOT = Path(__file__).resolve().parents[1]


def spec(ranks: int, **real) -> dict:
    return {"name": "real-cli", "model": {"preset": "tiny"},
            "cluster": {"preset": "cpu-host", "nodes": 1, "gpus_per_node": ranks},
            "placement": {"strategy": "contiguous"}, "workload": {"tokens_per_gpu": 32, "context_len": 32},
            "emu": {"threads": 1, "repeats": 1, "warmup": 0},
            "real": {"warmup": 1, "repeats": 2, "timeout_s": 60.0, **real}}


def run_json(tmp_path: Path, data: dict, ranks: int) -> tuple[dict, subprocess.CompletedProcess]:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = subprocess.run([sys.executable, "-m", "moe", "run", str(path), "--backend", "real", "--ranks", str(ranks),
                           "--out", str(tmp_path / "out"), "--json"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc  # stdout holds the one JSON object and nothing else


def check_launched(tmp_path: Path, r: dict, ranks: int, transport: str) -> dict:
    assert r["backend"] == "real"
    assert r["repeats"] == 2 and len(r["step_time_s_all"]) == 2  # real.repeats, not emu.repeats
    extra = r["extra"]
    assert extra["transport"] == transport
    assert extra["traffic_matches_model"] is True
    assert extra["ranks"] == ranks and len(extra["phase_s_per_rank"]) == ranks
    assert r["step_time_s"] > 0 and r["moe_layer_s"] > 0
    assert r["breakdown"]["expert_s"] > 0
    assert (tmp_path / "out" / "result.json").exists()
    trace = json.loads((tmp_path / "out" / "trace.json").read_text())
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    ranks_seen = {e["pid"] for e in events if e.get("ph") == "X"}
    assert len(ranks_seen) == ranks, ranks_seen
    return extra


def test_two_launched_ranks_hand_back_one_result(tmp_path):
    r, _ = run_json(tmp_path, spec(2, transport="p2p"), 2)
    check_launched(tmp_path, r, 2, "gloo p2p")
    assert r["machine"].startswith("2 x ")


def test_one_rank_runs_in_process():
    from real.backend import run

    s = load_scenario(spec(1, repeats=3))
    out = run(s, ranks=1)
    r = out.result
    assert r.backend == "real" and r.repeats == 3 and r.extra["transport"] == "gloo all_to_all"
    assert r.extra["traffic_matches_model"] and r.step_time_s > 0
    names = {s.name for s in out.trace.spans}
    assert {"attention", "gate", "expert", "combine"} <= names
    # one rank: no peer to wait for; gloo still completes its own collectives on a thread, which a loaded
    # host can make the runtime wait for (a comm span), so only the lanes' names are checked
    assert {s.lane for s in out.trace.spans} <= {"compute", "comm"}


@pytest.mark.gpu
@pytest.mark.parametrize("transport", ["p2p", "all_to_all"])
def test_two_gpus_hand_back_one_result(tmp_path, transport):
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    data = spec(2, transport=transport)
    data["cluster"] = {"preset": "h100-nvlink", "nodes": 1, "gpus_per_node": 2}
    r, _ = run_json(tmp_path, data, 2)
    extra = check_launched(tmp_path, r, 2, f"nccl {transport}")
    assert r["machine"].startswith(f"2 x {torch.cuda.get_device_name(0)}")
    for phases in extra["phase_s_per_rank"]:  # CUDA-event spans of the transfers on their streams
        assert phases["dispatch_transfer"] > 0 and phases["combine_transfer"] > 0
    trace = json.loads((tmp_path / "out" / "trace.json").read_text())
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    lanes = {e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"}
    assert "nccl" in lanes


@pytest.mark.mpi
@pytest.mark.slow
def test_ranks_started_by_mpiexec_meet_over_mpi(tmp_path):
    """Under an MPI launcher (no MASTER_ADDR), rank 0 publishes the rendezvous over mpi4py (real/dist.py)."""
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec(2)))
    mpiexec = Path(sys.executable).parent / "mpiexec"
    proc = subprocess.run([str(mpiexec), "-n", "2", sys.executable, "-m", "moe", "run", str(path), "--backend", "real",
                           "--out", str(tmp_path / "out"), "--json"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    check_launched(tmp_path, json.loads(proc.stdout), 2, "gloo all_to_all")
