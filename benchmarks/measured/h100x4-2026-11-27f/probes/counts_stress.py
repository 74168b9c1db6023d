# ruff: noqa  (kept as it ran: torchrun --nproc-per-node 4 counts_stress.py; with the pinned counts path of that moment, since reverted)
import os, sys, numpy as np, torch, torch.distributed as dist
sys.path.insert(0, os.getcwd())
from real import dist as rdist
from real.groups import process_groups
from real.transport import RealTransport
from emu import dispatch as dp
rdist.init("nccl", 60.0)
g = process_groups("nccl", 60.0)
dev = torch.device("cuda", torch.cuda.current_device())
tr = RealTransport(g, "all_to_all", dev, 60.0)
r, n = dist.get_rank(), dist.get_world_size()
a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
bad = 0
for i in range(300):
    if i % 3 == 0:
        for _ in range(3): a = (a @ a).clamp_(-1, 1)
    send = np.arange(n * 2, dtype=np.int64).reshape(n, 2) + 1000 * r + i * 7
    recv = tr.exchange_counts(send, dp.tag(i % 50, 0))
    expect = np.array([[r * 2 + 1000 * s + i * 7, r * 2 + 1 + 1000 * s + i * 7] for s in range(n)])
    if not np.array_equal(recv, expect):
        bad += 1
        if bad < 4: print(f"rank {r} call {i}: got {recv.tolist()} expected {expect.tolist()}", flush=True)
print(f"rank {r}: {bad} bad of 300", flush=True)
dist.barrier()
rdist.finish()
