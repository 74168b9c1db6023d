"""Host time of the runtime's own calls (transport, protocol, event loop), one process per GPU.

    torchrun --nproc-per-node 4 benchmarks/real_host_time.py exchange --out results/host_time
    torchrun --nproc-per-node 4 benchmarks/real_host_time.py run SPEC --out results/host_time
    torchrun --nproc-per-node 4 benchmarks/real_host_time.py counts --out results/host_time
    torchrun --nproc-per-node 4 benchmarks/real_host_time.py ops --out results/host_time
    torchrun --nproc-per-node 2 benchmarks/real_host_time.py exchange --quick --out /tmp/host_time  # CPU, gloo

Wraps the calls below with host timers (time.perf_counter around each call; no synchronization added),
then runs either `real_perf.py`'s exchange measurement (one MoE layer's dispatch + combine of every
micro-batch through both transports, no compute) or a whole `moetb run SPEC --backend real`. Each rank
writes OUT/host_<what>_<rank>.txt: per call, count, median, 90th percentile, max and total over the
second half of the calls (the first half holds warm-up and connection set-up). `counts` times the counts
round trip alone (`RealTransport.exchange_counts`, COUNTS_CALLS calls of the `paper` grid's row shape)
against its floor: the same all-to-all of counts already on the device, host waiting for its stream
("bare_counts_on_device"). `ops` times single torch calls of the kinds the exchange is made of (OP_CALLS
each, every rank at once, as in the exchange), and counts the torch calls one exchange makes per transport
(`torch.overrides.TorchFunctionMode`: tensor functions and methods, views included; stream and event calls
are not seen): their product is the host time an exchange cannot go below. On a GPU the host only
enqueues work, so these are the costs the device waits for when the host is the bottleneck.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch.distributed as dist  # noqa: E402

from emu import dispatch as dp  # noqa: E402
from emu import runtime as er  # noqa: E402
from moe.model.graphs import ModelCalls  # noqa: E402
from moe.model.layer import Block  # noqa: E402
from real import transport as rt  # noqa: E402
from real.groups import forget_process_groups  # noqa: E402

TIMES: dict[str, list[float]] = {}
COUNTS_CALLS = 400
WRAPPED = [(dist, "all_to_all_single"), (dist, "batch_isend_irecv"), (rt, "poll_until"),
           (rt.RealTransport, "exchange_counts"), (rt.RealTransport, "post_counts"), (rt.RealTransport, "take_counts"),
           (rt.RealTransport, "_issue"), (rt.RealTransport, "_vdev"), (rt.RealTransport, "irecv_split"),
           (rt.RealTransport, "isend_split"), (rt.RealTransport, "ready"),
           (rt.RealTransport, "test_some"), (dp, "plan_dispatch"), (dp, "pack_rows"), (dp, "post_dispatch"),
           (dp, "post_receives"), (dp, "post_result_receives"), (dp, "send_results"), (dp, "compute_shard"),
           (dp, "combine_rows")] + \
    [(er.RankRuntime, m) for m in ("step", "_layer_front", "_compute_one_shard", "_combine_ready", "_block",
                                   "_take_completions", "_finish_layer", "_start_ready")] + \
    [(Block, m) for m in ("attention", "ffn_input", "expert_forward", "shared_forward", "dense_forward")] + \
    [(ModelCalls, m) for m in ("attention", "dense", "gate", "shared", "expert")]


def timed(owner, name: str) -> None:
    fn = getattr(owner, name)
    label = f"{getattr(owner, '__name__', owner)}.{name}"

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES.setdefault(label, []).append(time.perf_counter() - start)

    setattr(owner, name, wrapper)


def table() -> str:
    lines = [f"{'call':45s} {'n':>6s} {'median ms':>10s} {'p90 ms':>9s} {'max ms':>9s} {'total ms':>10s}"]
    for label, all_s in sorted(TIMES.items(), key=lambda kv: -sum(kv[1][len(kv[1]) // 2:])):
        half = sorted(all_s[len(all_s) // 2:] or all_s)
        lines.append(f"{label:45s} {len(all_s):6d} {statistics.median(half) * 1e3:10.3f} "
                     f"{half[int(0.9 * (len(half) - 1))] * 1e3:9.3f} {half[-1] * 1e3:9.3f} {sum(half) * 1e3:10.2f}")
    return "\n".join(lines) + "\n"


def time_counts(bench) -> None:
    """The counts round trip through the transport, then its floor (module docstring)."""
    import numpy as np
    import torch

    tr = bench.transport("all_to_all")
    send_RX = np.ones((bench.size, 1 + bench.plan.placement.slots_per_gpu), dtype=np.int64)
    for _ in range(COUNTS_CALLS):
        tr.exchange_counts(send_RX, dp.tag(0, dp.KIND_COUNTS))
    send_t = torch.from_numpy(send_RX).to(bench.device)
    recv_t = torch.empty_like(send_t)
    label = "bare_counts_on_device"
    for _ in range(COUNTS_CALLS):
        start = time.perf_counter()
        dist.all_to_all_single(recv_t, send_t, group=bench.groups.counts)
        if bench.device.type == "cuda":
            torch.cuda.current_stream(bench.device).synchronize()
        TIMES.setdefault(label, []).append(time.perf_counter() - start)


OP_CALLS = 2000


def time_ops(bench) -> dict:
    """Host seconds per call of the exchange's kinds of torch calls, then torch calls per exchange (docstring)."""
    import numpy as np
    import real_perf
    import torch
    from torch.overrides import TorchFunctionMode

    dev = bench.device
    x = torch.zeros(4096, 7408, dtype=torch.uint8, device=dev)
    small = torch.ones(8, dtype=torch.int64, device=dev)
    host = np.arange(8, dtype=np.int64)
    side = torch.cuda.Stream(dev) if dev.type == "cuda" else None
    ev = torch.cuda.Event() if side is not None else None
    calls = {"view": lambda: x.view(-1), "slice": lambda: x[1:3], "empty": lambda: torch.empty(64, device=dev),
             "add (kernel)": lambda: small.add(1), "cumsum (kernel)": lambda: torch.cumsum(small, 0),
             "histc (kernel)": lambda: torch.histc(small.float(), bins=4, min=0, max=4),
             "to host (.cpu)": lambda: small.cpu()}
    if side is not None:
        calls.update({"to device (pinned)": lambda: torch.from_numpy(host).pin_memory().to(dev, non_blocking=True),
                      "current_stream": lambda: torch.cuda.current_stream(dev),
                      "stream context": lambda: torch.cuda.stream(side).__enter__() or torch.cuda.set_stream(
                          torch.cuda.default_stream(dev)),
                      "event record": lambda: ev.record(), "stream wait_event": lambda: side.wait_event(ev)})
    for name, fn in calls.items():
        for _ in range(OP_CALLS // 10):
            fn()
        bench.sync()
        for _ in range(OP_CALLS):
            start = time.perf_counter()
            fn()
            TIMES.setdefault(f"op {name}", []).append(time.perf_counter() - start)
    counts = {}

    class Count(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.n += 1
            return func(*args, **(kwargs or {}))

    plans = real_perf.layer_plans(bench)
    m, sched = bench.s.model, bench.s.schedule
    w, v = dp.row_bytes(m.hidden, sched.dispatch_dtype, m.top_k), real_perf.wire_bytes_per_token(m.hidden,
                                                                                                  sched.combine_dtype)
    wires = [torch.zeros(len(p.token_N), w, dtype=torch.uint8, device=dev) for p in plans]
    for mode in real_perf.transports(bench):
        tr = bench.transport(mode)
        tr.prepare(len(plans), max(len(p.token_N) for p in plans), w, v)
        real_perf.exchange_once(bench, tr, plans, wires)
        with Count() as c:
            c.n = 0
            real_perf.exchange_once(bench, tr, plans, wires)
        counts[mode] = c.n / len(plans)
    return counts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("exchange", "run", "counts", "ops"))
    p.add_argument("spec", nargs="?", help="scenario YAML (run)")
    p.add_argument("--out", required=True, help="folder for the per-rank tables")
    p.add_argument("--quick", action="store_true", help="exchange: the tiny model over gloo (CPU)")
    args = p.parse_args()
    if args.what == "run" and not args.spec:
        p.error("run needs a scenario file")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for owner, name in WRAPPED:
        timed(owner, name)
    ops = None
    if args.what in ("exchange", "counts", "ops"):
        import real_perf

        bench = real_perf.Bench(argparse.Namespace(quick=args.quick, spec=None, set=[], warmup=3, repeats=10,
                                                   ranks=int(os.environ.get("WORLD_SIZE", "1"))))
        TIMES.clear()  # model building and group set-up are not the exchange's
        if args.what == "exchange":
            real_perf.measure_exchange(bench)
        elif args.what == "ops":
            for owner, name in WRAPPED:  # single calls only: the exchange's own calls are counted, not timed
                setattr(owner, name, getattr(owner, name).__wrapped__)
            ops = time_ops(bench)
        else:
            time_counts(bench)
        rank = bench.rank
        bench.sync()
        real_perf.rdist.finish()
        forget_process_groups()
    else:
        from moe.cli.main import main as cli

        cli(["run", args.spec, "--backend", "real", "--out", str(out / f"run_{Path(args.spec).stem}")])
        rank = int(os.environ.get("RANK", "0"))
    name = args.what if args.what != "run" else Path(args.spec).stem
    text = table() + ("".join(f"torch calls per micro-batch exchange, {mode}: {n:.0f}\n" for mode, n in ops.items())
                      if ops else "")
    (out / f"host_{name}_{rank}.txt").write_text(text)
    if rank == 0:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
