"""What a token exchange can reach at real_perf's bytes, with no runtime around it (one process per GPU).

    python benchmarks/a2a_floor.py --out results/a2a_floor.json     # starts torchrun on every GPU

The transfers of `real_perf.py`'s exchange section (the `paper` expert, 4096 rows a rank sends per micro-batch,
2 micro-batches: dispatch rows of `emu.dispatch.row_bytes`, bf16 result rows back), each pattern issued from
the leanest Python loop, so the figures bound what the runtime's protocol could reach:

bare        `all_to_all_single` of every micro-batch's rows, then of its results, the splits known on the host
            beforehand (real_perf's reference: what the protocol is measured against)
counts      the same, but each micro-batch first exchanges its counts (one int64 per peer) with a device
            all-to-all and reads them back on the host, as a receiver must before it can post a collective's
            receives: the host round trip the protocol cannot skip with host-sized collectives
vdev        NVSHMEM `torch.ops.symm_mem.all_to_all_vdev` (PyTorch's device-split all-to-all): the splits stay
            on the device, no host round trip; checked equal to the NCCL result first. Needs the NVSHMEM
            backend (skipped where `symm_mem.is_nvshmem_available()` is false). Its kernel splits each peer's
            bytes evenly over the blocks it gives that peer (up to 16 of 64): the row counts are made even so
            that 7240-byte rows divide
vdev_host   vdev, with the host reading each micro-batch's received counts before its combine (what sizing
            the expert GEMM would need)
vdev_copyin vdev with every micro-batch's rows and results first copied into the symmetric inputs (device to
            device), as the `nvshmem` transport does
vdev_h2d    vdev with each dispatch's splits first copied from pinned host memory, as the transport does
vdev_flat   vdev on row buffers that are views of flat uint8 symmetric buffers, as the transport's
vdev_graph  vdev with each micro-batch's dispatch and its combine (splits copy and op) captured as CUDA graphs
            once, then replayed: one host call per transfer (`vdev_graph_host`: with the host reads); whether
            the op can be captured at all is recorded (`vdev_graph_error` where it cannot)
*_dispatch  the dispatch half alone (NCCL and vdev)

Each figure: the median over repeats of the device time from an event recorded after a barrier to the
last transfer's end (max over ranks), the host's issue time, and the bus bandwidth as nccl-tests counts it
(bytes a rank sends, own part included, x (n - 1) / n / time).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emu.dispatch import row_bytes  # noqa: E402
from moe.model.fp8 import wire_bytes_per_token  # noqa: E402
from moe.result import write_json_atomic  # noqa: E402
from real import dist as rdist  # noqa: E402
from real.calibrate import cuda_times_s  # noqa: E402

HIDDEN, TOP_K = 7168, 2
"""The `paper` model's hidden size and top-k (real_perf's scenario)."""


def splits_of(rank: int, ranks: int, rows: int, mb: int) -> list[int]:
    """Rows this rank sends each peer in micro-batch mb: rows / ranks each, give or take a fixed 1/16 of that
    (by rank, peer and micro-batch), every count even (see vdev), summing to rows (even)."""
    base, skew = rows // ranks // 2 * 2, rows // ranks // 16 * 2
    out = [base + ((rank + d + mb) % 3 - 1) * skew for d in range(ranks)]
    out[-1] = rows - sum(out[:-1])
    return out


class Patterns:
    def __init__(self, args, rank: int, ranks: int, dev: torch.device):
        self.args, self.rank, self.ranks, self.dev = args, rank, ranks, dev
        self.b = args.row_bytes or row_bytes(HIDDEN, "fp8", TOP_K)
        self.v = wire_bytes_per_token(HIDDEN, "bf16")
        mbs, n = args.micro_batches, args.rows
        self.send = [splits_of(rank, ranks, n, m) for m in range(mbs)]
        every = [None] * ranks
        dist.all_gather_object(every, self.send)
        self.recv = [[every[s][m][rank] for s in range(ranks)] for m in range(mbs)]
        g = torch.Generator(device=dev).manual_seed(rank)
        self.d_in = [torch.randint(0, 255, (n, self.b), dtype=torch.uint8, device=dev, generator=g) for _ in range(mbs)]
        self.d_out = [torch.empty(sum(r), self.b, dtype=torch.uint8, device=dev) for r in self.recv]
        self.c_in = [torch.randint(0, 255, (sum(r), self.v), dtype=torch.uint8, device=dev, generator=g)
                     for r in self.recv]
        self.c_out = [torch.empty(n, self.v, dtype=torch.uint8, device=dev) for _ in range(mbs)]
        self.bytes_sent = sum(n * self.b + sum(r) * self.v for r in self.recv)
        self.dispatch_bytes = mbs * n * self.b
        self.symmetric_bytes = mbs * (n * self.b + ranks * n * (self.b + self.v) + n * self.v)

    def bare(self, combine: bool = True) -> None:
        for m, (s, r) in enumerate(zip(self.send, self.recv, strict=True)):
            dist.all_to_all_single(self.d_out[m], self.d_in[m], r, s)
        if combine:
            for m, (s, r) in enumerate(zip(self.send, self.recv, strict=True)):
                dist.all_to_all_single(self.c_out[m], self.c_in[m], s, r)

    def counts(self) -> None:
        for m, s in enumerate(self.send):
            cs = torch.tensor(s, dtype=torch.int64).to(self.dev)
            cr = torch.empty_like(cs)
            dist.all_to_all_single(cr, cs)
            dist.all_to_all_single(self.d_out[m], self.d_in[m], cr.tolist(), s)  # host sync: the counts
        for m, (s, r) in enumerate(zip(self.send, self.recv, strict=True)):
            dist.all_to_all_single(self.c_out[m], self.c_in[m], s, r)


class Vdev:
    """The same buffers in NVSHMEM symmetric memory, sized for the worst case as the op requires."""

    def __init__(self, p: Patterns, group_name: str, flat: bool = False):
        """flat: the row buffers are views of flat uint8 symmetric buffers, as the transport's (`real.symm`)."""
        from torch.distributed import _symmetric_memory as symm

        self.p, self.group = p, group_name
        mbs, n, r, dev = len(p.send), p.args.rows, p.ranks, p.dev

        def empty(shape, dtype=torch.uint8):
            if flat and dtype == torch.uint8:
                t = symm.empty(shape[0] * shape[1], dtype=dtype, device=dev)
                symm.rendezvous(t, group=group_name)
                return t[:shape[0] * shape[1]].view(shape)
            t = symm.empty(shape, dtype=dtype, device=dev)
            symm.rendezvous(t, group=group_name)
            return t

        self.d_in = [empty((n, p.b)).copy_(x) for x in p.d_in]
        self.d_out = [empty((r * n, p.b)) for _ in range(mbs)]
        self.c_in = [empty((r * n, p.v)) for _ in range(mbs)]
        for t, x in zip(self.c_in, p.c_in, strict=True):
            t[:x.shape[0]].copy_(x)
        self.c_out = [empty((n, p.v)) for _ in range(mbs)]
        self.split = [empty(r, torch.int64).copy_(torch.tensor(s)) for s in p.send]
        self.d_so = [empty((2, r), torch.int64) for _ in range(mbs)]
        self.c_split = [empty(r, torch.int64) for _ in range(mbs)]
        self.c_so = [empty((2, r), torch.int64) for _ in range(mbs)]
        self.op = torch.ops.symm_mem.all_to_all_vdev

    def dispatch(self, m: int) -> None:
        self.op(self.d_in[m], self.d_out[m], self.split[m], self.d_so[m], self.group)

    def combine(self, m: int) -> None:
        self.c_split[m].copy_(self.d_so[m][0])  # results go back where the rows came from
        self.op(self.c_in[m], self.c_out[m], self.c_split[m], self.c_so[m], self.group)

    def run(self, combine: bool = True, host_reads: bool = False, copy_in: bool = False, h2d: bool = False) -> None:
        mbs = range(len(self.d_in))
        for m in mbs:
            if copy_in:  # the rows written into the symmetric input first, as the transport does
                self.d_in[m].copy_(self.p.d_in[m])
            if h2d:  # the splits copied from pinned host memory first, as the transport does
                self.split[m].copy_(torch.tensor(self.p.send[m]).pin_memory(), non_blocking=True)
            self.dispatch(m)
        if combine:
            for m in mbs:
                if host_reads:
                    self.d_so[m][0].tolist()  # host sync: the rows received
                if copy_in:
                    self.c_in[m][:self.p.c_in[m].shape[0]].copy_(self.p.c_in[m])
                self.combine(m)

    def capture(self) -> None:
        """One CUDA graph per micro-batch and phase, over the same symmetric buffers (warmed up eagerly first,
        on the side stream the capture uses)."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.run()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        self.graphs = []
        for m in range(len(self.d_in)):
            pair = (torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph())
            with torch.cuda.graph(pair[0], stream=side, capture_error_mode="thread_local"):
                self.dispatch(m)
            with torch.cuda.graph(pair[1], stream=side, capture_error_mode="thread_local"):
                self.combine(m)
            self.graphs.append(pair)
        torch.cuda.synchronize()

    def run_graphs(self, combine: bool = True, host_reads: bool = False) -> None:
        for d, _ in self.graphs:
            d.replay()
        if combine:
            for m, (_, c) in enumerate(self.graphs):
                if host_reads:
                    self.d_so[m][0].tolist()  # host sync: the rows received
                c.replay()

    def check(self, run=None) -> bool:
        """vdev moves what NCCL moves."""
        self.p.bare()
        for t in (*self.d_out, *self.c_out):
            t.zero_()
        (run or self.run)()
        torch.cuda.synchronize()
        ok = True
        for m, out in enumerate(self.p.d_out):
            ok &= self.d_so[m][0].tolist() == self.p.recv[m]
            ok &= torch.equal(self.d_out[m][:out.shape[0]], out) and torch.equal(self.c_out[m], self.p.c_out[m])
        return bool(ok)


def timed(fn, ranks: int, warmup: int, repeats: int) -> dict:
    """Medians of each rank (device, host issue time; every call on an idle GPU after a barrier), max over ranks."""
    dev_s, host_s = cuda_times_s(fn, warmup, repeats, before=lambda: (torch.cuda.synchronize(), dist.barrier()))
    every = [None] * ranks
    dist.all_gather_object(every, (dev_s, host_s))
    return {"s": max(e[0] for e in every), "host_issue_s": max(e[1] for e in every)}


def worker(args) -> int:
    place = rdist.init("nccl", 300.0)
    rank, ranks = place.rank, place.size
    dev = torch.device("cuda", torch.cuda.current_device())
    p = Patterns(args, rank, ranks, dev)
    rep = {"benchmark": "a2a_floor", "ranks": ranks, "gpu": torch.cuda.get_device_name(dev), "torch": torch.__version__,
           "rows_per_microbatch": args.rows, "micro_batches": args.micro_batches, "dispatch_row_bytes": p.b,
           "result_row_bytes": p.v, "vdev_group": args.group, "warmup": args.warmup, "repeats": args.repeats,
           "date": time.strftime("%Y-%m-%d")}
    every = [None] * ranks
    dist.all_gather_object(every, (p.bytes_sent, p.dispatch_bytes))
    sent, sent_dispatch = (sum(e[i] for e in every) / ranks for i in (0, 1))
    runs = {"bare": lambda: p.bare(), "counts": p.counts, "bare_dispatch": lambda: p.bare(combine=False)}
    from torch.distributed import _symmetric_memory as symm

    rep["nvshmem"] = bool(symm.is_nvshmem_available())
    if rep["nvshmem"]:
        os.environ.setdefault("NVSHMEM_SYMMETRIC_SIZE", str(2 * p.symmetric_bytes + (64 << 20)))  # the heap
        symm.set_backend("NVSHMEM")
        group = dist.group.WORLD if args.group == "world" else dist.new_group()
        v = Vdev(p, group.group_name)
        rep["vdev_equals_nccl"] = v.check()
        flat = Vdev(p, group.group_name, flat=True)
        rep["vdev_flat_equals_nccl"] = flat.check()
        runs["vdev_flat"] = flat.run
        try:
            v.capture()
            rep["vdev_graph_equals_nccl"] = v.check(v.run_graphs)
            runs.update({"vdev_graph": v.run_graphs, "vdev_graph_host": lambda: v.run_graphs(host_reads=True)})
        except (RuntimeError, torch.cuda.CudaError) as err:  # the op may not be capturable in this build
            rep["vdev_graph_error"] = str(err).splitlines()[0]
            torch.cuda.synchronize()
        runs.update({"vdev": v.run, "vdev_host": lambda: v.run(host_reads=True),
                     "vdev_copyin": lambda: v.run(copy_in=True), "vdev_h2d": lambda: v.run(h2d=True),
                     "vdev_dispatch": lambda: v.run(combine=False)})
    rep["patterns"] = {name: timed(fn, ranks, args.warmup, args.repeats) for name, fn in runs.items()}
    for name, r in rep["patterns"].items():
        moved = sent_dispatch if name.endswith("dispatch") else sent
        r["busbw_GBps"] = moved / r["s"] * (ranks - 1) / ranks / 1e9
    for name, r in rep["patterns"].items():
        ref = rep["patterns"]["bare_dispatch" if name.endswith("dispatch") else "bare"]
        r["vs_bare"] = ref["s"] / r["s"]
    if rank == 0:
        print(f"a2a_floor: {ranks} x {rep['gpu']}, torch {rep['torch']}, {args.micro_batches} x {args.rows} rows "
              f"of {p.b} B out, {p.v} B back; NVSHMEM {rep['nvshmem']}"
              + (f", vdev equals NCCL: {rep['vdev_equals_nccl']}" if rep["nvshmem"] else "")
              + (f", graphs equal NCCL: {rep['vdev_graph_equals_nccl']}" if "vdev_graph_equals_nccl" in rep else "")
              + (f", graphs failed: {rep['vdev_graph_error']}" if "vdev_graph_error" in rep else ""))
        for name, r in rep["patterns"].items():
            print(f"{name:14s} {r['s'] * 1e3:8.3f} ms  host {r['host_issue_s'] * 1e3:7.3f} ms  "
                  f"bus {r['busbw_GBps']:7.1f} GB/s  {100 * r['vs_bare']:6.1f}% of bare")
        write_json_atomic(args.out, rep)
    dist.barrier()
    rdist.finish()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON report path (written by rank 0)")
    p.add_argument("--rows", type=int, default=4096, help="rows a rank sends per micro-batch (default 4096)")
    p.add_argument("--micro-batches", type=int, default=2)
    p.add_argument("--row-bytes", type=int, help="dispatch row bytes (default: the runtime's, emu.dispatch.row_bytes "
                   "of the paper model: 7408)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--group", choices=("world", "new"), default="world",
                   help="vdev's process group: the default one, or a new group of every rank (as the nvshmem "
                   "transport uses: one per phase)")
    p.add_argument("--ranks", type=int, help="GPUs when starting torchrun here (default: every GPU)")
    args = p.parse_args(argv)
    if args.rows < 2 or args.rows % 2 or args.micro_batches < 1:
        p.error(f"--rows must be even and at least 2 (got {args.rows}), --micro-batches at least 1")
    if rdist.place() is not None:
        return worker(args)
    ranks = args.ranks or torch.cuda.device_count()
    if ranks < 2:
        raise SystemExit("a2a_floor: needs at least 2 GPUs")
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", __file__, *argv]
    env = {**os.environ, **rdist.NCCL_SAFE_ENV,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL).returncode


if __name__ == "__main__":
    raise SystemExit(main())
