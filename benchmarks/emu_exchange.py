"""The emulator's shard exchange against OSU-style Isend/Irecv bandwidth, measured in the same run.

    .venv/bin/mpiexec -n 2 .venv/bin/python benchmarks/emu_exchange.py [--quick]

Shape letters: R ranks, N rows sent by a rank, B bytes per row (the `paper` model's dispatch row: 2K = 16
int32 meta columns, 7,168 FP8 bytes, 56 float32 scales: 7,456 B).

For each shard size S (bytes of rows one rank sends to each other rank) it measures
- emu: one dispatch exchange through `emu.dispatch` exactly as a MoE layer runs it: one Isend of its rows
  to each peer, the peers' shards received by matched probe, each taken in as the runtime does
  (`shard_in`), completion through the Transport's bounded waits; time from a barrier to the last shard
  in, slowest rank; bytes per direction per second;
- osu_bibw: OSU bidirectional bandwidth (both ranks post a window of 64 Irecvs and 64 Isends of S bytes,
  Waitall), bytes per direction per second (emu.calibrate.osu_bibw_GBps), between buffers from the
  transport's pool as the exchange's are (page size changes large copies by up to 2x here). With 2 ranks
  both patterns move S bytes each way per shard;
and prints the ratio (best and median of repeats; at each size the emu repeats run before the OSU ones),
and, for context, one prepared Irecv + Isend each way without the protocol (median).
The issue's target: emu >= 70% of osu_bibw for S >= 1 MB.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch
from mpi4py import MPI

from emu import dispatch as dp
from emu.calibrate import WINDOW
from emu.mpi_transport import MPITransport

TOP_K = 8
ROW_BYTES = dp.row_bytes(7168, "fp8", TOP_K)  # paper model: 2K meta columns, 7,168 FP8 bytes, 56 scales
TIMEOUT_S = 60.0


def synthetic_plan(key: int, rows_per_peer: int, ranks: int) -> dp.SendPlan:
    """rows_per_peer rows to every rank (itself included, handled locally as in a run)."""
    n = rows_per_peer * ranks
    counts_R = np.full(ranks, rows_per_peer, dtype=np.int64)
    return dp.SendPlan(key=key, token_N=torch.arange(n), token_dev_N=torch.arange(n), counts_R=counts_R,
                       requests_RS=np.zeros((ranks, 1), dtype=np.int64),
                       offsets_R1=np.concatenate([[0], np.cumsum(counts_R)]),
                       meta_TC=torch.full((n, 2 * TOP_K), -1, dtype=torch.int32))


def emu_exchange_s(tr: MPITransport, rows_per_peer: int, key: int) -> float:
    """One dispatch exchange on every rank; seconds from the barrier until this rank has every shard."""
    plan = synthetic_plan(key, rows_per_peer, tr.size)
    n = len(plan.token_N)
    rows_NB = tr.take_buffer(n * ROW_BYTES).view(n, ROW_BYTES)  # pack_rows fills a pooled buffer in a run
    ex = dp.Exchange(key, plan, hidden=7168, dispatch_dtype="fp8", combine_dtype="bf16")
    tr.comm.Barrier()  # as osu_bibw_window_s: a spinning barrier (the bounded one sleeps while it waits)
    start = MPI.Wtime()
    pending = dp.post_dispatch(tr, ex, rows_NB)  # the combine's result receives are not part of this
    done = tr.test_some(pending)
    while True:
        for i in done:
            if pending[i].meta[0] == "shard":  # as the runtime takes a shard in
                dp.shard_in(tr, ex, pending[i].meta[2], pending[i].buf)
        if all(p.done for p in pending):
            break
        done = tr.wait_any(pending, TIMEOUT_S, "exchange shards")
    elapsed = MPI.Wtime() - start
    tr.give_buffer(rows_NB)
    for src, rows in ex.shard_bufs.items():  # the runtime hands these back after computing them
        if src != tr.rank:
            tr.give_buffer(rows)
    return elapsed


def osu_bibw_window_s(comm, send, recv, nbytes: int) -> float:
    """One osu_bibw iteration between ranks 0 and 1: a window of WINDOW Irecvs and Isends of `nbytes` each
    way, Waitall; seconds from a barrier, slowest of the two."""
    peer = 1 - comm.rank
    comm.Barrier()
    start = MPI.Wtime()
    # as OSU's osu_bibw.c: every message of the window uses the same send and receive buffer
    reqs = [comm.Irecv(recv[:nbytes], peer, 9) for _ in range(WINDOW)]
    reqs += [comm.Isend(send[:nbytes], peer, 9) for _ in range(WINDOW)]
    MPI.Request.Waitall(reqs)
    return comm.allreduce(MPI.Wtime() - start, op=MPI.MAX)


def raw_exchange_s(comm, send, recv) -> float:
    """The same pattern without the protocol: one prepared Irecv and one Isend each way, Waitall."""
    peer = 1 - comm.rank
    comm.Barrier()
    start = MPI.Wtime()
    MPI.Request.Waitall([comm.Irecv(recv, peer, 10), comm.Isend(send, peer, 10)])
    return comm.allreduce(MPI.Wtime() - start, op=MPI.MAX)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    if comm.size != 2:
        raise SystemExit("run with mpiexec -n 2 (osu_bibw is a two-rank benchmark)")
    tr = MPITransport(comm)
    sizes = [1 << 16, 1 << 20, 1 << 22] if args.quick else [1 << p for p in range(16, 25, 2)]
    if comm.rank == 0:
        print(f"# emu exchange vs osu_bibw, 2 ranks, {ROW_BYTES} B rows, window {WINDOW}, "
              f"{args.repeats} repeats each; best (median) GB/s per direction")
        print(f"{'shard bytes':>12} {'emu GB/s':>16} {'osu_bibw GB/s':>16} {'emu/osu best':>13} {'(median)':>9} "
              f"{'raw 1-msg GB/s':>15}")
    key = 0
    for size in sizes:
        rows = max(1, size // ROW_BYTES)
        payload = rows * ROW_BYTES
        # the same kind of buffers as the exchange's (the transport's pool: power-of-two capacities, huge
        # pages from 4 MB on), so that page size does not decide the ratio
        send, recv = tr.take_buffer(payload).numpy(), tr.take_buffer(payload).numpy()
        send[:] = 1
        emu_s, osu_s, raw_s = [], [], []
        for rep in range(args.repeats + 2):  # the first two warm up
            e = comm.allreduce(emu_exchange_s(tr, rows, key % dp.MAX_KEY), op=MPI.MAX)
            key += 1
            if rep > 1:
                emu_s.append(e)
        for rep in range(args.repeats + 2):
            o = osu_bibw_window_s(comm, send, recv, payload) / WINDOW
            r = raw_exchange_s(comm, send, recv)
            if rep > 1:
                osu_s.append(o)
                raw_s.append(r)
        best = (payload / min(emu_s) / 1e9, payload / min(osu_s) / 1e9)
        med = (payload / statistics.median(emu_s) / 1e9, payload / statistics.median(osu_s) / 1e9)
        if comm.rank == 0:
            print(f"{payload:>12,} {best[0]:>7.3f} ({med[0]:>6.3f}) {best[1]:>7.3f} ({med[1]:>6.3f}) "
                  f"{best[0] / best[1]:>13.0%} {med[0] / med[1]:>9.0%} "
                  f"{payload / statistics.median(raw_s) / 1e9:>15.3f}", flush=True)


if __name__ == "__main__":
    main()
