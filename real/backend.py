"""The `real` backend: the emulator's runtime on GPUs with an NCCL transport, and GPU calibration.

    torchrun --nproc-per-node G -m moe calibrate --backend real --out PROFILE.yaml
    moetb calibrate --backend real --ranks G --out PROFILE.yaml     (starts torchrun itself)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml

from real import dist


def calibrate(*, ranks: int | None = None, quick: bool = False) -> dict | None:
    """Microbenchmarks of this GPU node -> a profile mapping (real.calibrate). Under a launcher every rank
    measures and rank 0 returns the mapping; outside one, `ranks` (default: every visible GPU) processes
    are started with torchrun."""
    if dist.place() is None:
        import torch

        n = ranks or torch.cuda.device_count()
        if n < 1:
            from moe.errors import BackendUnavailable

            raise BackendUnavailable("real: calibration needs CUDA GPUs and none is visible")
        with tempfile.TemporaryDirectory(prefix="moetb-real-") as tmp:
            out = Path(tmp) / "profile.yaml"
            dist.launch(n, ["calibrate", "--backend", "real", "--out", str(out)] + (["--quick"] if quick else []))
            return yaml.safe_load(out.read_text())
    from real.calibrate import calibrate_ranks

    dist.init("nccl", timeout_s=600)
    try:
        return calibrate_ranks(quick=quick)
    finally:
        dist.finish()
