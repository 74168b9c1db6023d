"""`moetb calibrate --backend real`: microbenchmarks of a GPU node -> a hardware profile for the simulator.

    torchrun --nproc-per-node 4 -m moe calibrate --backend real --out experiments/profiles/h100x4.yaml

What is measured (timing discipline: warm-up, synchronize, CUDA events, median of repeats):
- the FP8 GEMMs the models run (`moe.model.shapes`: attention projections, dense FFN and routed experts of
  the `paper` and `deepseek-v3` presets, and of the `--scenario` models) at a grid of row counts, through
  `moe.model.linear.fp8_linear` exactly as the model calls it -> `gemm_table`; every rank measures its own
  GPU and the median is kept;
- HBM bandwidth from a device-to-device copy (bytes read + written) -> `hbm_GBps`;
- host launch cost of a minimal kernel -> `launch_overhead_us`;
- NCCL `all_to_all_single` bus bandwidth (busbw = algbw (n-1)/n, nccl-tests' definition) and a
  `batch_isend_irecv` ring (bytes per direction per GPU) over message sizes -> `alltoall_curve`,
  `p2p_curve`; the largest-size all-to-all bus bandwidth -> `nvlink_GBps`; half a small-message ping-pong
  between ranks 0 and 1 -> `nvlink_latency_us` (`real.nccl_curves`);
- an expert-sized FP8 GEMM alone and beside a running all-to-all -> `comm_compute_slowdown`, how much
  slower compute runs while a transfer shares the GPU (`real.interference`);
- the runtime's own operations (moe.model.optable with the emulator runtime's calls, emu.calibrate
  `runtime_ops`, received rows on the device as NCCL leaves them) of every model in MODELS, over the
  token grid of the validation sweep (tokens per GPU 256..8192, 1 or 2 micro-batches; expert rows up to
  every rank's tokens at once), by CUDA events, with the host time of each call (`host_s`: issuing its
  kernels, caches cold as in a run: `host_scrub`) and of its kernels with the host ahead (`device_s`:
  `op_times_s`, what the simulator's device runs) -> `op_table` (per_node 0: a GPU per rank; median over
  ranks), and each rank's host time relative to the median rank's -> `host_factors` (the simulator runs
  each GPU's host at one of them). Attention, gate, shared, dense and each expert call are replayed CUDA
  graphs, as the runtime runs them by default (`real.graphs`, `moe.model.graphs`; issued eagerly when every
  `--scenario` sets `real.graphs: false`). Its `model` keys are
  per-operation signatures, so `paper` or `deepseek-v3` with fewer experts or layers (E = G, E > G) reuses
  the attention, expert, shared and dense entries; the gate, dispatch and combine depend on E and top-k:
  `--scenario FILE` (repeatable) measures those scenario files' models instead of MODELS, each signature
  once, at the token counts their micro-batches run (`real.op_points`);
- the protocol's host bookkeeping of one exchange (counts round trip, posting the collectives: op
  `exchange`, host clock, every rank at once) over the same token grid, by the job's first 1, 2, 4, ...
  ranks and by all of them (`ranks`) -> `op_table`.
Progress (four stages) on rank 0's stderr.
Peak rates (`fp8_TFLOPS`, `bf16_TFLOPS`) are the best measured GEMM rates, the roofline ceiling the
simulator uses outside the table. NIC keys are kept from the `h100-ib` preset on a single node.
"""

from __future__ import annotations

import datetime
import functools
import statistics
from collections.abc import Callable, Sequence

from moe.spec.loader import load_preset
from moe.spec.schema import Model, RealOptions
from moe.sweep.progress import Progress
from real.interference import measure_comm_slowdown
from real.nccl_curves import measure_alltoall, measure_latency_us, measure_ring_p2p
from real.op_points import Wire, load_scenarios, op_grid, preset_models, scenario_grid, scenario_models

ROWS_FULL = (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
ROWS_QUICK = (128, 1024, 4096)
BYTES_FULL = tuple(1 << p for p in range(16, 29, 2))  # 64 KiB .. 256 MiB per rank
BYTES_QUICK = (1 << 20, 1 << 24)
EXCHANGE_TIMEOUT_S = 120.0


def gemm_shapes(models: Sequence[Model]) -> list[tuple[int, int]]:
    """Distinct FP8 weight shapes (K, N) of one layer of each model: projections, FFNs and experts."""
    from moe.model.shapes import attention_gemms, expert_gemms, ffn_gemms

    shapes: set[tuple[int, int]] = set()
    for m in models:
        for g in attention_gemms(m, 128) + ffn_gemms(m, 128, moe=False) + expert_gemms(m, 128):
            if g.dtype == "fp8" and g.batch == 1:
                shapes.add((g.k, g.n))
    return sorted(shapes)


def cuda_time_s(fn: Callable[[], object], warmup: int, repeats: int) -> float:
    """Median seconds of fn() by CUDA events, each call on an idle GPU, after `warmup` calls."""
    return cuda_times_s(fn, warmup, repeats)[0]


SCRUB_BYTES = 256 << 20
"""Host memory `host_scrub` passes over: more than the last-level cache of the CPUs that host H100s (Xeon
Sapphire Rapids 105 MB per socket, EPYC Genoa 32 MB per CCD; vendors' data sheets)."""


def host_scrub() -> Callable[[], object]:
    """The pass (`emu.coldcache.flusher` over SCRUB_BYTES) run before each timed call of an op-table
    point: in a run dozens of other calls (attention, gate, the protocol's planning and bookkeeping, the
    transport) run between two calls of one op and evict its code and data from the CPU caches; timed back
    to back, a call finds them warm and issues its kernels 1.4-5x faster than in a run (one H100 host,
    `benchmarks/host_cold.py`)."""
    from emu.coldcache import flusher

    return flusher(SCRUB_BYTES)


AHEAD_MARGIN_S = 200e-6
"""Spare device sleep beyond twice the slowest issue of the idle pass (`op_times_s`)."""


@functools.cache
def _sleep_cycles_per_s() -> float:
    """Clock cycles per second of `torch.cuda._sleep` on this GPU (one timed 2M-cycle sleep after a warm one)."""
    import torch

    torch.cuda._sleep(1000)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(2_000_000)
    end.record()
    end.synchronize()
    return 2_000_000 / (start.elapsed_time(end) / 1e3)


def _events_s(fn: Callable[[], object], sleep_cycles: int = 0) -> tuple[float, float]:
    """(CUDA-event seconds, host seconds) of one call of fn(), queued behind a device sleep when given."""
    import time

    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    if sleep_cycles:
        torch.cuda._sleep(sleep_cycles)
    start.record()
    t0 = time.perf_counter()
    fn()
    host = time.perf_counter() - t0
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3, host


def cuda_times_s(fn: Callable[[], object], warmup: int, repeats: int,
                 before: Callable[[], object] | None = None) -> tuple[float, float]:
    """(device, host) median seconds of fn(), each call on an idle GPU, after `warmup` calls: CUDA events
    around the call, and the host clock from the call to its return (issuing its kernels). `before`
    (host work, e.g. `host_scrub()`) runs untimed before each timed call."""
    idle, host = _idle_pass(fn, warmup, repeats, before)
    return statistics.median(idle), statistics.median(host)


def _idle_pass(fn, warmup: int, repeats: int, before) -> tuple[list[float], list[float]]:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    idle, host = [], []
    for _ in range(repeats):
        if before is not None:
            before()
        d, h = _events_s(fn)
        idle.append(d)
        host.append(h)
    return idle, host


def op_times_s(fn: Callable[[], object], warmup: int, repeats: int,
               before: Callable[[], object] | None = None) -> tuple[float, float, float]:
    """(device, host, device with the host ahead) median seconds of an op-table call: `cuda_times_s`'s idle
    pass, then `repeats` calls each queued behind a device sleep of twice the idle pass's slowest issue plus
    AHEAD_MARGIN_S, so its kernels run back to back and never wait for the host. A host-bound call's idle
    time holds this host's issue pace, which the simulator's host model charges apart (`host_s`); the ahead
    time holds only the device's work (one H100: 200 small kernels take 0.39 ms so against 2.1 ms on an
    idle GPU, `benchmarks/measured/h100x4-2026-11-27i/ahead_check.*`). A call that synchronizes inside
    waits out the sleep there, and its ahead time holds the issue after that point, as on an idle GPU."""
    idle, host = _idle_pass(fn, warmup, repeats, before)
    cycles = int((2 * max(host) + AHEAD_MARGIN_S) * _sleep_cycles_per_s())
    ahead = [_events_s(fn, cycles)[0] for _ in range(repeats)]
    return statistics.median(idle), statistics.median(host), statistics.median(ahead)


def measure_gemms(models: Sequence[Model], rows: tuple[int, ...], repeats: int) -> list[dict]:
    """TFLOP/s of fp8_linear for every (rows, K, N); inputs arrive as FP8 payload + scales (the wire)."""
    import torch

    from moe.model.fp8 import quantize_act, quantize_weight
    from moe.model.linear import Fp8Weight, fp8_linear

    dev = torch.device("cuda", torch.cuda.current_device())
    out = []
    for k, n in gemm_shapes(models):
        w = Fp8Weight(*quantize_weight(torch.randn(n, k, device=dev) * 0.02))
        for m in rows:
            x = quantize_act(torch.randn(m, k, device=dev, dtype=torch.bfloat16))
            t = cuda_time_s(lambda x=x, w=w: fp8_linear(x, w), warmup=3, repeats=repeats)
            out.append({"m": m, "k": k, "n": n, "dtype": "fp8", "TFLOPS": round(2 * m * k * n / t / 1e12, 1)})
        del w
    torch.cuda.empty_cache()
    return out


def measure_ops(models: list[tuple[Model, Wire]], grid, repeats: int, graphs: bool = True) -> list[dict]:
    """Op-table points of `models` on this rank's GPU (moe.model.optable, CUDA-event timer); an operation
    whose signature an earlier model already measured is not measured again. `graphs`: the model's
    fixed-shape calls replayed as CUDA graphs, as the runtime issues them by default (`real.graphs`)."""
    import torch
    import torch.distributed as dist

    from emu.calibrate import runtime_ops
    from moe.model.graphs import ModelCalls
    from moe.model.optable import measure
    from moe.model.shapes import OPS, op_signature

    dev = torch.device("cuda", torch.cuda.current_device())
    out, seen = [], set()
    for m, wire in models:
        todo = tuple(op for op in OPS if (op, op_signature(m, op, wire)) not in seen)
        if not todo:
            continue
        seen.update((op, op_signature(m, op, wire)) for op in todo)
        timer = functools.partial(op_times_s, warmup=2, repeats=repeats, before=host_scrub())
        ops = runtime_ops(dev, wire, host_wire=False, calls=ModelCalls(dev, graphs=graphs))
        out += measure(m, timer, grid, device=dev, ops=ops, ranks=dist.get_world_size(), wire=wire, only=todo)
        torch.cuda.empty_cache()
    return out


def exchange_rank_counts(world: int) -> list[int]:
    """The job sizes op `exchange` is measured at: every power of two below the job's ranks, and its ranks."""
    return sorted({1 << i for i in range(world.bit_length()) if 1 << i < world} | {world})


def measure_exchange_ops(models: list[tuple[Model, Wire]], tokens: tuple[int, ...], repeats: int) -> list[dict]:
    """Op `exchange`: host seconds of the protocol's bookkeeping of one (layer, micro-batch) exchange of T
    tokens through the real transport (`real.transport`'s default), every rank at once from a barrier:
    the counts round trip, posting the row and result collectives and the receives, as
    `emu.runtime` calls them (`emu.dispatch`; planning and packing are the `dispatch` op, the expert and
    the sum their own ops). Measured by the job's first r ranks for every r of `exchange_rank_counts`, the
    others waiting, -> `ranks` r: fewer ranks have fewer peers to count and post to (one rank took 1.2 ms
    where four took 2.1, `benchmarks/measured/h100x4-2026-11-27l`). Uniform routing over the model's
    experts; per_node 0 as for every GPU point; the median over the r ranks of each rank's median."""
    import torch.distributed as dist

    from real.groups import prefix_groups

    out = []
    for r in exchange_rank_counts(dist.get_world_size()):
        groups = prefix_groups(dist.get_backend(), EXCHANGE_TIMEOUT_S, r)
        if groups is not None:
            out += _exchange_points(models, tokens, repeats, groups)
    return out


def _exchange_points(models: list[tuple[Model, Wire]], tokens: tuple[int, ...], repeats: int, groups) -> list[dict]:
    """`measure_exchange_ops` on the ranks of `groups` (real.groups)."""
    import time

    import numpy as np
    import torch
    import torch.distributed as dist

    from emu import dispatch as dp
    from moe.model.optable import uniform_routing
    from moe.model.shapes import EXCHANGE, op_signature
    from real.transport import RealTransport

    ranks = dist.get_world_size(groups.counts)
    dev = torch.device("cuda", torch.cuda.current_device()) if groups.backend == "nccl" else torch.device("cpu")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    tr = RealTransport(groups, RealOptions().transport, dev, EXCHANGE_TIMEOUT_S)
    gen = torch.Generator().manual_seed(dist.get_rank())
    out, seen = [], set()
    for m, wire in models:
        sig = op_signature(m, EXCHANGE, wire)
        if sig in seen:
            continue
        seen.add(sig)
        for t in tokens:
            ids_TK = uniform_routing(t, m.experts, m.top_k, gen)
            plan = dp.plan_dispatch(0, ids_TK, np.ones(ids_TK.shape, dtype=bool),
                                    torch.rand(t, m.top_k, device=dev), -(-m.experts // ranks), ranks)
            rows_NB = torch.zeros(len(plan.token_N), dp.row_bytes(m.hidden, wire[0], m.top_k), dtype=torch.uint8,
                                  device=dev)
            times = []
            for i in range(2 + repeats):
                tr.reset()
                host_scrub()()  # cold host caches, as in a run (host_scrub)
                sync()
                dist.barrier(group=groups.objects)
                t0 = time.perf_counter()
                ex = dp.Exchange(0, plan, m.hidden, *wire)
                dp.post_dispatch(tr, ex, rows_NB)
                dp.post_result_receives(tr, ex)
                dp.post_receives(tr, ex)
                rows_R = np.zeros(ranks, dtype=np.int64)
                for src, rows_MB in ex.shard_bufs.items():
                    rows_R[src] = rows_MB.shape[0]
                tr.ready(*ex.shard_bufs.values())
                result = torch.empty(int(rows_R.sum()), ex.result_row_bytes, dtype=torch.uint8, device=dev)
                dp.send_results(tr, ex, rows_R, result)
                tr.ready(*ex.result_bufs.values())
                if i >= 2:
                    times.append(time.perf_counter() - t0)
                tr.join()
                sync()
                tr.test_some([])  # lets go of the finished transfers' buffers
            mine = statistics.median(times)
            every = [None] * ranks
            dist.all_gather_object(every, mine, group=groups.objects)
            out.append({"op": EXCHANGE, "model": sig, "tokens": t, "context": 0, "s": statistics.median(every),
                        "ranks": ranks})
    return out


def measure_bf16_peak(repeats: int) -> float:
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    t = cuda_time_s(lambda: a @ a, warmup=3, repeats=repeats)
    return 2 * 8192**3 / t / 1e12


def measure_hbm_GBps(repeats: int) -> float:
    import torch

    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    t = cuda_time_s(lambda: y.copy_(x), warmup=3, repeats=repeats)
    return 2 * x.numel() / t / 1e9


def measure_launch_us(calls: int = 2000) -> float:
    """Host-side cost of one minimal kernel: a tight loop of launches, then one synchronize."""
    import time

    import torch

    x = torch.zeros(1, device="cuda")
    for _ in range(100):
        x.add_(1)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        x.add_(1)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / calls * 1e6


def _median_table(tables: list[list[dict]]) -> list[dict]:
    """Per entry, the median TFLOPS over ranks (every rank measured the same list in the same order)."""
    return [{**first, "TFLOPS": round(statistics.median(t[i]["TFLOPS"] for t in tables), 1)}
            for i, first in enumerate(tables[0])]


def host_factors(op_runs: list[list[dict]]) -> list[float]:
    """Per rank, the median over its op-table points of its host_s relative to the median over ranks of
    that point: how much slower (> 1) or faster its host issues the same calls. Every rank measured the
    same points in the same order. [] without host times."""
    rows = [i for i, p in enumerate(op_runs[0]) if p.get("host_s")]
    if not rows:
        return []
    mid = {i: statistics.median(r[i]["host_s"] for r in op_runs) for i in rows}
    return [round(statistics.median(r[i]["host_s"] / mid[i] for i in rows if mid[i] > 0), 3) for r in op_runs]


def calibrate_ranks(*, quick: bool, scenarios: Sequence[str] = ()) -> dict | None:
    """Every rank of the job measures; rank 0 returns the profile mapping, the others None. `scenarios`:
    the op table covers these scenario files' models (and wire dtypes) instead of MODELS, and the GEMM
    table their shapes besides MODELS'."""
    import torch
    import torch.distributed as dist

    from moe.hostprobe import calibration_probe, host_probe_s

    rows, sizes, reps = (ROWS_QUICK, BYTES_QUICK, 5) if quick else (ROWS_FULL, BYTES_FULL, 20)
    chosen = load_scenarios(scenarios)
    models = scenario_models(chosen) if chosen else preset_models()
    grid = scenario_grid(chosen) if chosen else op_grid(quick)
    bar = Progress("calibrate", 4) if dist.get_rank() == 0 else None  # GEMMs, ops, exchange, NCCL + rest
    # the presets' shapes always (the best of them is the roofline's peak), the scenarios' too
    gemms = measure_gemms([m for m, _ in preset_models() + models], rows, reps)
    tables = [None] * dist.get_world_size()
    dist.all_gather_object(tables, gemms)
    bar and bar.advance()
    probe0 = host_probe_s()  # the host's speed over the op-table stages (moe.hostprobe)
    ops = measure_ops(models, grid, reps, graphs=not chosen or any(s.real.graphs for s in chosen))
    op_runs = [None] * dist.get_world_size()
    dist.all_gather_object(op_runs, ops)
    bar and bar.advance()
    exchange = measure_exchange_ops(models, grid.tokens, reps)
    probes = [None] * dist.get_world_size()
    dist.all_gather_object(probes, (probe0, host_probe_s()))
    bar and bar.advance()
    multi = dist.get_world_size() > 1
    a2a = measure_alltoall(sizes, reps, cuda_time_s) if multi else []
    p2p = measure_ring_p2p(sizes, reps, cuda_time_s) if multi else []
    latency = measure_latency_us(reps) if multi else 0.0
    comm_slowdown = measure_comm_slowdown(reps)
    hbm, bf16, launch = measure_hbm_GBps(reps), measure_bf16_peak(reps), measure_launch_us()
    bar and bar.advance()
    if dist.get_rank() != 0:
        return None
    table = _median_table(tables)
    ib = load_preset("cluster", "h100-ib")
    name = torch.cuda.get_device_name()
    today = datetime.date.today().isoformat()
    return {
        "name": f"{name} x{dist.get_world_size()}, measured {today} by moetb calibrate --backend real "
                f"(torch {torch.__version__})",
        "nodes": 1,
        "gpus_per_node": dist.get_world_size(),
        "fp8_TFLOPS": max(p["TFLOPS"] for p in table),
        "bf16_TFLOPS": round(bf16, 1),
        "hbm_GBps": round(hbm, 1),
        "memory_GB": round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1),
        "gemm_table": table,
        "nvlink_GBps": a2a[-1]["GBps"] if a2a else ib["nvlink_GBps"],
        "nvlink_latency_us": round(latency, 2),
        "nic_GBps": ib["nic_GBps"],
        "nic_latency_us": ib["nic_latency_us"],
        "fabric_oversubscription": 1.0,
        "gpus_per_leaf": ib["gpus_per_leaf"],
        "launch_overhead_us": round(launch, 2),
        "message_overhead_us": 0.0,  # included in nvlink_latency_us: the ping-pong times posting and flight
        "comm_copy_GBps": 0.0,  # NCCL's copies are inside the measured link bandwidth
        "comm_compute_slowdown": comm_slowdown,
        "alltoall_curve": a2a,
        "p2p_curve": p2p,
        "op_table": [{**p, **{k: statistics.median(r[i][k] for r in op_runs) for k in ("s", "host_s", "device_s")
                              if k in p}}
                     for i, p in enumerate(op_runs[0])] + exchange,
        "host_factors": host_factors(op_runs),
        "host_probe_s": calibration_probe(probes, "op table and exchange stages"),
    }
