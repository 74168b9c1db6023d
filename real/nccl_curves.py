"""NCCL microbenchmarks of `moetb calibrate --backend real` (every rank calls each, collectively):
all-to-all bus bandwidth and a point-to-point ring over message sizes, and the small-message latency
between ranks 0 and 1. `timer(fn, warmup, repeats)` gives the median seconds of fn() (real.calibrate's
CUDA-event timer).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

Timer = Callable[[Callable[[], object], int, int], float]


def measure_alltoall(sizes: tuple[int, ...], repeats: int, timer: Timer) -> list[dict]:
    """all_to_all_single bus bandwidth per bytes-per-rank: busbw = (bytes / time) (n-1)/n."""
    import torch
    import torch.distributed as dist

    n = dist.get_world_size()
    out = []
    for size in sizes:
        chunk = max(1, size // n)
        send = torch.empty(chunk * n, dtype=torch.uint8, device="cuda")
        recv = torch.empty_like(send)
        dist.barrier()
        t = timer(lambda s=send, r=recv: dist.all_to_all_single(r, s), 3, repeats)
        out.append({"bytes": chunk * n, "GBps": round(chunk * n / t / 1e9 * (n - 1) / n, 2)})
    return out


def measure_ring_p2p(sizes: tuple[int, ...], repeats: int, timer: Timer) -> list[dict]:
    """batch_isend_irecv ring (send to rank+1, receive from rank-1): bytes per direction per GPU / time."""
    import torch
    import torch.distributed as dist

    r, n = dist.get_rank(), dist.get_world_size()
    out = []
    for size in sizes:
        send = torch.empty(size, dtype=torch.uint8, device="cuda")
        recv = torch.empty_like(send)

        def ring(s=send, v=recv):
            ops = [dist.P2POp(dist.isend, s, (r + 1) % n), dist.P2POp(dist.irecv, v, (r - 1) % n)]
            for work in dist.batch_isend_irecv(ops):
                work.wait()

        dist.barrier()
        t = timer(ring, 3, repeats)
        out.append({"bytes": size, "GBps": round(size / t / 1e9, 2)})
    return out


def measure_latency_us(repeats: int) -> float:
    """Half the round trip of an 8-byte message between ranks 0 and 1 (others idle at the barrier)."""
    import time

    import torch
    import torch.distributed as dist

    r = dist.get_rank()
    buf = torch.zeros(8, dtype=torch.uint8, device="cuda")
    samples = []
    for i in range(repeats + 5):
        dist.barrier()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        if r == 0:
            dist.send(buf, 1)
            dist.recv(buf, 1)
        elif r == 1:
            dist.recv(buf, 0)
            dist.send(buf, 0)
        torch.cuda.synchronize()
        if i >= 5:
            samples.append((time.perf_counter() - t0) / 2 * 1e6)
    return statistics.median(samples)
