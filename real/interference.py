"""How much a GPU's compute slows while its communication kernels run (`moetb calibrate --backend real`).

NCCL moves data with kernels: each channel holds an SM, and its copies take HBM bandwidth. A GEMM that runs
beside an all-to-all gets fewer SMs and less bandwidth than alone, so with overlap (micro-batch i + 1's
transfer during micro-batch i's experts) compute runs slower than its op-table time, which is timed alone.
`measure_comm_slowdown` times an expert-sized FP8 GEMM (`moe.model.linear.fp8_linear`, the `paper` expert's
fused w1|w3: 4096 x 7168 x 36864) alone, then queued behind the first of a chain of `all_to_all_single` calls
on a side stream (every rank at once), the chain long enough to outlast the GEMM: -> `cluster.
comm_compute_slowdown` = beside / alone - 1, the median over ranks; the simulator stretches compute inside a
transfer's window by that factor (sim.executor). One constant for every op: GEMMs lose SMs, memory-bound ops
bandwidth, and the GEMM stands for both (the expert phase is what overlap hides the transfers behind).
"""

from __future__ import annotations

import math
import statistics

GEMM_MKN = (4096, 7168, 2 * 18432)
"""The `paper` expert's fused w1|w3 GEMM at 4096 rows (moe.model.shapes.swiglu_gemms)."""
A2A_BYTES = 64 << 20
"""Bytes per rank of each all-to-all of the chain (NVLink bandwidth's plateau: `alltoall_curve`)."""


def slowdown(alone_s: list[float], beside_s: list[float]) -> float:
    """beside / alone - 1 of the medians, never below 0 (noise can make a GEMM beside a transfer look faster)."""
    return max(0.0, statistics.median(beside_s) / statistics.median(alone_s) - 1.0)


def measure_comm_slowdown(repeats: int) -> float:
    """`cluster.comm_compute_slowdown` of this job's GPUs (module docstring); every rank calls it. The median
    over ranks, on every rank."""
    import torch
    import torch.distributed as dist

    from moe.model.fp8 import quantize_act, quantize_weight
    from moe.model.linear import Fp8Weight, fp8_linear

    m, k, n = GEMM_MKN
    dev = torch.device("cuda", torch.cuda.current_device())
    w = Fp8Weight(*quantize_weight(torch.randn(n, k, device=dev) * 0.02))
    x = quantize_act(torch.randn(m, k, device=dev, dtype=torch.bfloat16))
    ranks = dist.get_world_size()
    send = torch.empty(A2A_BYTES // ranks * ranks, dtype=torch.uint8, device=dev)
    recv = torch.empty_like(send)
    side = torch.cuda.Stream(dev)
    main = torch.cuda.current_stream(dev)

    def events() -> tuple[torch.cuda.Event, torch.cuda.Event]:
        return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def gemm_s() -> float:
        start, end = events()
        start.record(main)
        fp8_linear(x, w)
        end.record(main)
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    def a2a_s() -> float:
        dist.barrier()
        start, end = events()
        start.record(main)
        dist.all_to_all_single(recv, send)
        end.record(main)
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    for _ in range(3):
        gemm_s(), a2a_s()
    alone = [gemm_s() for _ in range(repeats)]
    mine = 1 + math.ceil(3 * statistics.median(alone) / statistics.median([a2a_s() for _ in range(repeats)]))
    longest = torch.tensor([mine], device=dev)  # every rank must post as many collectives: the longest chain
    dist.all_reduce(longest, op=dist.ReduceOp.MAX)
    chain = int(longest.item())
    beside = []
    for _ in range(repeats):
        dist.barrier()
        torch.cuda.synchronize(dev)
        first = torch.cuda.Event()
        with torch.cuda.stream(side):
            dist.all_to_all_single(recv, send)
            first.record(side)
            for _ in range(chain - 1):  # still moving data when the GEMM ends
                dist.all_to_all_single(recv, send)
        main.wait_event(first)  # the GEMM starts once the chain runs at full rate
        beside.append(gemm_s())
        torch.cuda.synchronize(dev)
    every = [0.0] * ranks
    dist.all_gather_object(every, slowdown(alone, beside))
    return round(statistics.median(every), 4)
