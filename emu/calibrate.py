"""`moetb calibrate --backend emu`: microbenchmarks of a CPU host and its MPI -> a `cpu-host`-style profile.

    moetb calibrate --backend emu --out experiments/profiles/cpu-host.yaml [--ranks N] [--quick]

"GPU" in the profile means one MPI rank, "NVLink" the MPI transfers between ranks of the host. Every rank
runs the compute benchmarks at the same time, with the threads a run gives it (emu.job.set_threads), so
the rates are those a rank sees in an emulator run of that many ranks. Timing: warm-up, barrier, the host clock,
median of repeats; across ranks the median is kept.
- gemm_table: the FP8 GEMMs of the `tiny` model (projections, dense FFN, experts) at several row counts
  through `moe.model.linear.fp8_linear` on bf16 activations (quantized inside, as the model calls it),
  and BF16 products: two square-ish matmuls and the router (float32 on the CPU, as moe.model.gate);
  fp8_TFLOPS / bf16_TFLOPS: the best rate measured per dtype (the roofline ceiling the simulator uses
  outside the table);
- op_table: the runtime's own operations (moe.model.optable: attention, gate, dispatch packing, expert
  shards, shared expert, dense FFN, combine, the per-step KV cache setup) of every model in OP_MODELS,
  timed with this module's `runtime_ops` (the emu.dispatch calls the runtime makes), each call after a
  cache-evicting pass (emu.coldcache). Each point is measured twice: with every rank measuring at once
  (per_node = ranks, threads = cores / ranks, as an emulator run of that many ranks) and with rank 0
  alone (per_node = 1, every core), the other ranks sleeping; in OP_PASSES passes over the grid, the
  slowest rank of a pass, the median pass;
- hbm_GBps: bytes read + written by a large tensor copy; launch_overhead_us: one minimal torch op;
- p2p_curve, nvlink_GBps: OSU bandwidth from rank 0 to rank 1 (a window of Isends, Irecvs posted ahead,
  Waitall, a one-byte acknowledgement), at the largest size for nvlink_GBps; nvlink_latency_us: half
  a ping-pong of 8 bytes; message_overhead_us: time per message of a window of 8-byte Isends;
- alltoall_curve: MPI Alltoall bus bandwidth (algbw x (n-1)/n, nccl-tests' definition) versus bytes
  per rank.
"""

from __future__ import annotations

import datetime
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from emu.coldcache import flusher, median_time_s
from emu.job import ranks_on_host, set_threads
from emu.report import cpu_name, host_memory_GB
from moe.hostprobe import calibration_probe, host_probe_s
from moe.spec.loader import load_preset
from moe.spec.schema import Model
from moe.sweep.progress import Progress

ROWS_FULL, ROWS_QUICK = (16, 64, 256, 1024), (64, 256)
BYTES_FULL = tuple(1 << p for p in range(10, 25, 2))  # 1 KiB .. 16 MiB
BYTES_QUICK = (1 << 12, 1 << 20, 1 << 22)
WINDOW = 64
"""Messages in flight per OSU bandwidth iteration (osu_bw's default window size)."""


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
    from mpi4py import MPI

    buf, ack = np.zeros(nbytes, dtype=np.uint8), np.zeros(1, dtype=np.uint8)
    parts = [buf] * WINDOW  # as osu_bw.c: every message of the window uses the same buffer

    def one():
        if comm.rank == 0:
            MPI.Request.Waitall([comm.Isend(p, 1, 7) for p in parts])
            comm.Recv(ack, 1, 8)
        elif comm.rank == 1:
            MPI.Request.Waitall([comm.Irecv(p, 0, 7) for p in parts])
            comm.Send(ack, 0, 8)

    return window_rate_GBps(comm, one, nbytes, iters)


def window_rate_GBps(comm, one, nbytes: int, iters: int) -> float:
    """Bytes per second of `one()` (a window of WINDOW messages of nbytes each way): two warm-up calls, a
    barrier, then `iters` timed calls."""
    from mpi4py import MPI

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
    from mpi4py import MPI

    peer = 1 - comm.rank
    send, recv = np.zeros(nbytes, dtype=np.uint8), np.zeros(nbytes, dtype=np.uint8)

    def one():
        if comm.rank < 2:  # as osu_bibw.c: the window's messages share one send and one receive buffer
            reqs = [comm.Irecv(recv, peer, 9) for _ in range(WINDOW)]
            reqs += [comm.Isend(send, peer, 9) for _ in range(WINDOW)]
            MPI.Request.Waitall(reqs)

    return window_rate_GBps(comm, one, nbytes, iters)


def iters_for(nbytes: int, quick: bool) -> int:
    """Iterations so each size moves about 64 MiB (quick: 16 MiB) per window set, at least 5."""
    return max(5, ((16 if quick else 64) << 20) // (nbytes * WINDOW))


def pingpong_latency_us(comm, iters: int = 2000, nbytes: int = 8) -> float:
    from mpi4py import MPI

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
    from mpi4py import MPI

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


# ----------------------------------------------------------------------------------------- op table
OP_MODELS = {
    "tiny": {"preset": "tiny"},
    "tiny-wide": {"preset": "tiny", "layers": 4, "hidden": 512, "expert_hidden": 512, "dense_hidden": 1024,
                  "attention": {"heads": 8, "head_dim": 32, "v_head_dim": 32, "kv_latent": 128, "q_latent": 256,
                                "rope_dim": 32}},
}
"""Models whose operations calibration times: `tiny` and a mid-size CPU model (8x tiny's expert FLOPs)."""
TOKENS_FULL = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
CONTEXTS_FULL = (64, 128, 256, 512, 1024, 2048, 4096)
DECODE_FULL = ((1, 2, 4, 8, 16, 32, 64, 128, 256), (256, 1024, 4096))
TOKENS_QUICK, CONTEXTS_QUICK, DECODE_QUICK = (16, 64, 256), (64, 256), ((16, 64), (256,))
MAX_CACHED, MAX_SETUP = 1 << 20, 1 << 17
"""Cached tokens (batch x context) per layer of a decode attention point (200 MB for tiny) and of a timed
KV setup (filling synthetic caches costs ~3 us per token here)."""
OP_PASSES = 3  # passes over the op grid; each point keeps its median pass


def op_model(name: str) -> Model:
    spec = dict(OP_MODELS[name])
    preset = spec.pop("preset")
    base = load_preset("model", preset)
    attention = {**base.get("attention", {}), **spec.pop("attention", {})}
    return Model.model_validate({**base, **spec, "attention": attention, "preset": preset})


def op_grid(quick: bool):
    from moe.model.optable import Grid, decode_pairs

    tokens, contexts, (batches, keys) = (TOKENS_QUICK, CONTEXTS_QUICK, DECODE_QUICK) if quick else \
        (TOKENS_FULL, CONTEXTS_FULL, DECODE_FULL)
    prefill = tuple((t, s) for s in contexts for t in (s // 8, s // 4, s // 2, s, 2 * s, 4 * s)
                    if 1 <= t <= max(tokens))
    return Grid(tokens=tokens, rows=tokens, prefill=prefill, decode=decode_pairs(batches, keys, MAX_CACHED),
                max_setup=MAX_SETUP)


def op_timer(comm, together: bool) -> Callable[[Callable[[], object]], float]:
    """One pass's time of an operation: the median of 3 calls after a warm-up call, each after the
    cache-evicting pass (coldcache); `together` (every rank measuring): each call starts once every rank
    has made its pass, so that no rank's pass evicts another's caches while that one is timed."""
    flush = flusher()
    before = (lambda: (flush(), sleep_barrier(comm))) if together else flush
    return lambda fn: median_time_s(fn, 1, 3, before=before)


def runtime_ops(device: torch.device, wire: tuple[str, str], host_wire: bool = True, calls=None):
    """moe.model.optable.RuntimeOps from the calls the runtime makes (emu.dispatch, emu.microbatch).
    `host_wire`: received rows sit in host buffers (MPI), else on the device (NCCL). `calls`: the model's
    calls as the runtime issues them (`moe.model.graphs.ModelCalls`; None: eagerly)."""
    from types import SimpleNamespace

    from emu import dispatch as dp
    from emu.microbatch import layout, new_caches, rewind
    from moe.model.fp8 import pack
    from moe.model.optable import RuntimeOps
    from moe.spec.schema import Scenario, Schedule, Workload

    buf_dev = torch.device("cpu") if host_wire else device

    def dispatch(z_TD, ids_TK, w_TK, slots, ranks):
        keep = np.ones(ids_TK.shape, dtype=bool)
        n = len(dp.plan_dispatch(0, ids_TK, keep, w_TK, slots, ranks).token_N)
        out = torch.empty(n, dp.row_bytes(z_TD.shape[1], wire[0], ids_TK.shape[1]), dtype=torch.uint8,
                          device=z_TD.device)
        return lambda: dp.pack_rows(z_TD, dp.plan_dispatch(0, ids_TK, keep, w_TK, slots, ranks), wire[0], out)

    def shard(block, expert_of_slot, x_RD, slot_RK, w_RK):
        k = slot_RK.shape[1]
        meta_MC = torch.empty(len(x_RD), 2 * k, dtype=torch.int32)
        meta_MC[:, :k] = torch.from_numpy(slot_RK.astype(np.int32))  # this rank's slots start at 0
        meta_MC[:, k:] = w_RK.float().cpu().view(torch.int32)
        rows_MB = pack(x_RD, wire[0], head=meta_MC.to(x_RD.device).view(torch.uint8)).to(buf_dev)
        slot_rows = np.bincount(slot_RK[slot_RK >= 0], minlength=len(expert_of_slot))
        return lambda: dp.compute_shard(block, expert_of_slot, 0, rows_MB, x_RD.shape[1], wire[0], wire[1],
                                        device, slot_rows_S=slot_rows, calls=calls)

    def combine(x_TD, shared_TD, ids_TK, w_TK, slots, ranks):
        plan = dp.plan_dispatch(0, ids_TK, np.ones(ids_TK.shape, dtype=bool), w_TK, slots, ranks)
        ex = dp.Exchange(0, plan, x_TD.shape[1], wire[0], wire[1])
        for dst in np.flatnonzero(plan.counts_R):
            rows = torch.randn(int(plan.counts_R[dst]), x_TD.shape[1], device=device)
            ex.result_bufs[int(dst)] = pack(rows, wire[1]).to(buf_dev if dst else device)

        def call():
            out = x_TD.float() + dp.combine_rows(ex, x_TD.shape[0], device)
            if shared_TD is not None:
                out = out + shared_TD.float()
            return out.to(x_TD.dtype)

        return call

    def kv_setup(block, model, tokens, context, phase, layers):
        s = Scenario(model=model, workload=Workload(phase=phase, tokens_per_gpu=tokens, context_len=context or tokens),
                     schedule=Schedule(micro_batches=min(2, tokens)))
        lay = layout(s)
        stack = SimpleNamespace(new_caches=lambda b, cap: [block.new_cache(b, cap) for _ in range(layers)])
        caches = new_caches(stack, lay, 0)  # built once per job; each step rewinds them (emu.runtime)
        return lambda: rewind(caches, lay)

    return RuntimeOps(dispatch=dispatch, shard=shard, combine=combine, kv_setup=kv_setup, calls=calls)


def sleep_barrier(comm, poll_s: float = 1e-3) -> None:
    """A barrier whose waiting ranks sleep (a blocking MPI barrier spins and takes a core from a rank
    that is measuring)."""
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(poll_s)


def op_table_points(comm, quick: bool, bar: Progress | None = None) -> list[dict] | None:
    """Every rank: the op table of OP_MODELS at per_node = ranks (all measure) and 1 (rank 0 alone), in
    OP_PASSES passes over the whole grid (a shared host's bursts of load then hit one pass of a point, not
    all its samples). A pass keeps each point's slowest rank (the ranks of a run wait for each other at
    every layer); rank 0 returns the median pass (the host as other jobs usually leave it: memory-bound
    operations run up to 3x slower beside them, compute-bound ones hardly), the others None."""
    from moe.model.optable import measure

    cores = os.cpu_count() or 1
    device, wire = torch.device("cpu"), ("fp8", "bf16")
    grid, ops = op_grid(quick), runtime_ops(torch.device("cpu"), wire)
    passes: dict[int, list[list[dict]]] = {}
    for _ in range(1 if quick else OP_PASSES):
        for share in sorted({comm.size, 1}, reverse=True):
            torch.set_num_threads(max(1, cores // share))
            sleep_barrier(comm)
            mine, timer = [], op_timer(comm, together=share > 1)
            if comm.rank < share:  # ranks measure the same points in the same order
                for name in OP_MODELS:
                    mine += measure(op_model(name), timer, grid, device=device, ops=ops, ranks=comm.size, wire=wire)
            sleep_barrier(comm)
            if bar is not None:
                bar.advance()
            got = [r for r in (comm.gather(mine, 0) or []) if r]
            if comm.rank == 0:  # ranks meet at every layer: a pass's time of a point is its slowest rank's
                passes.setdefault(share, []).append([{**p, "s": max(r[i]["s"] for r in got)}
                                                     for i, p in enumerate(got[0])])
    set_threads(ranks_on_host(comm.size))
    if comm.rank != 0:
        return None
    return [{**p, "s": statistics.median(r[i]["s"] for r in rs), "per_node": share}
            for share, rs in sorted(passes.items(), reverse=True) for i, p in enumerate(rs[0])]


def calibrate_ranks(tr, *, quick: bool) -> dict | None:
    """Every rank of a calibration job; rank 0 returns the profile mapping."""
    comm = tr.comm
    if comm.size < 2:
        raise ValueError("emu calibration needs at least 2 ranks (point-to-point between ranks 0 and 1)")
    set_threads(ranks_on_host(comm.size))
    repeats = 5 if quick else 15
    # stages: GEMMs, MPI curves, then each op-table pass (all ranks, then rank 0 alone); rank 0 shows them
    bar = Progress("calibrate", 2 + 2 * (1 if quick else OP_PASSES)) if comm.rank == 0 else None
    comm.Barrier()
    table = gemm_table(ROWS_QUICK if quick else ROWS_FULL, repeats)
    hbm, launch = hbm_GBps(repeats), launch_us()
    comm.Barrier()
    bar and bar.advance()
    sizes = BYTES_QUICK if quick else BYTES_FULL
    p2p = [{"bytes": b, "GBps": osu_bw_GBps(comm, b, iters_for(b, quick))} for b in sizes]
    latency, overhead = pingpong_latency_us(comm), message_overhead_us(comm)
    a2a = [{"bytes": b, "GBps": alltoall_busbw_GBps(comm, b, repeats)} for b in sizes if b >= comm.size]
    bar and bar.advance()
    probe0 = host_probe_s()
    ops = op_table_points(comm, quick, bar)
    tables = comm.gather((table, hbm, launch, (probe0, host_probe_s())), 0)
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
        "alltoall_curve": a2a, "p2p_curve": p2p, "op_table": ops,
        "host_probe_s": calibration_probe([t[3] for t in tables], "op table's passes"),
    }


def preset_text(profile: dict, header: str) -> str:
    """A calibrated profile as a preset file: `header` as comments, one line per table point, values to
    4 significant digits (what the machine's run-to-run spread supports)."""
    import yaml

    def line(x) -> str:
        x = {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in x.items()}
        return yaml.safe_dump(x, default_flow_style=True, width=1 << 16, sort_keys=False).strip()[1:-1]

    out = [f"# {h}" for h in header.splitlines()]
    for k, v in profile.items():
        out += [f"{k}:"] + [f"  - {{{line(row)}}}" for row in v] if isinstance(v, list) and v else [line({k: v})]
    return "\n".join(out) + "\n"


if __name__ == "__main__":  # PROFILE.yaml PRESET.yaml "header": a calibrated profile -> a preset file
    import sys

    import yaml

    Path(sys.argv[2]).write_text(preset_text(yaml.safe_load(Path(sys.argv[1]).read_text()), sys.argv[3]))
