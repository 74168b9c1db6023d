"""Device time of each transfer inside real_perf's exchange (the transport's timing hook): the median span of
dispatch and combine transfers (start event before the copies into symmetric memory, end after the op) and of
the compute stream's waits, rank by rank. Kept as it ran (`gpu40.sh`: VARIANT=one_stream | low_priority |
default); the first job's version ran both transports (`spans_both_transports.log`)."""
import argparse
import os
import statistics
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
lines = []
VARIANT = os.environ.get("VARIANT", "default")
for mode in ("nvshmem",):
    tr = b.transport(mode)
    if VARIANT == "one_stream":  # dispatch and combine serialized on one stream
        tr.streams["combine"] = tr.streams["dispatch"]
    elif VARIANT == "low_priority":
        tr.streams = {p: torch.cuda.Stream(b.device, priority=0) for p in tr.streams}
    tr.prepare(len(plans), max(len(p.token_N) for p in plans), w, v)
    for _ in range(3):
        real_perf.exchange_once(b, tr, plans, wires)
    spans = []
    tr.timing = lambda name, key, s, e, spans=spans: spans.append((name, key, s, e))
    for _ in range(10):
        real_perf.exchange_once(b, tr, plans, wires)
    torch.cuda.synchronize()
    by = {}
    for name, key, s, e in spans:
        by.setdefault(f"{name} mb{key}", []).append(s.elapsed_time(e))
    lines.append(f"rank {b.rank} {mode} {VARIANT}: " + ", ".join(f"{k} {statistics.median(x):.3f} ms"
                                                      for k, x in sorted(by.items())))
every = b.gather(lines)
if b.rank == 0:
    print("\n".join(x for e in every for x in e))
b.sync()
real_perf.rdist.finish()
