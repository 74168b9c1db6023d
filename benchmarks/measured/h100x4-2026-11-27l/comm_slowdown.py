"""real.interference.measure_comm_slowdown on this job's GPUs, printed by rank 0 with the times behind it.

    torchrun --nproc-per-node 4 benchmarks/measured/h100x4-2026-11-27l/comm_slowdown.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from real import interference  # noqa: E402


def main() -> None:
    dist.init_process_group("nccl")
    rank = dist.get_rank()
    torch.cuda.set_device(rank % torch.cuda.device_count())
    seen = []
    inner = interference.slowdown

    def logged(alone, beside):  # the medians behind each rank's figure
        seen.append((sorted(alone)[len(alone) // 2], sorted(beside)[len(beside) // 2]))
        return inner(alone, beside)

    interference.slowdown = logged
    for _ in range(3):
        value = interference.measure_comm_slowdown(20)
        if rank == 0:
            alone, beside = seen[-1]
            print(f"ranks {dist.get_world_size()}: comm_compute_slowdown {value} (rank 0: GEMM alone "
                  f"{alone * 1e3:.3f} ms, beside the all-to-all {beside * 1e3:.3f} ms)", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
