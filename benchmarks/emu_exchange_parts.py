"""Where the time of one emulator exchange goes (2 ranks), the figures behind benchmarks/README.md's exchange
section.

    .venv/bin/mpiexec -n 2 .venv/bin/python benchmarks/emu_exchange_parts.py [--bytes 1043840] [--repeats 50]

Per rank, median microseconds over the repeats (after 10 warm-up ones), each from a barrier:
- protocol: the probed protocol's MPI calls alone (Isend; iprobe until the peer's message is seen;
  improbe; Irecv into a buffer of the probed size, which copies the message inside the call; Testall),
  against one prepared Irecv + Isend pair (raw);
- exchange: `emu.dispatch.post_dispatch`, then `test_some` polled in a busy loop until every shard is in
  and every send done (`emu_exchange.py` also takes each shard in and waits through the transport's bounded
  waits), split into post (post_dispatch) and the longest poll (the copy), run back
  to back ("none") and right after each of: an OSU window of 64 messages each way ("osu"), a raw pair
  ("raw"), writing the OSU buffers ("touch"): what the exchange costs when other transfers ran just before.
"""

from __future__ import annotations

import argparse
import statistics

from emu_exchange import ROW_BYTES, osu_bibw_window_s, raw_exchange_s, synthetic_plan
from mpi4py import MPI

from emu import dispatch as dp
from emu.mpi_transport import MPITransport

WARMUP = 10


def protocol_us(comm, send, recv, n: int, repeats: int) -> dict[str, float]:
    peer, st, out = 1 - comm.rank, MPI.Status(), {"protocol": [], "of it Irecv": [], "raw": []}
    for rep in range(WARMUP + repeats):
        comm.Barrier()
        start = MPI.Wtime()
        sreq = comm.Isend(send[:n], peer, 1)
        while not comm.iprobe(MPI.ANY_SOURCE, 1):
            pass
        msg = comm.improbe(peer, 1, st)
        t0 = MPI.Wtime()
        rreq = msg.Irecv(recv[:st.Get_count(MPI.BYTE)])
        t1 = MPI.Wtime()
        while not MPI.Request.Testall([sreq, rreq]):
            pass
        end = MPI.Wtime()
        raw = raw_exchange_s(comm, send[:n], recv[:n])
        if rep >= WARMUP:
            out["protocol"].append(end - start)
            out["of it Irecv"].append(t1 - t0)
            out["raw"].append(raw)
    return {k: statistics.median(v) * 1e6 for k, v in out.items()}


def exchange_us(tr: MPITransport, send, recv, rows: int, before: str, repeats: int, key0: int) -> dict[str, float]:
    comm, out = tr.comm, {"post": [], "longest poll": [], "total": []}
    for rep in range(WARMUP + repeats):
        if before == "osu":
            osu_bibw_window_s(comm, send, recv, rows * ROW_BYTES)
        elif before == "raw":
            raw_exchange_s(comm, send, recv)
        elif before == "touch":
            send[:] = 2
            recv[:] = 3
        plan = synthetic_plan(key0 + rep, rows, tr.size)
        n = len(plan.token_N)
        rows_NB = tr.take_buffer(n * ROW_BYTES).view(n, ROW_BYTES)
        ex = dp.Exchange(key0 + rep, plan, hidden=7168, dispatch_dtype="fp8", combine_dtype="bf16")
        comm.Barrier()
        start = MPI.Wtime()
        pending = dp.post_dispatch(tr, ex, rows_NB)
        posted, longest = MPI.Wtime(), 0.0
        while not all(p.done for p in pending):
            t0 = MPI.Wtime()
            tr.test_some(pending)
            longest = max(longest, MPI.Wtime() - t0)
        end = MPI.Wtime()
        for p in pending:
            if p.meta[0] == "shard":
                tr.give_buffer(p.buf)
        tr.give_buffer(rows_NB)
        if rep >= WARMUP:
            out["post"].append(posted - start)
            out["longest poll"].append(longest)
            out["total"].append(end - start)
    return {k: statistics.median(v) * 1e6 for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", type=int, default=(1 << 20) // ROW_BYTES * ROW_BYTES)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    if comm.size != 2:
        raise SystemExit("run with mpiexec -n 2")
    tr = MPITransport(comm)
    rows = max(1, args.bytes // ROW_BYTES)
    n = rows * ROW_BYTES
    send, recv = tr.take_buffer(n).numpy(), tr.take_buffer(n).numpy()
    send[:] = 1
    lines = [f"rank {comm.rank}, {n:,} B, median us of {args.repeats}"]
    lines.append("  " + "  ".join(f"{k} {v:.1f}" for k, v in protocol_us(comm, send, recv, n, args.repeats).items()))
    for i, before in enumerate(("none", "osu", "raw", "touch")):
        parts = exchange_us(tr, send, recv, rows, before, args.repeats, 1000 * i)
        lines.append(f"  exchange after {before:5s}: " + "  ".join(f"{k} {v:.1f}" for k, v in parts.items()))
    for text in comm.gather("\n".join(lines), 0) or []:
        print(text, flush=True)


if __name__ == "__main__":
    main()
