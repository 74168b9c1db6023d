"""`moetb calibrate --backend emu`: microbenchmarks of a CPU host and its MPI -> a `cpu-host`-style profile.

    moetb calibrate --backend emu --out experiments/profiles/cpu-host.yaml [--ranks N] [--quick]

"GPU" in the profile means one MPI rank, "NVLink" the MPI transfers between ranks of the host. Every rank
runs the compute benchmarks at the same time, with the threads a run gives it (emu.job.set_threads), so
the rates are those a rank sees in an emulator run of that many ranks. Timing: warm-up, barrier, MPI.Wtime,
median of repeats; across ranks the median is kept.
- gemm_table: the FP8 GEMMs of the `tiny` model (projections, dense FFN, experts) at several row counts
  through `moe.model.linear.fp8_linear` on bf16 activations (quantized inside, as the model calls it),
  and BF16 products: two square-ish matmuls and the router (float32 on the CPU, as moe.model.gate);
  fp8_TFLOPS / bf16_TFLOPS: the best rate measured per dtype (the roofline ceiling the simulator uses
  outside the table). The CPU attention core (scaled_dot_product_attention) runs about 10x below the
  BF16 GEMM rate; it is not entered as table points, because the simulator interpolates efficiencies
  across weight shapes and dtypes and such points would change the experts' predicted times;
- hbm_GBps: bytes read + written by a large tensor copy; launch_overhead_us: one minimal torch op;
- p2p_curve, nvlink_GBps: OSU bandwidth from rank 0 to rank 1 (a window of Isends, Irecvs posted ahead,
  Waitall, a one-byte acknowledgement), at the largest size for nvlink_GBps; nvlink_latency_us: half
  a ping-pong of 8 bytes; message_overhead_us: time per message of a window of 8-byte Isends;
- alltoall_curve: MPI Alltoall bus bandwidth (algbw x (n-1)/n, nccl-tests' definition) versus bytes
  per rank.
"""

from __future__ import annotations

import datetime
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from mpi4py import MPI

from emu.job import ranks_on_host, set_threads
from emu.report import cpu_name
from moe.spec.loader import load_preset
from moe.spec.schema import Model

ROWS_FULL, ROWS_QUICK = (16, 64, 256, 1024), (64, 256)
BYTES_FULL = tuple(1 << p for p in range(10, 25, 2))  # 1 KiB .. 16 MiB
BYTES_QUICK = (1 << 12, 1 << 20, 1 << 22)
WINDOW = 64
"""Messages in flight per OSU bandwidth iteration (osu_bw's default window size)."""


def median_time_s(fn: Callable[[], object], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = MPI.Wtime()
        fn()
        times.append(MPI.Wtime() - start)
    return statistics.median(times)


def gemm_table(rows: tuple[int, ...], repeats: int) -> list[dict]:
    """FP8 GEMM rates of the tiny model's weight shapes, and BF16 matmul rates, at `rows` rows."""
    from moe.model.fp8 import quantize_weight
    from moe.model.linear import Fp8Weight, fp8_linear
    from moe.model.shapes import attention_gemms, expert_gemms, ffn_gemms

    model = Model(**{**load_preset("model", "tiny"), "preset": "tiny"})
    shapes = sorted({(g.k, g.n) for g in attention_gemms(model, 128) + ffn_gemms(model, 128, moe=False)
                     + expert_gemms(model, 128) if g.dtype == "fp8"})
    gen = torch.Generator().manual_seed(0)
    out = []
    for k, n in shapes:
        w = Fp8Weight(*quantize_weight(torch.randn(n, k, generator=gen)))
        for m in rows:
            # bf16 activations, quantized per token inside fp8_linear: how the model's projections and
            # FFNs call it (only a routed expert's first GEMM receives an already quantized input)
            x = torch.randn(m, k, generator=gen).bfloat16()
            t = median_time_s(lambda x=x, w=w: fp8_linear(x, w), 2, repeats)
            out.append({"m": m, "k": k, "n": n, "dtype": "fp8", "TFLOPS": 2 * m * k * n / t / 1e12})
    for k, n in ((model.hidden, model.hidden), (model.hidden, 4 * model.hidden)):
        b = torch.randn(k, n, generator=gen).bfloat16()
        for m in rows:
            a = torch.randn(m, k, generator=gen).bfloat16()
            t = median_time_s(lambda a=a, b=b: a @ b, 2, repeats)
            out.append({"m": m, "k": k, "n": n, "dtype": "bf16", "TFLOPS": 2 * m * k * n / t / 1e12})
    k, n = model.hidden, model.experts  # the router, as moe.model.gate computes it (float32 on the CPU)
    w = torch.randn(n, k, generator=gen).bfloat16()
    for m in rows:
        x = torch.randn(m, k, generator=gen).bfloat16()
        t = median_time_s(lambda x=x, w=w: x.float() @ w.float().t(), 2, repeats)
        out.append({"m": m, "k": k, "n": n, "dtype": "bf16", "TFLOPS": 2 * m * k * n / t / 1e12})
    return out


def hbm_GBps(repeats: int, nbytes: int = 64 << 20) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8).random_(0, 255)
    return 2 * nbytes / median_time_s(src.clone, 1, repeats) / 1e9


def launch_us(calls: int = 2000) -> float:
    a, b = torch.ones(1), torch.ones(1)
    return median_time_s(lambda: [torch.add(a, b) for _ in range(calls)], 1, 5) / calls * 1e6


def osu_bw_GBps(comm, nbytes: int, iters: int) -> float:
    """osu_bw between ranks 0 (sender) and 1: WINDOW Isends of `nbytes`, Waitall, 1-byte ack."""
    buf, ack = np.zeros(nbytes, dtype=np.uint8), np.zeros(1, dtype=np.uint8)
    parts = [buf] * WINDOW  # as osu_bw.c: every message of the window uses the same buffer

    def one():
        if comm.rank == 0:
            MPI.Request.Waitall([comm.Isend(p, 1, 7) for p in parts])
            comm.Recv(ack, 1, 8)
        elif comm.rank == 1:
            MPI.Request.Waitall([comm.Irecv(p, 0, 7) for p in parts])
            comm.Send(ack, 0, 8)

    for _ in range(2):
        one()
    comm.Barrier()
    start = MPI.Wtime()
    for _ in range(iters):
        one()
    return nbytes * WINDOW * iters / (MPI.Wtime() - start) / 1e9


def osu_bibw_GBps(comm, nbytes: int, iters: int) -> float:
    """osu_bibw between ranks 0 and 1: both post WINDOW Irecvs and WINDOW Isends, Waitall; bytes per
    direction per second."""
    peer = 1 - comm.rank
    send, recv = np.zeros(nbytes, dtype=np.uint8), np.zeros(nbytes, dtype=np.uint8)

    def one():
        if comm.rank < 2:  # as osu_bibw.c: the window's messages share one send and one receive buffer
            reqs = [comm.Irecv(recv, peer, 9) for _ in range(WINDOW)]
            reqs += [comm.Isend(send, peer, 9) for _ in range(WINDOW)]
            MPI.Request.Waitall(reqs)

    for _ in range(2):
        one()
    comm.Barrier()
    start = MPI.Wtime()
    for _ in range(iters):
        one()
    return nbytes * WINDOW * iters / (MPI.Wtime() - start) / 1e9


def iters_for(nbytes: int, quick: bool) -> int:
    """Iterations so each size moves about 64 MiB (quick: 16 MiB) per window set, at least 5."""
    return max(5, ((16 if quick else 64) << 20) // (nbytes * WINDOW))


def pingpong_latency_us(comm, iters: int = 2000, nbytes: int = 8) -> float:
    buf = np.zeros(nbytes, dtype=np.uint8)
    comm.Barrier()
    start = MPI.Wtime()
    for _ in range(iters):
        if comm.rank == 0:
            comm.Send(buf, 1, 3)
            comm.Recv(buf, 1, 3)
        elif comm.rank == 1:
            comm.Recv(buf, 0, 3)
            comm.Send(buf, 0, 3)
    return (MPI.Wtime() - start) / iters / 2 * 1e6


def message_overhead_us(comm, windows: int = 200) -> float:
    """Sender time per message of a window of 8-byte Isends (receiver posts matching Irecvs first)."""
    bufs = np.zeros((WINDOW, 8), dtype=np.uint8)
    comm.Barrier()
    start = MPI.Wtime()
    for _ in range(windows):
        if comm.rank == 0:
            MPI.Request.Waitall([comm.Isend(bufs[i], 1, 4) for i in range(WINDOW)])
        elif comm.rank == 1:
            MPI.Request.Waitall([comm.Irecv(bufs[i], 0, 4) for i in range(WINDOW)])
    return (MPI.Wtime() - start) / (windows * WINDOW) * 1e6


def alltoall_busbw_GBps(comm, nbytes: int, iters: int) -> float:
    n = comm.size
    chunk = max(1, nbytes // n)
    send, recv = np.zeros(chunk * n, dtype=np.uint8), np.zeros(chunk * n, dtype=np.uint8)
    t = median_time_s(lambda: (comm.Barrier(), comm.Alltoall(send, recv)), 2, iters)
    return chunk * n / t * (n - 1) / n / 1e9


def host_memory_GB() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024 / 1e9
    return 8.0


def calibrate_ranks(tr, *, quick: bool) -> dict | None:
    """Every rank of a calibration job; rank 0 returns the profile mapping."""
    comm = tr.comm
    if comm.size < 2:
        raise ValueError("emu calibration needs at least 2 ranks (point-to-point between ranks 0 and 1)")
    set_threads(ranks_on_host(comm.size))
    repeats = 5 if quick else 15
    comm.Barrier()
    table = gemm_table(ROWS_QUICK if quick else ROWS_FULL, repeats)
    hbm, launch = hbm_GBps(repeats), launch_us()
    comm.Barrier()
    sizes = BYTES_QUICK if quick else BYTES_FULL
    p2p = [{"bytes": b, "GBps": osu_bw_GBps(comm, b, iters_for(b, quick))} for b in sizes]
    latency, overhead = pingpong_latency_us(comm), message_overhead_us(comm)
    a2a = [{"bytes": b, "GBps": alltoall_busbw_GBps(comm, b, repeats)} for b in sizes if b >= comm.size]
    tables = comm.gather((table, hbm, launch), 0)
    if comm.rank != 0:
        return None
    merged = [{**row, "TFLOPS": statistics.median(t[0][i]["TFLOPS"] for t in tables)} for i, row in enumerate(table)]
    base = load_preset("cluster", "cpu-host")
    return {
        "name": f"CPU host {cpu_name()}, {comm.size} MPI ranks "
                f"(moetb calibrate --backend emu, {datetime.date.today().isoformat()})",
        "nodes": 1, "gpus_per_node": comm.size,
        "fp8_TFLOPS": max(r["TFLOPS"] for r in merged if r["dtype"] == "fp8"),
        "bf16_TFLOPS": max(r["TFLOPS"] for r in merged if r["dtype"] == "bf16"),
        "hbm_GBps": statistics.median(t[1] for t in tables),
        "memory_GB": round(host_memory_GB() / comm.size, 2),
        "gemm_table": merged,
        "nvlink_GBps": p2p[-1]["GBps"], "nvlink_latency_us": latency,
        "nic_GBps": base["nic_GBps"], "nic_latency_us": base["nic_latency_us"],
        "fabric_oversubscription": 1.0, "gpus_per_leaf": base["gpus_per_leaf"],
        "launch_overhead_us": statistics.median(t[2] for t in tables), "message_overhead_us": overhead,
        "alltoall_curve": a2a, "p2p_curve": p2p,
    }
