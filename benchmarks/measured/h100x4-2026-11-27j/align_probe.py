"""Is the nvshmem dispatch slow because its per-block chunks are not 16-byte aligned?
    torchrun --standalone --nproc-per-node 4 benchmarks/measured/h100x4-2026-11-27j/align_probe.py
all_to_all_vdev splits each peer's bytes over blocks_per_peer blocks: chunk = rows x row_bytes / bpp. With 7408-byte
rows (16 x 463) and bpp 16, a chunk is rows x 463 bytes: 16-byte aligned only when rows is a multiple of 16.
a2a_floor's splits are multiples of 128; the routed ones are not. Variants: row width 7408 / 7424 (16 x 464),
splits multiples of 128 / odd."""
import os
import sys
import types

import torch
import torch.distributed as dist

sys.path[:0] = [os.getcwd(), os.path.join(os.getcwd(), "benchmarks")]
import a2a_floor  # noqa: E402
from a2a_floor import Patterns, Vdev, timed  # noqa: E402

from real import dist as rdist  # noqa: E402

place = rdist.init("nccl", 300.0)
rank, ranks = place.rank, place.size
dev = torch.device("cuda", torch.cuda.current_device())
base_splits = a2a_floor.splits_of


def odd_splits(rank, ranks, rows, mb):
    out = base_splits(rank, ranks, rows, mb)
    out = [x + (1 if i % 2 == 0 else -1) + 2 * ((rank + i) % 3) for i, x in enumerate(out)]  # odd-ish, sums kept
    out[-1] = rows - sum(out[:-1])
    return out


from torch.distributed import _symmetric_memory as symm  # noqa: E402

os.environ.setdefault("NVSHMEM_SYMMETRIC_SIZE", str(8 << 30))
os.environ.setdefault("TORCH_SYMMMEM_NBLOCKS", "64")
symm.set_backend("NVSHMEM")
res = {}
for width in (7408, 7424, 7680):
    for name, fn in (("aligned", base_splits), ("odd", odd_splits)):
        a2a_floor.splits_of = fn
        args = types.SimpleNamespace(rows=4096, micro_batches=2, row_bytes=width, warmup=3, repeats=20)
        p = Patterns(args, rank, ranks, dev)
        v = Vdev(p, dist.group.WORLD.group_name)
        ok = v.check()
        r = {"bare": timed(lambda p=p: p.bare(), ranks, 3, 20)["s"],
             "vdev": timed(lambda v=v: v.run(), ranks, 3, 20)["s"],
             "vdev_dispatch": timed(lambda v=v: v.run(combine=False), ranks, 3, 20)["s"],
             "bare_dispatch": timed(lambda p=p: p.bare(combine=False), ranks, 3, 20)["s"]}
        res[(width, name)] = r
        if rank == 0:
            print(f"width {width} {name:8s} splits {p.send[0]} ok={ok}  " +
                  "  ".join(f"{k} {1e3 * t:.3f} ms" for k, t in r.items()), flush=True)
        del v, p
dist.barrier()
rdist.finish()
