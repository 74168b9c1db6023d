"""benchmarks/a2a_floor.py's CPU-checkable parts: the splits every rank sends (the GPU patterns themselves
run on GPUs only: `python benchmarks/a2a_floor.py`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from a2a_floor import splits_of  # noqa: E402


@pytest.mark.parametrize("ranks", [2, 4, 8])
@pytest.mark.parametrize("rows", [64, 4096, 8190])
def test_splits_are_even_non_negative_and_sum_to_the_rows(ranks, rows):
    for rank in range(ranks):
        for mb in range(3):
            s = splits_of(rank, ranks, rows, mb)
            assert len(s) == ranks and sum(s) == rows
            assert all(x >= 0 and x % 2 == 0 for x in s), s


def test_splits_are_imbalanced_by_rank_and_micro_batch():
    assert splits_of(0, 4, 4096, 0) != splits_of(1, 4, 4096, 0) != splits_of(1, 4, 4096, 1)


def test_odd_rows_are_refused_with_exit_code_2():
    proc = subprocess.run([sys.executable, "benchmarks/a2a_floor.py", "--out", "/tmp/x.json", "--rows", "4095"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--rows must be even" in proc.stderr
