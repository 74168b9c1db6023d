"""Next session's nvshmem bisect (untracked probe; run on 4 GPUs from the repository root):
    torchrun --standalone --nproc-per-node 4 benchmarks/measured/h100x4-2026-11-27j/nvshmem_bisect.py
Inside real_perf's exchange an nvshmem dispatch takes ~1 ms after the last rank's issue, 0.13 ms in a2a_floor.py.
What the transport does that no floor pattern does yet, one at a time:
  one            a2a_floor's vdev: one group, one stream, d0 d1 c0 c1
  reads          the transport's order: d0 d1, host reads d0's rows, c0, host reads d1's, c1
  two_groups     dispatches on one group (NVSHMEM team), combines on another, as pg.dispatch / pg.combine
  two_streams    dispatches on one side stream, combines on another (each waits for its dispatch)
  transport      all three
Prints per pattern: device ms of the whole (max over ranks), and rank 0's per-op spans (event pairs on the op's
stream; a span includes the op's wait for its peers)."""
import os
import statistics
import sys
import types

import torch
import torch.distributed as dist

sys.path[:0] = [os.getcwd(), os.path.join(os.getcwd(), "benchmarks")]
from a2a_floor import Patterns, Vdev, timed  # noqa: E402

from real import dist as rdist  # noqa: E402

place = rdist.init("nccl", 300.0)
rank, ranks = place.rank, place.size
dev = torch.device("cuda", torch.cuda.current_device())
args = types.SimpleNamespace(rows=4096, micro_batches=2, row_bytes=None, warmup=3, repeats=20)
p = Patterns(args, rank, ranks, dev)
from torch.distributed import _symmetric_memory as symm  # noqa: E402

os.environ.setdefault("NVSHMEM_SYMMETRIC_SIZE", str(4 * p.symmetric_bytes + (64 << 20)))
os.environ.setdefault("TORCH_SYMMMEM_NBLOCKS", "64")
symm.set_backend("NVSHMEM")
ga, gb = dist.new_group(), dist.new_group()
va, vb = Vdev(p, ga.group_name), Vdev(p, gb.group_name)
op = torch.ops.symm_mem.all_to_all_vdev
s_d, s_c = torch.cuda.Stream(), torch.cuda.Stream()
SPANS: dict[str, list] = {}


def run(two_groups: bool, two_streams: bool, reads: bool, spans: bool = False) -> None:
    vd, vc = va, (vb if two_groups else va)
    cur = torch.cuda.current_stream()
    done = []
    for m in range(2):
        st = s_d if two_streams else cur
        st.wait_stream(cur)
        with torch.cuda.stream(st):
            e0 = torch.cuda.Event(enable_timing=True) if spans else None
            if spans:
                e0.record()
            op(vd.d_in[m], vd.d_out[m], vd.split[m], vd.d_so[m], vd.group)
            ev = torch.cuda.Event(enable_timing=spans)
            ev.record()
            done.append(ev)
            if spans:
                SPANS.setdefault(f"d{m}", []).append((e0, ev))
    for m in range(2):
        if reads:
            with torch.cuda.stream(s_d if two_streams else cur):
                vd.d_so[m][0].tolist()  # host sync on that stream, as take_counts
        st = s_c if two_streams else cur
        st.wait_event(done[m])
        with torch.cuda.stream(st):
            e0 = torch.cuda.Event(enable_timing=True) if spans else None
            if spans:
                e0.record()
            vc.c_split[m].copy_(vd.d_so[m][0])
            op(vc.c_in[m], vc.c_out[m], vc.c_split[m], vc.c_so[m], vc.group)
            if spans:
                e1 = torch.cuda.Event(enable_timing=True)
                e1.record()
                SPANS.setdefault(f"c{m}", []).append((e0, e1))
    cur.wait_stream(s_d)
    cur.wait_stream(s_c)


patterns = {"bare": lambda: p.bare(),
            "one": lambda: run(False, False, False), "reads": lambda: run(False, False, True),
            "two_groups": lambda: run(True, False, False), "two_streams": lambda: run(False, True, False),
            "transport": lambda: run(True, True, True)}
out = {name: timed(fn, ranks, 3, 20) for name, fn in patterns.items()}
for name, flags in (("one", (False, False, False)), ("transport", (True, True, True))):
    SPANS.clear()
    for _ in range(10):
        torch.cuda.synchronize()
        dist.barrier()
        run(*flags, spans=True)
    torch.cuda.synchronize()
    if rank == 0:
        print(name, "spans ms:", {k: round(statistics.median(a.elapsed_time(b) for a, b in v), 3)
                                  for k, v in sorted(SPANS.items())})
if rank == 0:
    for name, r in out.items():
        print(f"{name:12s} {r['s'] * 1e3:7.3f} ms  host {r['host_issue_s'] * 1e3:7.3f} ms  "
              f"{100 * out['bare']['s'] / r['s']:6.1f}% of bare")
dist.barrier()
rdist.finish()
