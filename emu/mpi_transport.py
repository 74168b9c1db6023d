"""The Transport over mpi4py: Isend/Irecv of host byte buffers, Testsome for progress, bounded waits.

Every buffer handed to MPI is a contiguous uint8 torch tensor in host memory, passed to MPI as a NumPy
view of the same memory (no copy). `Pending` keeps the tensor alive until the request completes.
Collectives with a timeout are built from non-blocking pieces (Ibarrier; improbe + pickled messages),
since a blocking MPI collective cannot be interrupted.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import numpy as np
import torch
from mpi4py import MPI

from emu.transport import CountsExchange, Pending, Transport, poll_until

GATHER_TAG = 32000
BCAST_TAG = 32001
"""Tags of the pickled collectives; shard tags stay below them (`emu.dispatch.tag`)."""


def _mpi_buffer(buf_B):
    """A NumPy view of a host uint8 tensor (numpy() refuses device tensors), or a NumPy byte array as is."""
    if isinstance(buf_B, np.ndarray):
        if buf_B.dtype != np.uint8 or not buf_B.flags.c_contiguous:
            raise ValueError(f"MPI buffers must be contiguous uint8 arrays, got {buf_B.dtype}")
        return buf_B
    if buf_B.dtype != torch.uint8 or not buf_B.is_contiguous():
        raise ValueError(f"MPI buffers must be contiguous uint8 host tensors, got {buf_B.dtype}")
    return buf_B.numpy()


class MPITransport(Transport):
    name = "mpi"

    def __init__(self, comm: MPI.Comm | None = None):
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.device = torch.device("cpu")
        self.messages_posted = 0

    # ---------------------------------------------------------------------------- point to point
    def wire_view(self, buf: torch.Tensor) -> np.ndarray:
        """NumPy view of a host tensor: slicing it costs a fraction of slicing the tensor."""
        return buf.numpy()

    def _account(self, start: float) -> None:
        if not self._waiting:
            self.busy_s += MPI.Wtime() - start

    def isend(self, buf_B, dst, tag, meta=None) -> Pending:
        start = MPI.Wtime()
        self.messages_posted += 1
        # hand-off to MPI: buf_B is complete in host memory (see Transport.to_wire) and stays untouched
        p = Pending(self.comm.Isend(_mpi_buffer(buf_B), dst, tag), buf_B, dst, tag, meta)
        self._account(start)
        return p

    def irecv(self, buf_B, src, tag, meta=None) -> Pending:
        start = MPI.Wtime()
        # hand-off to MPI: buf_B is owned by MPI until this request completes
        p = Pending(self.comm.Irecv(_mpi_buffer(buf_B), src, tag), buf_B, src, tag, meta)
        self._account(start)
        return p

    def test_some(self, pending: Sequence[Pending]) -> list[int]:
        # Kept lean: MPI advances a transfer by a step per progress call, so a transfer's latency is a
        # number of polls, and each poll's Python cost multiplies it. Completed requests are null
        # handles, which Testsome skips.
        start = 0.0 if self._waiting else MPI.Wtime()
        done = MPI.Request.Testsome([p.handle for p in pending])
        if done:
            for i in done:
                pending[i].done = True
        if not self._waiting:
            self.busy_s += MPI.Wtime() - start
        return done or []

    def exchange_counts(self, send_RX, key: int) -> CountsExchange:
        """As Transport.exchange_counts, on NumPy rows directly (no tensor views): the counts exchange
        is on every layer's critical path, and building torch views costs more than the MPI calls."""
        send_RX = np.ascontiguousarray(send_RX, dtype=np.int64)
        recv_RX = np.zeros_like(send_RX)
        recv_RX[self.rank] = send_RX[self.rank]
        ex = CountsExchange(key=key, send_RX=send_RX, recv_RX=recv_RX)
        start = MPI.Wtime()
        for peer in self.peers():
            # hand-off to MPI: rows of the host arrays, kept alive by Pending until completion
            ex.pending.append(Pending(self.comm.Irecv(recv_RX[peer], peer, key), recv_RX, peer, key, "counts"))
            ex.pending.append(Pending(self.comm.Isend(send_RX[peer], peer, key), send_RX, peer, key, "counts"))
        self.messages_posted += self.size - 1
        self._account(start)
        return ex

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
