# ruff: noqa  (kept as it ran: torchrun --nproc-per-node 4 prof_gpu.py OUT)
import argparse, cProfile, pstats, os, sys, time, statistics, io
sys.path[:0] = [os.getcwd(), os.path.join(os.getcwd(), "benchmarks")]
import real_perf
import torch, numpy as np
import torch.distributed as dist
from emu import dispatch as dp
out = sys.argv[1]
b = real_perf.Bench(argparse.Namespace(quick=bool(os.environ.get("QUICK")), spec=None, set=[] if os.environ.get("QUICK") else ["model.layers=2"], warmup=3, repeats=10, ranks=int(os.environ["WORLD_SIZE"])))
plans = real_perf.layer_plans(b)
m=b.s.model; sched=b.s.schedule
w = dp.row_bytes(m.hidden, sched.dispatch_dtype, m.top_k)
wires = [torch.zeros(len(p.token_N), w, dtype=torch.uint8, device=b.device) for p in plans]
lines = []
for mode in ("all_to_all",):
    tr = b.transport(mode)
    for _ in range(5): real_perf.exchange_once(b, tr, plans, wires)
    ts = [real_perf.exchange_once(b, tr, plans, wires) for _ in range(20)]
    lines.append(f"{mode} exchange_once median {statistics.median(ts)*1e3:.3f} ms")
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(50): real_perf.exchange_once(b, tr, plans, wires)
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(45)
    lines.append(s.getvalue())
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(45)
    lines.append(s.getvalue())
# counts round trip: nccl (transport) vs gloo on host tensors
send = np.ones((b.size, 2), dtype=np.int64)
tr = b.transport("all_to_all")
for _ in range(20): tr.exchange_counts(send, dp.tag(0, 0))
t0=time.perf_counter()
for _ in range(200): tr.exchange_counts(send, dp.tag(0, 0))
lines.append(f"nccl counts via transport {(time.perf_counter()-t0)/200*1e6:.1f} us")
st = torch.from_numpy(send); rt_ = torch.empty_like(st)
for _ in range(20): dist.all_to_all_single(rt_, st, group=b.groups.objects)
t0=time.perf_counter()
for _ in range(200): dist.all_to_all_single(rt_, st, group=b.groups.objects)
lines.append(f"gloo counts on host {(time.perf_counter()-t0)/200*1e6:.1f} us")
# pinned + non_blocking
pin_s = torch.empty((b.size, 2), dtype=torch.int64, pin_memory=b.device.type == "cuda"); pin_r = torch.empty_like(pin_s)
ds = torch.empty((b.size,2), dtype=torch.int64, device=b.device); dr = torch.empty_like(ds)
cs = torch.cuda.Stream(b.device) if b.device.type == "cuda" else None
def pinned():
    with torch.cuda.stream(cs):
        pin_s.numpy()[:] = send
        ds.copy_(pin_s, non_blocking=True)
        dist.all_to_all_single(dr, ds, group=b.groups.counts)
        pin_r.copy_(dr, non_blocking=True)
        cs.synchronize()
    return pin_r.numpy().copy()
for _ in range(20): pinned()
t0=time.perf_counter()
for _ in range(200): pinned()
lines.append(f"nccl counts pinned+stream sync {(time.perf_counter()-t0)/200*1e6:.1f} us")
if b.rank == 0:
    open(out, "w").write("\n".join(lines))
b.sync()
real_perf.rdist.finish()
