# ruff: noqa  (kept as it ran)
"""Feasibility probe: NVSHMEM all_to_all_vdev (device splits) vs NCCL all_to_all_single at real_perf's bytes.
torchrun --nproc-per-node 4 .probe/symm_probe.py OUTFILE [odd]
"""
import json
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist

out_path = sys.argv[1]
odd = len(sys.argv) > 2 and sys.argv[2] == "odd"
rank = int(os.environ["RANK"])
world = int(os.environ["WORLD_SIZE"])
torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
dev = torch.device("cuda", torch.cuda.current_device())
dist.init_process_group("nccl", device_id=dev)
info = {"torch": torch.__version__, "nblocks_env": os.environ.get("TORCH_SYMMMEM_NBLOCKS"), "odd": odd}
import torch.distributed._symmetric_memory as symm_mem  # noqa: E402

info["nvshmem_available"] = bool(symm_mem.is_nvshmem_available())
try:
    op = torch.ops.symm_mem.all_to_all_vdev
    info["schema"] = [str(getattr(op, o)._schema) for o in op.overloads()]
except Exception as e:  # noqa: BLE001
    info["schema"] = repr(e)
try:
    import triton
    info["triton"] = triton.__version__
except Exception as e:  # noqa: BLE001
    info["triton"] = repr(e)
try:
    symm_mem.set_backend("NVSHMEM")
    info["backend"] = symm_mem.get_backend(dev)
except Exception as e:  # noqa: BLE001
    info["backend_err"] = repr(e)
group_name = dist.group.WORLD.group_name
try:
    symm_mem.enable_symm_mem_for_group(group_name)
except Exception as e:  # noqa: BLE001
    info["enable_err"] = repr(e)

B, V, N, MB = 7240, 14336, 4096, 2
g = torch.Generator().manual_seed(rank)
res = {}


def splits_for(m):
    base = [N // world] * world
    # deterministic imbalance
    for d in range(world):
        base[d] += ((rank + d + m) % 3 - 1) * 2 * (7 + d)
    if odd:
        base[0] += 1
        base[1] -= 1
    base[-1] = N - sum(base[:-1])
    return base


send = [splits_for(m) for m in range(MB)]
allsend = [None] * world
dist.all_gather_object(allsend, send)
recv = [[allsend[s][m][rank] for s in range(world)] for m in range(MB)]


def timed(fn, reps=20, warm=3):
    for _ in range(warm):
        fn()
    ts, hs = [], []
    for _ in range(reps):
        torch.cuda.synchronize()
        dist.barrier()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        h0 = time.perf_counter()
        fn()
        h1 = time.perf_counter()
        e1.record()
        e1.synchronize()
        ts.append(e0.elapsed_time(e1) / 1e3)
        hs.append(h1 - h0)
    gathered = [None] * world
    dist.all_gather_object(gathered, (statistics.median(ts), statistics.median(hs)))
    return {"gpu_s_max_rank": max(x[0] for x in gathered), "host_s_max_rank": max(x[1] for x in gathered)}


# ---------------------------------------------------------------- NCCL bare (real_perf's pattern)
d_in = [torch.randint(0, 255, (N, B), dtype=torch.uint8, device=dev) for _ in range(MB)]
d_out = [torch.empty(sum(recv[m]), B, dtype=torch.uint8, device=dev) for m in range(MB)]
c_in = [torch.randint(0, 255, (sum(recv[m]), V), dtype=torch.uint8, device=dev) for m in range(MB)]
c_out = [torch.empty(N, V, dtype=torch.uint8, device=dev) for _ in range(MB)]


def bare():
    for m in range(MB):
        dist.all_to_all_single(d_out[m], d_in[m], recv[m], send[m])
    for m in range(MB):
        dist.all_to_all_single(c_out[m], c_in[m], send[m], recv[m])


res["bare_nccl"] = timed(bare)
sent_bytes = sum(N * B + sum(recv[m]) * V for m in range(MB))
res["bytes_sent"] = sent_bytes


def counts_nccl():
    for m in range(MB):
        cs = torch.tensor(send[m], dtype=torch.int64).to(dev)
        cr = torch.empty_like(cs)
        dist.all_to_all_single(cr, cs)
        r = cr.cpu().tolist()
        dist.all_to_all_single(d_out[m], d_in[m], r, send[m])
    for m in range(MB):
        dist.all_to_all_single(c_out[m], c_in[m], send[m], recv[m])


res["nccl_with_counts"] = timed(counts_nccl)

# ---------------------------------------------------------------- NVSHMEM all_to_all_vdev
try:
    sd_in = [symm_mem.empty((N, B), dtype=torch.uint8, device=dev) for _ in range(MB)]
    sd_out = [symm_mem.empty((world * N, B), dtype=torch.uint8, device=dev) for _ in range(MB)]
    sc_in = [symm_mem.empty((world * N, V), dtype=torch.uint8, device=dev) for _ in range(MB)]
    sc_out = [symm_mem.empty((N, V), dtype=torch.uint8, device=dev) for _ in range(MB)]
    s_split = [symm_mem.empty(world, dtype=torch.int64, device=dev) for _ in range(MB)]
    s_dso = [symm_mem.empty((2, world), dtype=torch.int64, device=dev) for _ in range(MB)]
    s_csplit = [symm_mem.empty(world, dtype=torch.int64, device=dev) for _ in range(MB)]
    s_cso = [symm_mem.empty((2, world), dtype=torch.int64, device=dev) for _ in range(MB)]
    for m in range(MB):
        sd_in[m].copy_(d_in[m])
        s_split[m].copy_(torch.tensor(send[m]))
        sc_in[m][: sum(recv[m])].copy_(c_in[m])
    for t in sd_in + sd_out + sc_in + sc_out + s_split + s_dso + s_csplit + s_cso:
        symm_mem.rendezvous(t, group=group_name)
    torch.cuda.synchronize()
    info["alloc_ok"] = True
    a2a = torch.ops.symm_mem.all_to_all_vdev

    def vdev_dispatch(m):
        a2a(sd_in[m], sd_out[m], s_split[m], s_dso[m], group_name)

    def vdev_combine(m):
        s_csplit[m].copy_(s_dso[m][0])
        a2a(sc_in[m], sc_out[m], s_csplit[m], s_cso[m], group_name)

    # correctness vs NCCL
    bare()
    for m in range(MB):
        vdev_dispatch(m)
    for m in range(MB):
        vdev_combine(m)
    torch.cuda.synchronize()
    ok = []
    for m in range(MB):
        so = s_dso[m].cpu().tolist()
        M = sum(so[0])
        ok.append({"out_splits": so[0], "expect": recv[m], "offs": so[1],
                   "dispatch_equal": bool(torch.equal(sd_out[m][:M], d_out[m])),
                   "combine_equal": bool(torch.equal(sc_out[m], c_out[m])),
                   "comb_out_splits": s_cso[m][0].cpu().tolist()})
    res["correct"] = ok

    def vdev_all():
        for m in range(MB):
            vdev_dispatch(m)
        for m in range(MB):
            vdev_combine(m)

    res["vdev_device_only"] = timed(vdev_all)

    def vdev_hostread():
        for m in range(MB):
            vdev_dispatch(m)
        for m in range(MB):
            _ = s_dso[m][0].cpu().tolist()  # the host learns M (after that dispatch)
            vdev_combine(m)

    res["vdev_host_reads_counts"] = timed(vdev_hostread)

    def vdev_d_only():
        for m in range(MB):
            vdev_dispatch(m)

    def nccl_d_only():
        for m in range(MB):
            dist.all_to_all_single(d_out[m], d_in[m], recv[m], send[m])

    res["vdev_dispatch_only"] = timed(vdev_d_only)
    res["nccl_dispatch_only"] = timed(nccl_d_only)
    # host cost of one vdev call
    torch.cuda.synchronize()
    h0 = time.perf_counter()
    for _ in range(50):
        vdev_dispatch(0)
    res["vdev_host_per_call_s"] = (time.perf_counter() - h0) / 50
    torch.cuda.synchronize()
except Exception as e:  # noqa: BLE001
    import traceback
    info["vdev_err"] = traceback.format_exc()[-2000:]

for k, v in list(res.items()):
    if isinstance(v, dict) and "gpu_s_max_rank" in v:
        v["busbw_GBps"] = sent_bytes / v["gpu_s_max_rank"] * (world - 1) / world / 1e9
if rank == 0:
    with open(out_path, "w") as f:
        json.dump({"info": info, "res": res}, f, indent=1)
    print(json.dumps({"info": info, "res": res}, indent=1))
dist.barrier()
dist.destroy_process_group()
