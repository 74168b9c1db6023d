"""cProfile of real_perf's exchange on rank 0 (every rank runs it), from the repository root on 4 GPUs:
    torchrun --nproc-per-node 4 benchmarks/measured/h100x4-2026-11-27i/hostprof.py"""
import argparse
import cProfile
import io
import os
import pstats
import sys

sys.path[:0] = [os.getcwd(), os.path.join(os.getcwd(), "benchmarks")]
import real_perf  # noqa: E402
import torch  # noqa: E402

from emu import dispatch as dp  # noqa: E402

b = real_perf.Bench(argparse.Namespace(quick=False, spec=None, set=[], warmup=3, repeats=10,
                                        ranks=int(os.environ.get("WORLD_SIZE", "1"))))
plans = real_perf.layer_plans(b)
m, sched = b.s.model, b.s.schedule
w = dp.row_bytes(m.hidden, sched.dispatch_dtype, m.top_k)
v = real_perf.wire_bytes_per_token(m.hidden, sched.combine_dtype)
wires = [torch.zeros(len(p.token_N), w, dtype=torch.uint8, device=b.device) for p in plans]
for mode in os.environ.get("MODES", "all_to_all,nvshmem").split(","):
    tr = b.transport(mode)
    tr.prepare(len(plans), max(len(p.token_N) for p in plans), w, v)
    for _ in range(5):
        real_perf.exchange_once(b, tr, plans, wires)
    plain = [real_perf.exchange_once(b, tr, plans, wires) for _ in range(20)]
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(20):
        real_perf.exchange_once(b, tr, plans, wires)
    pr.disable()
    if b.rank == 0:
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(35)
        med = sorted(plain)[10]
        print(f"===== {mode}: plain exchange {med[0]*1e3:.3f} ms host {med[1]*1e3:.3f} ms (20 exchanges profiled)")
        print(s.getvalue()[:9000])
    b.sync()
real_perf.rdist.finish()
