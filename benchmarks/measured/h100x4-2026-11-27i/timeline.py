"""Host timeline of one real_perf exchange per rank (perf_counter around protocol and transport calls).
    torchrun --nproc-per-node 4 benchmarks/measured/h100x4-2026-11-27i/timeline.py     MODES=all_to_all,nvshmem"""
import argparse
import functools
import os
import sys
import time

sys.path[:0] = [os.getcwd(), os.path.join(os.getcwd(), "benchmarks")]
import real_perf  # noqa: E402
import torch  # noqa: E402

from emu import dispatch as dp  # noqa: E402
from real import transport as rt  # noqa: E402

b = real_perf.Bench(argparse.Namespace(quick=os.environ.get("QUICK") == "1", spec=None, set=[], warmup=3, repeats=10,
                                        ranks=int(os.environ.get("WORLD_SIZE", "1"))))
LOG = []
T0 = [0.0]
DEPTH = [0]

def wrap(owner, name, label):
    fn = getattr(owner, name)
    @functools.wraps(fn)
    def w(*a, **k):
        s = time.perf_counter()
        DEPTH[0] += 1
        try:
            return fn(*a, **k)
        finally:
            DEPTH[0] -= 1
            LOG.append((label, DEPTH[0], (s - T0[0]) * 1e3, (time.perf_counter() - s) * 1e3))
    setattr(owner, name, w)

for n in ("post_dispatch", "post_result_receives", "post_receives", "send_results"):
    wrap(dp, n, n)
for n in ("exchange_counts", "take_counts", "_issue", "ready", "join", "isend_split", "irecv_split", "_launch",
          "_vdev"):
    wrap(rt.RealTransport, n, "tr." + n)
wrap(torch.distributed, "all_to_all_single", "a2a")
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
    res = []
    for _ in range(5):
        LOG.clear()
        b.sync()
        T0[0] = time.perf_counter()
        t = real_perf.exchange_once(b, tr, plans, wires)
        res.append((t, list(LOG)))
    t, log = sorted(res, key=lambda x: x[0][0])[2]
    every = b.gather((t, log))
    if b.rank == 0:
        for r, (t, log) in enumerate(every):
            print(f"== {mode} rank {r}: exchange {t[0]*1e3:.3f} ms host {t[1]*1e3:.3f} ms")
            for label, d, s, dur in sorted(log, key=lambda x: x[2]):
                print(f"   {'  ' * d}{label:28s} at {s:7.3f} ms  took {dur:7.3f}")
    b.sync()
real_perf.rdist.finish()
