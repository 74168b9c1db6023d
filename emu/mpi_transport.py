"""The Transport over mpi4py: Isend/Irecv of host byte buffers, matched probes (improbe) for shards of
unknown size, Testsome for progress, bounded waits.

Every buffer handed to MPI is a contiguous uint8 torch tensor in host memory, passed to MPI as a NumPy
view of the same memory (no copy). `Pending` keeps the tensor alive until the request completes.
Collectives with a timeout are built from non-blocking pieces (Ibarrier; improbe + pickled messages),
since a blocking MPI collective cannot be interrupted.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from itertools import accumulate
from typing import Any, NoReturn

import numpy as np
import torch
from mpi4py import MPI

from emu.transport import Pending, Transport, poll_until

EMPTY = torch.empty(0, dtype=torch.uint8)
"""The buffer of an empty probed message."""
GATHER_TAG = 32000
BCAST_TAG = 32001
"""Tags of the pickled collectives; shard tags stay below them (`emu.dispatch.tag`)."""


class MPITransport(Transport):
    name = "mpi"

    def __init__(self, comm: MPI.Comm | None = None):
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.device = torch.device("cpu")
        self.messages_posted = 0
        self._probing: dict[int, dict[int, Pending]] = {}
        """Probed receives not matched yet: tag -> source -> Pending."""
        self._status = MPI.Status()
        self._peers = super().peers()

    # ---------------------------------------------------------------------------- point to point
    # Kept lean: these run on every exchange's critical path, where each microsecond of Python stands
    # beside the transfer (benchmarks/emu_exchange.py)
    def _account(self, start: float) -> None:
        if not self._waiting:
            self.busy_s += MPI.Wtime() - start

    def isend_split(self, bufs_B, splits_PR, tags, meta=(), empty=False) -> list[Pending]:
        start, comm, posted = MPI.Wtime(), self.comm, []
        for buf, split, t in zip(bufs_B, splits_PR, tags, strict=True):
            view = self.host_array(buf)  # slicing a NumPy view costs a fraction of slicing the tensor
            ends = list(accumulate(split.tolist()))  # a third of np.cumsum(...).tolist() on a few ranks
            for dst in self._peers:
                a, b = ends[dst - 1] if dst else 0, ends[dst]
                if a < b or empty:
                    # hand-off to MPI: a byte range of a complete host buffer (Transport.to_wire),
                    # untouched until this send completes
                    posted.append(Pending(comm.Isend(view[a:b], dst, t), buf, dst, t, (*meta, dst)))
        self.messages_posted += len(posted)
        self._account(start)
        return posted

    def peers(self) -> list[int]:
        return list(self._peers)  # computed once: it is on every exchange's critical path

    def irecv_split(self, nbytes_PR, tags, meta=()) -> tuple[list[dict[int, torch.Tensor]], list[Pending]]:
        start, comm, posted = MPI.Wtime(), self.comm, []
        out: list[dict[int, torch.Tensor]] = [{} for _ in nbytes_PR]
        for i, (nbytes_R, t) in enumerate(zip(nbytes_PR, tags, strict=True)):
            for src, n in enumerate(np.asarray(nbytes_R).tolist()):
                if n and src != self.rank:
                    buf = out[i][src] = self.take_buffer(n)
                    # hand-off to MPI: the buffer belongs to it until this receive completes
                    posted.append(Pending(comm.Irecv(self.host_array(buf), src, t), buf, src, t, (*meta, src)))
        self._account(start)
        return out, posted

    def irecv_probed(self, srcs, tag, meta=()) -> list[Pending]:
        posted = [Pending(MPI.Request(), None, src, tag, (*meta, src)) for src in srcs]  # null until matched
        waiting = self._probing.setdefault(tag, {})
        for p in posted:
            if p.peer in waiting:
                raise RuntimeError(f"rank {self.rank}: a second probed receive from rank {p.peer} with tag {tag} "
                                   "before the first matched")
            waiting[p.peer] = p
        if not waiting:
            del self._probing[tag]
        return posted

    def _match_probes(self) -> None:
        """Match the messages of probed receives that have arrived: each gets a pooled buffer of its size
        and an Irecv (a large message's transfer starts here). Probed per source, not ANY_SOURCE: MPI keeps
        the messages of one source and tag in order, so a fast peer's message of the next step (the same
        tag) can never be taken for this one."""
        status = self._status
        for tag in list(self._probing):
            if not self.comm.iprobe(MPI.ANY_SOURCE, tag):  # one call while nothing of this tag is in
                continue
            waiting = self._probing[tag]
            for src in list(waiting):
                msg = self.comm.improbe(src, tag, status)
                if msg is None:
                    continue
                p = waiting.pop(src)
                n = status.Get_count(MPI.BYTE)
                # hand-off to MPI: the buffer belongs to it until this receive completes
                p.buf = self.take_buffer(n) if n else EMPTY
                p.handle = msg.Irecv(self.host_array(p.buf))
            if not waiting:
                del self._probing[tag]

    def test_some(self, pending: Sequence[Pending]) -> list[int]:
        # Kept lean: MPI advances a transfer by a step per progress call, so a transfer's latency is a
        # number of polls, and each poll's Python cost multiplies it. Completed requests (and probed
        # receives not matched yet) are null handles, which Testsome skips.
        start = 0.0 if self._waiting else MPI.Wtime()
        if self._probing:
            self._match_probes()
        done = MPI.Request.Testsome([p.handle for p in pending])
        if done:
            for i in done:
                pending[i].done = True
        if not self._waiting:
            self.busy_s += MPI.Wtime() - start
        return done or []

    # ------------------------------------------------------------------------------ collectives
    def barrier(self, timeout_s: float) -> None:
        req = self.comm.Ibarrier()
        poll_until(lambda: True if req.Test() else None, timeout_s, "a barrier (another rank is stuck)",
                   self.rank, self.spin_s)

    def _recv_pickled(self, src: int, tag: int, timeout_s: float, what: str) -> Any:
        msg = poll_until(lambda: self.comm.improbe(src, tag), timeout_s, what, self.rank)
        return msg.recv()

    def gather(self, obj: Any, timeout_s: float) -> list[Any] | None:
        if self.rank != 0:
            req = self.comm.isend(obj, 0, GATHER_TAG)
            poll_until(lambda: True if req.Test() else None, timeout_s, "rank 0 to collect results", self.rank)
            return None
        out = [obj]
        for src in range(1, self.size):
            out.append(self._recv_pickled(src, GATHER_TAG, timeout_s, f"results from rank {src}"))
        return out

    def bcast(self, obj: Any, timeout_s: float) -> Any:
        if self.rank == 0:
            reqs = [self.comm.isend(obj, dst, BCAST_TAG) for dst in range(1, self.size)]
            poll_until(lambda: True if MPI.Request.Testall(reqs) else None, timeout_s,
                       "every rank to receive a broadcast", self.rank)
            return obj
        return self._recv_pickled(0, BCAST_TAG, timeout_s, "a broadcast from rank 0")

    def abort(self, code: int) -> NoReturn:
        sys.stderr.flush()
        sys.stdout.flush()
        self.comm.Abort(code)
        raise SystemExit(code)  # not reached: MPI_Abort ends the process

    def now(self) -> float:
        return MPI.Wtime()
