"""Issue 7's performance targets for the real backend, measured in one command (one process per GPU).

    python benchmarks/real_perf.py --out results/real_perf.json            # starts torchrun on every GPU
    torchrun --nproc-per-node 4 benchmarks/real_perf.py --out results/real_perf.json
    python benchmarks/real_perf.py --quick --ranks 2 --out /tmp/real_perf.json    # CPU smoke run (gloo)
    python benchmarks/real_perf.py --exchange-only --out results/real_exchange.json  # that section alone

Scenario (--spec FILE and --set KEY=VALUE change it): the `paper` model cut to a few layers (one dense, three
MoE; the expert is `paper`'s: 7168 -> 18432 -> 7168, 396 MB), E = G = 4 experts one per GPU, top-2,
prefill of 4096 tokens per GPU, 2 micro-batches, layer pipeline, direct transfers, on `h100-nvlink`.
--quick: the `tiny` model, 64 tokens per rank on CPU processes over gloo. Every rank measures; rank 0
writes the JSON and prints the table. Sections:

gemm        each rank's expert GEMMs (`fp8_linear` as the expert calls it) against bare `torch._scaled_mm` on
            the same operands (benchmarks/expert_gemm.py's `bare_operands`), at the rows one expert gets
            per micro-batch in this scenario; target: expert >= 80% of bare (ratio = bare / expert time)
runs        the whole scenario through the real backend (`real.job.RealJob`, CUDA-event timing, warm-up,
            median of repeats) for each transport (`p2p`, `all_to_all`; `nvshmem` where NVSHMEM is) with
            overlap on and off. From the overlap-off run: compute_only_s = the critical rank's compute spans
            per MoE layer
exchange    one MoE layer's dispatch + combine of every micro-batch through the transport with no compute
            (counts, dispatch rows with their meta columns, results: the protocol's own calls,
            `emu.dispatch`), with the scenario's routing: comm_only_s; against bare `all_to_all_single` of
            the same row and result splits (no counts): target: transport >= 80% of bare bus bandwidth
            (ratio = bare / transport time at the same bytes). Bus bandwidth as nccl-tests counts
            all-to-all: mean bytes a rank sends (own part included) / time x (n - 1) / n
targets     overlap ratio = moe_layer_s(overlap on) / max(compute_only_s, comm_only_s), target <= 1.15, per
            transport; the faster transport (step time with overlap) is the one to keep as default
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CHILD_PYTHONPATH = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
"""Children import this checkout first, then whatever the parent could import."""
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import expert_gemm  # noqa: E402

from emu import dispatch as dp  # noqa: E402
from emu.microbatch import layout  # noqa: E402
from emu.plan import build_plan  # noqa: E402
from emu.timing import COMPUTE_PHASES  # noqa: E402
from moe.model import linear  # noqa: E402
from moe.model.ffn import swiglu_quant  # noqa: E402
from moe.model.fp8 import quantize_act, wire_bytes_per_token  # noqa: E402
from moe.model.model import from_scenario, hidden_states  # noqa: E402
from moe.result import write_json_atomic  # noqa: E402
from moe.spec import load_scenario  # noqa: E402
from real import dist as rdist  # noqa: E402

TARGETS = {"gemm_ratio_min": 0.8, "overlap_ratio_max": 1.15, "bandwidth_ratio_min": 0.8}
FULL = {"name": "real-perf",
        "model": {"preset": "paper", "layers": 4, "dense_layers": 1, "experts": 4, "top_k": 2, "groups": 1,
                  "topk_groups": 1},
        "cluster": {"preset": "h100-nvlink", "nodes": 1, "gpus_per_node": 4},
        "placement": {"strategy": "one_per_gpu"},
        "workload": {"phase": "prefill", "tokens_per_gpu": 4096, "context_len": 4096, "steps": 1},
        "schedule": {"overlap": True, "micro_batches": 2, "layer_pipeline": True, "comm": "direct"},
        "real": {"warmup": 2, "repeats": 5, "timeout_s": 300.0}}
QUICK = {"name": "real-perf-quick", "model": {"preset": "tiny"},
         "cluster": {"preset": "cpu-host", "nodes": 1, "gpus_per_node": 2},
         "placement": {"strategy": "contiguous"},
         "workload": {"phase": "prefill", "tokens_per_gpu": 64, "context_len": 64, "steps": 1},
         "schedule": {"overlap": True, "micro_batches": 2, "layer_pipeline": True, "comm": "direct"},
         "emu": {"threads": 1}, "real": {"warmup": 1, "repeats": 2, "timeout_s": 60.0}}
TRANSPORTS = ("p2p", "all_to_all")
"""Measured everywhere; "nvshmem" too where NVSHMEM is (GPUs: `transports`)."""


def transports(b) -> tuple[str, ...]:
    from real import symm

    return TRANSPORTS + (("nvshmem",) if b.device.type == "cuda" and symm.available() else ())


# ------------------------------------------------------------------------------------------------ setup
def scenario(args):
    base = FULL if not args.quick else QUICK
    source = args.spec or base
    overrides = list(args.set)
    if args.ranks:
        overrides = ["cluster.nodes=1", f"cluster.gpus_per_node={args.ranks}"] + overrides
    return load_scenario(source, overrides)


class Bench:
    """What every rank holds: process groups, device, scenario, plan and model (built once)."""

    def __init__(self, args):
        from real.backend import dist_backend
        from real.groups import process_groups

        self.args = args
        self.backend = "gloo" if args.quick else dist_backend()
        self.s = scenario(args)
        self.timeout_s = self.s.real.timeout_s
        rdist.init(self.backend, self.timeout_s)
        self.groups = process_groups(self.backend, self.timeout_s)
        self.rank, self.size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        self.device = torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" \
            else torch.device("cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(1)
        self.plan = build_plan(self.s, self.rank)
        self.model = from_scenario(self.s, experts=self.plan.held_experts(self.rank), device=self.device)

    def transport(self, mode: str):
        from real.transport import RealTransport

        # stream-ordered on CPUs too: the exchange below reads buffers after `ready` alone
        return RealTransport(self.groups, mode, self.device, self.timeout_s, stream_ordered=True)

    def gather(self, obj):
        out = [None] * self.size
        torch.distributed.all_gather_object(out, obj, group=self.groups.objects)
        return out

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        torch.distributed.barrier(group=self.groups.objects)


class Timer:
    """Seconds of what runs between start() and stop(): CUDA events on a GPU (the device was idle at the
    start), the host clock on a CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def start(self) -> None:
        if self.cuda:
            self.e0 = torch.cuda.Event(enable_timing=True)
            self.e0.record()
        else:
            self.t0 = time.perf_counter()

    def stop(self) -> float:
        if not self.cuda:
            return time.perf_counter() - self.t0
        e1 = torch.cuda.Event(enable_timing=True)
        e1.record()
        e1.synchronize()
        return self.e0.elapsed_time(e1) / 1e3


# ------------------------------------------------------------------------------------------------- gemm
def gemm_rows(b: Bench) -> int:
    """Rows one expert gets per micro-batch: this scenario's mean requests per GPU per MoE layer, over its
    micro-batches and the experts a GPU holds."""
    per_gpu = float(b.plan.gpu_requests_PJG.mean())
    held = max(1, len(b.plan.held_experts(b.rank)))
    return max(1, int(round(per_gpu / (b.s.schedule.micro_batches * held))))


def measure_gemm(b: Bench) -> dict:
    """This rank's expert GEMMs vs bare `_scaled_mm` on the same operands (timings as expert_gemm.py)."""
    a = b.args
    block = b.model.block(b.s.model.dense_layers)
    bank, expert = block.experts, b.plan.held_experts(b.rank)[0]
    i = bank.slot[expert]
    w13s, w2 = bank.fp8_w13[i], bank.fp8_w2[i]
    rows = gemm_rows(b)
    path = linear.gemm_path(b.device)
    xa = quantize_act(hidden_states(b.s.model, rows, 0, device=b.device))
    h = torch.cat([linear.fp8_linear(xa, w, torch.bfloat16, path) for w in w13s], dim=-1)
    ha = swiglu_quant(h)
    ops = {}
    for k, w in enumerate(w13s):
        ops[f"expert.w13.{k}"] = lambda w=w: linear.fp8_linear(xa, w, torch.bfloat16, path)
        ops[f"bare.w13.{k}"] = expert_gemm.bare_operands(path, xa, w, b.device)
    ops["expert.w2"] = lambda: linear.fp8_linear(ha, w2, torch.bfloat16, path)
    ops["bare.w2"] = expert_gemm.bare_operands(path, ha, w2, b.device)
    ops["expert.total"] = lambda: block.expert_forward(expert, xa)
    med = {name: statistics.median(expert_gemm.time_op(fn, b.device, a.warmup, a.repeats)) for name, fn in ops.items()}
    expert_s = sum(v for k, v in med.items() if k.startswith("expert.w"))
    bare_s = sum(v for k, v in med.items() if k.startswith("bare."))
    d, f = b.s.model.hidden, b.s.model.expert_hidden
    flops = 2 * rows * d * 2 * f + 2 * rows * f * d
    return {"rows": rows, "gemm_path": path, "median_s": med, "expert_gemm_s": expert_s, "bare_gemm_s": bare_s,
            "expert_TFLOPS": flops / expert_s / 1e12, "bare_TFLOPS": flops / bare_s / 1e12,
            "ratio": bare_s / expert_s, "expert_total_s": med["expert.total"]}


# ------------------------------------------------------------------------------------------------- runs
def run_variant(b: Bench, mode: str, overlap: bool) -> dict | None:
    """The scenario through the real backend; rank 0 returns its figures."""
    from emu.report import build_output
    from real.backend import machine_name
    from real.job import RealJob

    s = b.s.model_copy(update={"schedule": b.s.schedule.model_copy(update={"overlap": overlap}),
                               "real": b.s.real.model_copy(update={"transport": mode})})
    tr = b.transport(mode)
    job = RealJob(s, tr, plan=b.plan, model=b.model)
    b.sync()
    rec = job.run()
    records = tr.gather(rec, b.timeout_s)
    if b.rank != 0:
        return None
    r = build_output(s, b.plan, records, tr.name, backend="real", machine=machine_name(records)).result
    per = 1.0 / (len(rec.step_s) * max(1, s.model.moe_layers))
    compute_R = [sum(x.moe_phase_s.get(k, 0.0) for k in COMPUTE_PHASES) * per for x in records]
    transfer_R = [(x.phase_s.get("dispatch_transfer", 0.0) + x.phase_s.get("combine_transfer", 0.0)) * per
                  for x in records]
    return {"transport": mode, "overlap": overlap, "machine": r.machine, "step_time_s": r.step_time_s,
            "step_time_s_all": r.step_time_s_all, "moe_layer_s": r.moe_layer_s,
            "breakdown": r.breakdown.model_dump(), "compute_per_moe_layer_s": max(compute_R),
            "transfer_per_moe_layer_s": max(transfer_R), "traffic_matches_model": r.extra["traffic_matches_model"],
            "peak_memory_bytes_per_gpu": r.peak_memory_bytes_per_gpu,
            "phase_s_per_rank": r.extra["phase_s_per_rank"]}


# --------------------------------------------------------------------------------------------- exchange
def layer_plans(b: Bench, j: int = 0) -> list[dp.SendPlan]:
    """The send plans of MoE layer j's micro-batches (routing pattern 0), keys 0.. in order."""
    r = b.plan.routing_PJ[0][j]
    plans = []
    for i, mb in enumerate(layout(b.s).micro_batches):
        rows = mb.tokens_T.numpy()
        w_TK = torch.ones(len(rows), b.s.model.top_k, device=b.device)
        plans.append(dp.plan_dispatch(i, r.slot_TK[rows], r.keep_TK[rows], w_TK, b.plan.placement.slots_per_gpu,
                                      b.size))
    return plans


def exchange_once(b: Bench, tr, plans: list[dp.SendPlan], wires: list[torch.Tensor]) -> tuple[float, float]:
    """Dispatch and combine of every micro-batch, results returned as soon as the shards are in: (seconds
    the exchange took, seconds the host spent issuing it; host-bound where they are close)."""
    m = b.s.model
    sched = b.s.schedule
    tr.reset()
    b.sync()
    timer = Timer(b.device)
    timer.start()
    host0 = time.perf_counter()
    exchanges = []
    for plan, wire in zip(plans, wires, strict=True):
        ex = dp.Exchange(plan.key, plan, m.hidden, sched.dispatch_dtype, sched.combine_dtype)
        dp.post_dispatch(tr, ex, wire)
        dp.post_result_receives(tr, ex)
        if not tr.device_splits:  # device splits: posted when the shards are needed, as the runtime does
            dp.post_receives(tr, ex)
        exchanges.append(ex)
    for ex in exchanges:
        if not ex.receives_posted:
            dp.post_receives(tr, ex)
        sources = sorted(ex.shard_bufs)
        tr.ready(*[ex.shard_bufs[s] for s in sources])
        rows_R = np.zeros(b.size, dtype=np.int64)
        for s in sources:
            rows_R[s] = ex.shard_bufs[s].shape[0]
        result = torch.empty(int(rows_R.sum()), ex.result_row_bytes, dtype=torch.uint8, device=b.device)
        dp.send_results(tr, ex, rows_R, result)
    for ex in exchanges:
        tr.ready(*ex.result_bufs.values())
    tr.join()
    host_s = time.perf_counter() - host0
    elapsed = timer.stop()
    tr.test_some([])  # the device is idle: lets go of the groups' buffers, as a run's event loop does
    return elapsed, host_s


def bare_once(b: Bench, splits: list[tuple], bufs: list[tuple]) -> float:
    """all_to_all_single of the same payload splits, then of the same result splits, per micro-batch."""
    group = b.groups.dispatch
    b.sync()
    timer = Timer(b.device)
    timer.start()
    for (send_p, recv_p, _, _), (sp, rp, _, _) in zip(splits, bufs, strict=True):
        torch.distributed.all_to_all_single(rp, sp, recv_p, send_p, group=group)
    for (_, _, send_r, recv_r), (_, _, sr, rr) in zip(splits, bufs, strict=True):
        torch.distributed.all_to_all_single(rr, sr, recv_r, send_r, group=group)
    return timer.stop()


def measure_exchange(b: Bench) -> dict:
    """comm_only_s and bandwidth of both transports against bare all_to_all_single at the same bytes."""
    a, m, sched = b.args, b.s.model, b.s.schedule
    w = dp.row_bytes(m.hidden, sched.dispatch_dtype, m.top_k)  # a dispatch row: meta columns + activations
    v = wire_bytes_per_token(m.hidden, sched.combine_dtype)
    plans = layer_plans(b)
    wires = [torch.zeros(len(p.token_N), w, dtype=torch.uint8, device=b.device) for p in plans]
    recv_rows = [np.array(b.gather(p.counts_R))[:, b.rank] for p in plans]  # rows each source sends here
    splits = [((p.counts_R * w).tolist(), (rr * w).tolist(), (rr * v).tolist(), (p.counts_R * v).tolist())
              for p, rr in zip(plans, recv_rows, strict=True)]
    bufs = [tuple(torch.empty(int(sum(x)), dtype=torch.uint8, device=b.device) for x in sp) for sp in splits]
    sent_total = sum(sum(sp[0]) + sum(sp[2]) for sp in splits)  # payload + results, own part included
    me = b.rank
    sent_remote = sum(sum(sp[0]) - sp[0][me] + sum(sp[2]) - sp[2][me] for sp in splits)
    out = {"rows_per_rank": [int(p.counts_R.sum()) for p in plans], "bytes_sent_per_rank": sent_total,
           "remote_bytes_sent_per_rank": sent_remote, "transports": {}}
    for _ in range(a.warmup):
        bare_once(b, splits, bufs)
    bare = [max(b.gather(bare_once(b, splits, bufs))) for _ in range(a.repeats)]
    out["bare_s"] = statistics.median(bare)
    for mode in transports(b):
        tr = b.transport(mode)
        tr.prepare(len(plans), max(len(p.token_N) for p in plans), w, v)
        for _ in range(a.warmup):
            exchange_once(b, tr, plans, wires)
        every = [b.gather(exchange_once(b, tr, plans, wires)) for _ in range(a.repeats)]
        times = [max(t for t, _ in e) for e in every]
        out["transports"][mode] = {"comm_only_s": statistics.median(times), "all_s": times,
                                   "host_issue_s": statistics.median(max(h for _, h in e) for e in every)}
    out["bytes_sent_mean"] = float(np.mean(b.gather(sent_total)))
    n = b.size

    def busbw(t: float) -> float:
        return out["bytes_sent_mean"] / t * (n - 1) / n / 1e9

    out["bare_busbw_GBps"] = busbw(out["bare_s"])
    for t in out["transports"].values():
        t["busbw_GBps"] = busbw(t["comm_only_s"])
        t["bandwidth_ratio"] = out["bare_s"] / t["comm_only_s"]
    return out


# ------------------------------------------------------------------------------------------------ report
def worker(args) -> int:
    from real.groups import forget_process_groups

    b = Bench(args)
    if args.exchange_only:
        exchange = measure_exchange(b)
        report = {"benchmark": "real_perf", "section": "exchange", "ranks": b.size, "backend": b.backend,
                  "machine": torch.cuda.get_device_name() if b.device.type == "cuda" else "cpu",
                  "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "exchange": exchange}
        text = exchange_table(exchange)
    else:
        gemm = b.gather(measure_gemm(b))
        exchange = measure_exchange(b)
        runs = [run_variant(b, mode, overlap) for mode in transports(b) for overlap in (True, False)]
        report = summarize(b, gemm, exchange, runs) if b.rank == 0 else None
        text = table(report) if report else ""
    if b.rank == 0:
        print(text)
        write_json_atomic(args.out, report)
    b.sync()
    rdist.finish()
    forget_process_groups()
    return 0


def summarize(b: Bench, gemm: list[dict], exchange: dict, runs: list[dict]) -> dict:
    by = {(r["transport"], r["overlap"]): r for r in runs}
    targets = {"gemm_ratio_min_over_ranks": min(g["ratio"] for g in gemm)}
    per_transport = {}
    modes = tuple(dict.fromkeys(r["transport"] for r in runs))
    for mode in modes:
        on, off = by[(mode, True)], by[(mode, False)]
        compute_only, comm_only = off["compute_per_moe_layer_s"], exchange["transports"][mode]["comm_only_s"]
        per_transport[mode] = {
            "moe_layer_s_overlap": on["moe_layer_s"], "moe_layer_s_no_overlap": off["moe_layer_s"],
            "compute_only_s": compute_only, "comm_only_s": comm_only,
            "overlap_ratio": on["moe_layer_s"] / max(compute_only, comm_only),
            "bandwidth_ratio": exchange["transports"][mode]["bandwidth_ratio"],
            "busbw_GBps": exchange["transports"][mode]["busbw_GBps"],
            "step_time_s_overlap": on["step_time_s"]}
    faster = min(modes, key=lambda t: per_transport[t]["step_time_s_overlap"])
    targets.update({
        "gemm_meets": targets["gemm_ratio_min_over_ranks"] >= TARGETS["gemm_ratio_min"],
        "overlap_meets": {t: v["overlap_ratio"] <= TARGETS["overlap_ratio_max"] for t, v in per_transport.items()},
        "bandwidth_meets": {t: v["bandwidth_ratio"] >= TARGETS["bandwidth_ratio_min"]
                            for t, v in per_transport.items()},
        "faster_transport": faster})
    return {"benchmark": "real_perf", "spec": b.s.model_dump(mode="json"), "ranks": b.size, "backend": b.backend,
            "machine": runs[0]["machine"], "torch": torch.__version__, "cuda": torch.version.cuda,
            "date": time.strftime("%Y-%m-%d"), "warmup": b.args.warmup, "repeats": b.args.repeats,
            "goals": TARGETS, "gemm_per_rank": gemm, "exchange": exchange, "runs": runs,
            "per_transport": per_transport, "targets": targets}


def exchange_table(ex: dict) -> str:
    lines = [f"bare all_to_all_single at the same bytes: {ex['bare_s'] * 1e3:.3f} ms, "
             f"bus {ex['bare_busbw_GBps']:.1f} GB/s"]
    for mode, v in ex["transports"].items():
        lines.append(f"{mode:<11} {v['comm_only_s'] * 1e3:8.3f} ms  host issue {v['host_issue_s'] * 1e3:8.3f} ms  "
                     f"bus {v['busbw_GBps']:7.2f} GB/s  {100 * v['bandwidth_ratio']:6.1f}% of bare")
    return "\n".join(lines)


def table(rep: dict) -> str:
    t = rep["targets"]
    g0 = rep["gemm_per_rank"][0]
    lines = [f"real_perf: {rep['machine']}, torch {rep['torch']}, {rep['ranks']} ranks ({rep['backend']})",
             f"expert GEMMs ({g0['rows']} rows, {g0['gemm_path']}): rank 0 {g0['expert_TFLOPS']:.1f} vs bare "
             f"{g0['bare_TFLOPS']:.1f} TFLOP/s; expert/bare min over ranks "
             f"{100 * t['gemm_ratio_min_over_ranks']:.1f}% (goal >= {100 * TARGETS['gemm_ratio_min']:.0f}%)",
             f"bare all_to_all_single at the same bytes: {rep['exchange']['bare_s'] * 1e3:.3f} ms, "
             f"bus {rep['exchange']['bare_busbw_GBps']:.1f} GB/s",
             f"{'transport':<11} {'step ms':>9} {'MoE ms ov':>10} {'MoE ms no':>10} {'compute':>9} {'comm':>9} "
             f"{'overlap':>8} {'bus GB/s':>9} {'vs bare':>8}"]
    for mode, v in rep["per_transport"].items():
        lines.append(f"{mode:<11} {v['step_time_s_overlap'] * 1e3:>9.3f} {v['moe_layer_s_overlap'] * 1e3:>10.3f} "
                     f"{v['moe_layer_s_no_overlap'] * 1e3:>10.3f} {v['compute_only_s'] * 1e3:>9.3f} "
                     f"{v['comm_only_s'] * 1e3:>9.3f} {v['overlap_ratio']:>8.3f} {v['busbw_GBps']:>9.2f} "
                     f"{100 * v['bandwidth_ratio']:>7.1f}%")
    lines.append(f"goals: overlap ratio <= {TARGETS['overlap_ratio_max']}, bandwidth >= "
                 f"{100 * TARGETS['bandwidth_ratio_min']:.0f}% of bare; faster transport: {t['faster_transport']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON report path (written by rank 0)")
    p.add_argument("--spec", help="scenario YAML instead of the built-in one")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="scenario override")
    p.add_argument("--ranks", type=int, help="processes (GPUs) when starting torchrun here (default: every GPU; "
                   "2 with --quick); also sets cluster.gpus_per_node")
    p.add_argument("--warmup", type=int, help="untimed repeats of each measurement (default 3; 1 with --quick)")
    p.add_argument("--repeats", type=int, help="timed repeats, median reported (default 10; 2 with --quick)")
    p.add_argument("--quick", action="store_true", help="CPU smoke run: tiny model over gloo")
    p.add_argument("--exchange-only", action="store_true", help="the exchange section alone (no GEMMs, no runs)")
    args = p.parse_args(argv)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.repeats = args.repeats if args.repeats is not None else (2 if args.quick else 10)
    if rdist.place() is not None:
        return worker(args)
    ranks = args.ranks or (2 if args.quick else torch.cuda.device_count())
    if ranks < 1:
        raise SystemExit("real_perf: no GPU visible (use --quick for a CPU run)")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not args.ranks:
        argv += ["--ranks", str(ranks)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", __file__, *argv]
    env = {**os.environ, **rdist.NCCL_SAFE_ENV, "PYTHONPATH": CHILD_PYTHONPATH}
    return subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL).returncode


if __name__ == "__main__":
    raise SystemExit(main())
