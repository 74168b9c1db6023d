"""Shared test helpers."""

from __future__ import annotations

import os
from pathlib import Path

# One compute thread per process: the suite runs on 2 cores, often with MPI ranks beside it, and torch's
# intra-op threads oversubscribe them (the tiny model runs ~10x slower with 2 threads on a loaded box).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def root() -> Path:
    return ROOT


def small_spec(**sections) -> dict:
    """A scenario mapping for the tiny model on 16 CPU-sized 'GPUs' (4 nodes x 4), one expert per GPU."""
    spec = {
        "name": "small",
        "model": {"preset": "tiny"},
        "cluster": {"preset": "h800-ib", "nodes": 4, "gpus_per_node": 4},
        "workload": {"tokens_per_gpu": 64, "context_len": 64},
    }
    for key, value in sections.items():
        spec[key] = {**spec.get(key, {}), **value}
    return spec
