"""A failing or stuck rank ends the whole `real` job with that rank and its error printed, never a hang.

Jobs start the way a user starts them (`python -m moe run SPEC --backend real --ranks N`, which launches
torchrun); torchrun ends the other ranks once one exits with an error. On CPUs the ranks talk gloo; the
GPU versions (`-m gpu`) run the same jobs over NCCL, where a stuck peer is caught by the bounded wait for
the counts of the next exchange (`real.timeout_s`).
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
DEADLINE_S = 40.0
"""Launch (torchrun, imports, model) plus the timeout of the stuck case, with room for a loaded box."""


def spec(ranks: int, timeout_s: float = 30.0, **emu) -> dict:
    return {"name": "real-fault", "model": {"preset": "tiny"},
            "cluster": {"preset": "cpu-host", "nodes": 1, "gpus_per_node": ranks},
            "placement": {"strategy": "contiguous"}, "workload": {"tokens_per_gpu": 16, "context_len": 16},
            "emu": {"threads": 1, **emu}, "real": {"warmup": 0, "repeats": 1, "timeout_s": timeout_s}}


def run_cli(tmp_path: Path, data: dict, ranks: int) -> tuple[subprocess.CompletedProcess, float]:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "moe", "run", str(path), "--backend", "real", "--ranks", str(ranks),
                           "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    return proc, time.monotonic() - start


def gpus() -> int:
    import torch

    return torch.cuda.device_count()


def test_exception_on_one_rank_ends_the_job(tmp_path):
    proc, took = run_cli(tmp_path, spec(2, fail_rank=1, fail_at="expert"), 2)
    assert proc.returncode == 1, proc.stderr
    assert "moetb real: rank 1 of 2 failed: InjectedFault: injected failure at expert" in proc.stderr
    assert "failed (torchrun exit" in proc.stderr  # the launcher's one-line summary
    assert took < DEADLINE_S, f"job took {took:.1f} s to end"
    assert not (tmp_path / "out" / "result.json").exists()


@pytest.mark.slow
def test_stuck_rank_ends_the_job_by_timeout(tmp_path):
    proc, took = run_cli(tmp_path, spec(2, timeout_s=3.0, fail_rank=1, fail_at="dispatch", fail_mode="hang"), 2)
    assert proc.returncode == 1, proc.stderr
    assert "moetb real: rank 0 of 2 failed:" in proc.stderr
    assert took < DEADLINE_S, f"job took {took:.1f} s to end"


def test_one_rank_failure_is_a_run_failure():
    from real.backend import run

    s = load_scenario(spec(1, fail_rank=0, fail_at="combine"))
    with pytest.raises(RunFailure, match="real: rank 0 of 1 failed: InjectedFault: injected failure at combine"):
        run(s, ranks=1)


def test_rank_count_must_match_the_cluster(tmp_path):
    proc, took = run_cli(tmp_path, spec(2), 3)
    assert proc.returncode == 2, proc.stderr
    assert "--ranks=3: the real backend runs one rank per GPU and the cluster has 2" in proc.stderr
    assert took < 10


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["raise", "hang"])
def test_nccl_failing_rank_ends_the_job(tmp_path, mode):
    if gpus() < 2:
        pytest.skip("needs 2 GPUs")
    data = spec(2, timeout_s=10.0, fail_rank=1, fail_at="expert" if mode == "raise" else "dispatch", fail_mode=mode)
    proc, took = run_cli(tmp_path, data, 2)
    assert proc.returncode == 1, proc.stderr
    failed = 1 if mode == "raise" else 0
    assert f"moetb real: rank {failed} of 2 failed:" in proc.stderr, proc.stderr
    assert took < DEADLINE_S + 30, f"job took {took:.1f} s to end"
