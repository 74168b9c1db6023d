"""A failing or stuck rank ends the whole emulator job with that rank and its error printed, within 30 s.

The jobs are started the way a user starts them (`python -m moe run SPEC --backend emu --ranks N`, which
launches mpiexec), so the launcher's error path is covered too.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from moe.errors import RunFailure
from moe.spec import load_scenario

ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 30.0


def spec(ranks: int, **emu) -> dict:
    return {"name": "emu-fault", "model": {"preset": "tiny"},
            "cluster": {"preset": "cpu-host", "nodes": 1, "gpus_per_node": ranks},
            "placement": {"strategy": "contiguous"}, "workload": {"tokens_per_gpu": 16, "context_len": 16},
            "emu": {"warmup": 0, "repeats": 1, "threads": 1, **emu}}


def run_cli(tmp_path: Path, data: dict, ranks: int) -> tuple[subprocess.CompletedProcess, float]:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "moe", "run", str(path), "--backend", "emu", "--ranks", str(ranks),
                           "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    return proc, time.monotonic() - start


@pytest.mark.mpi
def test_exception_on_one_rank_aborts_the_job(tmp_path):
    proc, took = run_cli(tmp_path, spec(3, fail_rank=2, fail_at="expert"), 3)
    assert proc.returncode == 1, proc.stderr
    assert "rank 2 of 3 failed: InjectedFault: injected failure at expert" in proc.stderr
    assert "failed (mpiexec exit" in proc.stderr  # the launcher's one-line summary
    assert took < DEADLINE_S, f"job took {took:.1f} s to end"
    assert not (tmp_path / "out" / "result.json").exists()


@pytest.mark.mpi
def test_stuck_rank_ends_the_job_by_timeout(tmp_path):
    proc, took = run_cli(tmp_path, spec(2, fail_rank=1, fail_at="dispatch", fail_mode="hang", timeout_s=3.0), 2)
    assert proc.returncode == 1, proc.stderr
    assert "rank 0 of 2 failed: WaitTimeout: rank 0: timed out after 3 s waiting for" in proc.stderr
    assert took < DEADLINE_S, f"job took {took:.1f} s to end"


def test_one_rank_failure_is_a_run_failure():
    from emu.backend import run

    s = load_scenario(spec(1, fail_rank=0, fail_at="combine"))
    with pytest.raises(RunFailure, match="rank 0 of 1 failed: InjectedFault: injected failure at combine"):
        run(s, ranks=1)


def test_fail_rank_outside_the_job_is_bad_input(tmp_path):
    proc, _ = run_cli(tmp_path, spec(1, fail_rank=3), 1)
    assert proc.returncode == 2
    assert "emu.fail_rank=3: no such rank in a job of 1 ranks" in proc.stderr


def test_rank_count_must_match_the_cluster(tmp_path):
    proc, _ = run_cli(tmp_path, spec(2), 3)
    assert proc.returncode == 2
    assert "--ranks=3: the emulator runs one rank per GPU and the cluster has 2" in proc.stderr


def test_a_model_too_big_for_the_host_is_refused_before_launch(tmp_path):
    data = {**spec(8), "model": {"preset": "paper"}, "cluster": {"preset": "h800-ib", "nodes": 32, "gpus_per_node": 8},
            "placement": {"strategy": "one_per_gpu"}}
    proc, took = run_cli(tmp_path, data, 256)
    assert proc.returncode == 2, proc.stderr
    assert "model.preset='paper': 256 CPU ranks of this model need about" in proc.stderr
    assert took < DEADLINE_S
