"""Bookkeeping of the emulator: the share of step time a rank spends outside compute spans, MPI calls and
bounded waits (Python planning, indexing, the event loop), for the `tiny` model.

    .venv/bin/python benchmarks/emu_bookkeeping.py [--ranks 4] [--tokens 256 1024]

Each point is one `moetb run --backend emu` job (the launcher starts the ranks); the figure per rank comes
from the Result's extra.bookkeeping_fraction_per_rank (emu.report.bookkeeping_fraction) over the recorded
steps. The issue's target: <= 10% of step time for `tiny` at 4 ranks. With more ranks than cores, a rank
is also descheduled between spans, which this figure counts as bookkeeping (an upper bound).
"""

from __future__ import annotations

import argparse
import os
import statistics

from emu.backend import run
from moe.spec import load_scenario


def scenario(ranks: int, tokens: int, micro_batches: int):
    return load_scenario({
        "name": f"bookkeeping-{ranks}r-{tokens}t", "model": {"preset": "tiny"},
        "cluster": {"preset": "cpu-host", "nodes": 1, "gpus_per_node": ranks},
        "placement": {"strategy": "contiguous"},
        "workload": {"tokens_per_gpu": tokens, "context_len": tokens},
        "schedule": {"micro_batches": micro_batches, "comm": "direct"},
        "emu": {"warmup": 2, "repeats": 7}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--micro-batches", type=int, default=2)
    args = parser.parse_args()
    print(f"# tiny, {args.ranks} ranks on {os.cpu_count()} cores, {args.micro_batches} micro-batches")
    print(f"{'tokens/rank':>11} {'step ms':>9} {'bookkeeping % per rank':>36} {'mpi calls %':>12} {'waits %':>8}")
    for tokens in args.tokens:
        r = run(scenario(args.ranks, tokens, args.micro_batches), ranks=args.ranks).result
        e = r.extra
        steps = [sum(s) for s in e["step_s_per_rank"]]
        mpi = [m / s for m, s in zip(e["mpi_s_per_rank"], steps, strict=True)]
        waits = [(p.get("wait_dispatch", 0) + p.get("wait_combine", 0)) / s
                 for p, s in zip(e["phase_s_per_rank"], steps, strict=True)]
        book = " ".join(f"{f:5.1%}" for f in e["bookkeeping_fraction_per_rank"])
        print(f"{tokens:>11} {r.step_time_s * 1e3:>9.2f} {book:>36} {statistics.mean(mpi):>12.1%} "
              f"{statistics.mean(waits):>8.1%}", flush=True)


if __name__ == "__main__":
    main()
