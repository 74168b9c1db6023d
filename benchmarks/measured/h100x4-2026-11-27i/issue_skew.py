"""Is an nvshmem dispatch slow inside real_perf's exchange because the op waits for
ranks whose hosts issue it late, or is the op itself slow there?  Every rank maps its transfer spans (the
transport's timing hook: CUDA events) onto the host clock (time.perf_counter, one clock on one host) from an
event recorded on an idle device; rank 0 prints, per transfer and micro-batch, the medians over repeats of:
last rank's issue -> this rank's op end ("after_last_issue", about the op's own time if skew explains it), and
this rank's issue -> op end.
    torchrun --nproc-per-node 4 benchmarks/measured/h100x4-2026-11-27i/issue_skew.py
(from the repository root, on 4 GPUs)
"""
import argparse
import os
import statistics
import sys
import time

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
for mode in os.environ.get("MODES", "nvshmem,all_to_all").split(","):
    tr = b.transport(mode)
    tr.prepare(len(plans), max(len(p.token_N) for p in plans), w, v)
    for _ in range(3):
        real_perf.exchange_once(b, tr, plans, wires)
    per_repeat = []
    for _ in range(10):
        torch.cuda.synchronize()
        e0 = torch.cuda.Event(enable_timing=True)
        e0.record()
        e0.synchronize()
        t0 = time.perf_counter()
        got = []
        tr.timing = lambda name, key, s, e, got=got: got.append((name, key, time.perf_counter(), s, e))
        real_perf.exchange_once(b, tr, plans, wires)
        torch.cuda.synchronize()
        per_repeat.append({(n, k): (h, t0 + e0.elapsed_time(e) / 1e3) for n, k, h, s, e in got
                           if n.endswith("_transfer")})
        tr.timing = None
    every = b.gather(per_repeat)
    if b.rank == 0:
        for key in sorted(per_repeat[0]):
            after_last, own = [], []
            for r in range(b.size):
                a = [every[r][i][key][1] - max(every[q][i][key][0] for q in range(b.size)) for i in range(10)]
                o = [every[r][i][key][1] - every[r][i][key][0] for i in range(10)]
                after_last.append(statistics.median(a) * 1e3)
                own.append(statistics.median(o) * 1e3)
            print(f"{mode:10s} {key[0]:18s} mb{key[1]}  after_last_issue ms {[round(x, 3) for x in after_last]}  "
                  f"own issue->end ms {[round(x, 3) for x in own]}")
b.sync()
real_perf.rdist.finish()
