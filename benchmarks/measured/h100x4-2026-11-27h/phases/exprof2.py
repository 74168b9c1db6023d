"""Host-time breakdown of real_perf's exchange: per-call perf_counter sums, then a cProfile (kept as it ran).

    MODES=nvshmem,all_to_all torchrun --nproc-per-node 4 exprof2.py OUT    # from the repository root
    SYNC_CHECK=1 ...    # counts_of_rows under torch.cuda.set_sync_debug_mode("error")

Runs real_perf.measure_exchange three times (two plain, one under cProfile); each rank writes
OUT/phases_<rank>.txt, rank 0 also OUT/exprof.txt.
"""

import argparse
import collections
import cProfile
import io
import os
import pstats
import sys
import time

sys.path[:0] = [os.getcwd(), os.path.join(os.getcwd(), "benchmarks")]

import real_perf  # noqa: E402
import torch  # noqa: E402

from emu import dispatch as dp  # noqa: E402
from real.transport import RealTransport  # noqa: E402

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
b = real_perf.Bench(argparse.Namespace(quick=False, spec=None, set=[], warmup=3, repeats=10,
                                        ranks=int(os.environ.get("WORLD_SIZE", "1"))))
acc = collections.defaultdict(float)


def timed(name, fn):
    def w(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            acc[name] += time.perf_counter() - t
    return w


_cor = dp.counts_of_rows


def _checked(*a, **k):
    torch.cuda.set_sync_debug_mode("error")
    try:
        return _cor(*a, **k)
    finally:
        torch.cuda.set_sync_debug_mode("default")


dp.counts_of_rows = _checked if os.environ.get("SYNC_CHECK") else _cor
for n in ("post_dispatch", "post_result_receives", "post_receives", "send_results", "counts_of_rows"):
    setattr(dp, n, timed(n, getattr(dp, n)))
for n in ("_vdev", "_issue", "_group", "_issue_ready", "take_counts", "ready", "join", "irecv_split",
          "isend_split", "test_some", "reset"):
    setattr(RealTransport, n, timed("tr." + n, getattr(RealTransport, n)))
modes = os.environ.get("MODES", "nvshmem,all_to_all").split(",")
real_perf.transports = lambda b_: tuple(modes)
lines = []
pr = cProfile.Profile()
for prof in (False, False, True):
    acc.clear()
    if prof:
        pr.enable()
    ex = real_perf.measure_exchange(b)
    if prof:
        pr.disable()
    lines.append(f"rank {b.rank} profiled={prof}: " + ", ".join(
        f"{m} {t['comm_only_s'] * 1e3:.3f} ms host {t['host_issue_s'] * 1e3:.3f}" for m, t in ex["transports"].items()))
    lines += [f"  {k:28s} {v * 1e3:9.2f} ms total" for k, v in sorted(acc.items(), key=lambda x: -x[1])]
if b.rank == 0:
    s = io.StringIO()
    st = pstats.Stats(pr, stream=s)
    st.sort_stats("tottime").print_stats(45)
    st.sort_stats("cumulative").print_stats(70)
    open(f"{out}/exprof.txt", "w").write(s.getvalue())
open(f"{out}/phases_{b.rank}.txt", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
b.sync()
real_perf.rdist.finish()
