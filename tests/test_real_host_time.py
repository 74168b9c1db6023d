"""benchmarks/real_host_time.py in its CPU mode (2 gloo ranks under torchrun): the `ops` table times single torch
calls and counts the torch calls of one micro-batch's exchange per transport."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ops_times_calls_and_counts_them_per_exchange(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "benchmarks/real_host_time.py", "ops", "--quick", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for rank in (0, 1):
        text = (tmp_path / f"host_ops_{rank}.txt").read_text()
        assert "op add (kernel)" in text and "op view" in text
        counts = {line.split(",")[1].split(":")[0].strip(): float(line.rsplit(":", 1)[1])
                  for line in text.splitlines() if line.startswith("torch calls per micro-batch exchange")}
        assert set(counts) == {"p2p", "all_to_all"} and all(n > 10 for n in counts.values()), text
