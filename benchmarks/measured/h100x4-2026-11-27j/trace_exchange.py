"""CUPTI trace (torch.profiler) of real_perf's exchange per rank: which device work makes it 3 ms.
    torchrun --nproc-per-node 4 benchmarks/measured/h100x4-2026-11-27j/trace_exchange.py
(writes $OUT/trace_<mode>_r<rank>.json)"""
import argparse
import os
import sys

sys.path[:0] = [os.getcwd(), os.path.join(os.getcwd(), "benchmarks")]
import real_perf  # noqa: E402
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from emu import dispatch as dp  # noqa: E402

b = real_perf.Bench(argparse.Namespace(quick=False, spec=None, set=[], warmup=3, repeats=10,
                                        ranks=int(os.environ.get("WORLD_SIZE", "1"))))
plans = real_perf.layer_plans(b)
m, sched = b.s.model, b.s.schedule
w = dp.row_bytes(m.hidden, sched.dispatch_dtype, m.top_k)
v = real_perf.wire_bytes_per_token(m.hidden, sched.combine_dtype)
wires = [torch.zeros(len(p.token_N), w, dtype=torch.uint8, device=b.device) for p in plans]
out = os.environ.get("OUT", "/tmp")
for mode in os.environ.get("MODES", "nvshmem,all_to_all").split(","):
    tr = b.transport(mode)
    tr.prepare(len(plans), max(len(p.token_N) for p in plans), w, v)
    for _ in range(5):
        real_perf.exchange_once(b, tr, plans, wires)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            t = real_perf.exchange_once(b, tr, plans, wires)
            print(f"{mode} rank {b.rank}: {t[0] * 1e3:.3f} ms host {t[1] * 1e3:.3f}", flush=True)
    prof.export_chrome_trace(f"{out}/trace_{mode}_r{b.rank}.json")
    b.sync()
real_perf.rdist.finish()
