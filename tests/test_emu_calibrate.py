"""`moetb calibrate --backend emu`: a quick calibration on 2 ranks gives a valid, plausible cpu-host profile."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from moe.spec.schema import Cluster

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.mpi
def test_quick_calibration_writes_a_profile_the_simulator_reads(tmp_path):
    out = tmp_path / "cpu.yaml"
    proc = subprocess.run([sys.executable, "-m", "moe", "calibrate", "--backend", "emu", "--ranks", "2", "--quick",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    data = yaml.safe_load(out.read_text())
    c = Cluster.model_validate({"preset": "calibrated", **data})
    assert (c.nodes, c.gpus_per_node) == (1, 2)
    fp8 = [p for p in c.gemm_table if p.dtype == "fp8"]
    assert fp8 and {p.m for p in fp8} == {64, 256}
    assert c.fp8_TFLOPS == max(p.TFLOPS for p in fp8)
    # the MPI curve rises with message size (per-message costs amortize), latency and overheads are small
    curve = [p.GBps for p in c.p2p_curve]
    assert curve[-1] > curve[0]
    assert c.nvlink_GBps == c.p2p_curve[-1].GBps
    assert 0 < c.nvlink_latency_us < 1000 and 0 < c.message_overhead_us < 1000
    assert 0 < c.launch_overhead_us < 1000
    assert c.hbm_GBps > 0.1
    assert 1e-5 < c.host_probe_s < 1.0  # moe.hostprobe's reference while it calibrated


def test_profile_loads_as_a_cluster_preset(tmp_path):
    """A profile file written by calibrate is usable as `cluster.preset: file.yaml`."""
    from moe.profile import write_profile
    from moe.spec import load_scenario
    from moe.spec.loader import load_preset

    base = load_preset("cluster", "cpu-host")
    path = tmp_path / "p.yaml"
    write_profile(path, {**base, "gpus_per_node": 2, "p2p_curve": [{"bytes": 1024, "GBps": 0.5}]})
    s = load_scenario({"model": {"preset": "tiny"}, "cluster": {"preset": str(path)},
                       "placement": {"strategy": "contiguous"}, "workload": {"tokens_per_gpu": 16}})
    assert s.cluster.gpus == 2 and s.cluster.p2p_curve[0].GBps == 0.5
