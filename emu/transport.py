"""The Transport: what the dispatch/combine protocol (`emu.dispatch`) needs from a communication library.

`emu.mpi_transport.MPITransport` implements it over mpi4py; `real/` implements it over NCCL or gloo
(torch.distributed) and reuses the protocol and runtime unchanged. Buffers are flat, contiguous uint8
torch tensors on `Transport.device` (the host for MPI: the usual Open MPI build is not CUDA-aware).

Shape letters: R ranks, X per-rank count columns (expert slots per rank), B bytes of a buffer.

Contract the protocol keeps, so that tag-less transports (NCCL matches point-to-point calls per peer in
issue order) work too:
- `exchange_counts` (grouped transports) is called for the same (layer, micro-batch) keys in the same
  order on every rank;
- for each ordered pair of ranks, sends and receives of shards are posted in the same order on both ends
  (per (layer, micro-batch) key, dispatch shard before its combine result).
A message transport (MPI) receives a dispatch shard of unknown size by a matched probe (`irecv_probed`):
every peer sends one message per (layer, micro-batch), empty when it has no rows, so no counts round trip
comes before the data moves.
Every wait is bounded: a transport raises `WaitTimeout` naming what it waited for, and the runtime then
aborts the whole job (`emu.faults`).

The protocol sends the shards of one (layer, micro-batch) through `isend_split` (a buffer split by rank)
and receives them through `irecv_probed` on message transports (MPI: one message per peer, sized by a
matched probe) or `irecv_split` on grouped ones (sizes from the counts exchange). A `grouped` transport
(real/: NCCL or gloo) moves them as one collective per direction instead (`all_to_all_single` or
`batch_isend_irecv`), own rank's part included; the runtime then computes a (layer, micro-batch)'s shards
together and starts layers in key order (`emu.runtime`). A transport whose completions are ordered on a
device stream rather than observed by the host (NCCL) reports an operation done once it is enqueued;
`ready(buffers)` then orders the caller's stream after the transfers that fill those buffers.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import numpy as np
import torch

from moe.errors import RunFailure

T = TypeVar("T")

SPIN_S = 2e-4
"""How long a waiting rank polls without sleeping (yielding the core between polls). MPI libraries move
large messages only inside their calls (the progress engine), so a sleeping rank stalls its transfers;
spinning keeps them moving and latency low. After SPIN_S the rank sleeps, which frees the core when ranks
are oversubscribed (16 ranks on 2 cores) or a peer is slow. (Yielding between polls instead measured 2-5x
slower exchanges on a loaded host: a yield gives up a whole time slice.) Measured on the 2-core CI box,
2 ranks (`benchmarks/emu_exchange.py`, `tiny` prefill steps): spinning 5 ms slowed the other rank's
compute by about a third (a 256-token step 80 ms against 54 ms with 0.2 ms), while 0.2 ms kept the 1 MB
exchange at the 5 ms figure (37% of OSU) and the 4 MB one within 10% of it; not spinning at all lost a
third of the 4 MB exchange's median bandwidth."""
SLEEP_MIN_S = 20e-6
SLEEP_MAX_S = 1e-3
"""Sleep between polls grows geometrically from SLEEP_MIN_S to SLEEP_MAX_S while nothing completes, so an
idle rank costs little CPU and notices a completion within about 1 ms."""


MIN_POOLED_BYTES = 4096
"""Smallest pooled buffer (one page)."""


class WaitTimeout(RunFailure):
    """A bounded wait ran out: names the rank, what it waited for and for how long."""


@dataclass(slots=True)
class Pending:
    """One posted non-blocking operation. Holds its buffer so the buffer lives until completion."""

    handle: Any
    buf: torch.Tensor
    peer: int
    tag: int
    meta: Any = None
    done: bool = False


def poll_until(test: Callable[[], T | None], timeout_s: float, what: str, rank: int, spin_s: float = SPIN_S) -> T:
    """Call `test` until it returns something other than None, at most `timeout_s` seconds (busy polls for
    `spin_s`, then sleeps with back-off; constants above). Raises WaitTimeout naming the rank and `what`."""
    start = time.monotonic()
    sleep_s = SLEEP_MIN_S
    while True:
        out = test()
        if out is not None:
            return out
        waited = time.monotonic() - start
        if waited > timeout_s:
            raise WaitTimeout(f"rank {rank}: timed out after {timeout_s:g} s waiting for {what}")
        if waited < spin_s:
            continue  # busy poll: a yield hands the core to any runnable process for a whole time slice
        else:
            time.sleep(sleep_s)
            sleep_s = min(SLEEP_MAX_S, sleep_s * 2)


class Transport(ABC):
    """Non-blocking point-to-point byte shards, count exchange, bounded waits, and a few collectives."""

    rank: int
    size: int
    device: torch.device
    """Where buffers handed to this transport must live (host memory for MPI)."""
    name: str = "transport"
    spin_s: float = SPIN_S
    """Busy-poll time of a wait before sleeping; the job sets 0 when its ranks outnumber the cores."""
    busy_s: float = 0.0
    """Seconds spent inside the library's calls outside bounded waits (posting, testing)."""
    grouped: bool = False
    """Shards of one (layer, micro-batch) move as one collective per direction (see the module docstring)."""
    device_splits: bool = False
    """A grouped transport whose collectives take their splits on the device (NVSHMEM): a dispatch moves as
    soon as it is sent, before the receiver knows its sizes; the receiver reads the counts when it needs
    them (`take_counts`, then `irecv_split` of those sizes), sent beside the rows (`post_counts`) or
    derived from them."""
    _waiting: bool = False

    # ---------------------------------------------------------------------------- point to point
    @abstractmethod
    def isend_split(self, bufs_B: Sequence[torch.Tensor], splits_PR: Sequence[np.ndarray], tags: Sequence[int],
                    meta: tuple = (), empty: bool = False) -> list[Pending]:
        """Send part r of each flat uint8 buffer bufs_B[i] (splits_PR[i][r] bytes, parts in rank order) to
        rank r; the caller leaves the buffers untouched until the sends complete. Message transports skip
        this rank's own part (the protocol keeps it local) and empty parts (unless `empty`: then every peer
        gets a message), and post one send per (peer, buffer); each Pending's meta is (*meta, peer). A
        grouped transport sends every part, its own included, in one collective."""

    @abstractmethod
    def irecv_split(self, nbytes_PR: Sequence[np.ndarray], tags: Sequence[int],
                    meta: tuple = ()) -> tuple[list[dict[int, torch.Tensor]], list[Pending]]:
        """Receive nbytes_PR[i][r] bytes of buffer kind i from every rank r. Returns, per kind, rank ->
        flat uint8 buffer, and the posted operations (meta (*meta, peer)). Message transports skip this
        rank and empty parts (one pooled buffer and one receive per (peer, kind)); a grouped transport
        returns adjacent views of one buffer per kind, in rank order, its own part included. A transport
        whose receive buffer pads its rows (`real.transport`'s nvshmem mode) returns [rows, row bytes] views
        of it instead of flat bytes."""

    def irecv_probed(self, srcs: Sequence[int], tag: int, meta: tuple = ()) -> list[Pending]:
        """Receive one message of any size with `tag` from each of `srcs` (message transports): each
        Pending gets its buffer (`buf`, exactly the message's bytes) once a probe matched the message;
        meta (*meta, src)."""
        raise NotImplementedError(f"{self.name}: a grouped transport sizes its receives by exchange_counts")

    def ready(self, *bufs: torch.Tensor) -> None:
        """Make the caller's next work (host code, or the current device stream) see the data that completed
        receives wrote into `bufs` (buffers from `irecv_split`; others are ignored). Message transports
        report completion when the data is there: nothing to do."""
        return None

    @abstractmethod
    def test_some(self, pending: Sequence[Pending]) -> list[int]:
        """Indices of the operations that completed since the last call (marks them done); never
        blocks. Calling it also drives the library's progress for everything in flight."""

    def wait_any(self, pending: Sequence[Pending], timeout_s: float, what: str) -> list[int]:
        """Block (bounded) until at least one operation completes; returns the indices that did."""
        if all(p.done for p in pending):
            raise ValueError(f"rank {self.rank}: wait_any on {what}: nothing is in flight")
        self._waiting = True
        try:
            return poll_until(lambda: self.test_some(pending) or None, timeout_s, what, self.rank, self.spin_s)
        finally:
            self._waiting = False

    def wait_all(self, pending: Sequence[Pending], timeout_s: float, what: str) -> None:
        """Block (bounded) until every operation has completed."""
        def test():
            self.test_some(pending)
            return True if all(p.done for p in pending) else None
        self._waiting = True
        try:
            poll_until(test, timeout_s, what, self.rank, self.spin_s)
        finally:
            self._waiting = False

    # --------------------------------------------------------------------------------- counts
    def exchange_counts(self, send_RX: np.ndarray, key: int) -> np.ndarray:
        """Grouped transports: send row r of send_RX (int64) to rank r and return every rank's row for us
        (recv_RX[src]); synchronous (bounded). `key` identifies the (layer, micro-batch)."""
        raise NotImplementedError(f"{self.name}: a message transport sizes its receives by probe (irecv_probed)")

    def post_counts(self, send_RX: np.ndarray, key: int) -> None:
        """Device-split transports: start the counts exchange of `key` without waiting for it."""
        raise NotImplementedError(f"{self.name}: counts are exchanged synchronously (exchange_counts)")

    def take_counts(self, key: int, derive: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> np.ndarray:
        """Device-split transports: what the receiver needs of the counts of `key`, as host int64 [R + S]: rows
        from each source, then (row, choice) pairs per local slot over all sources; waits for them (bounded).
        A transport whose rows carry their own counts calls `derive(rows_MB, rows_R)` (the receive buffer of
        the key's dispatch and the rows from each source, both on the device) where the rows have landed,
        instead of sending the counts (`emu.dispatch.counts_of_rows`)."""
        raise NotImplementedError(f"{self.name}: counts are exchanged synchronously (exchange_counts)")

    def prepare(self, slots: int, max_rows: int, row_bytes: int, result_row_bytes: int) -> None:
        """Collective, once before the steps: the largest exchange to come, for transports that allocate
        their buffers up front (NVSHMEM's symmetric memory): `slots` exchanges in flight at once (key % slots
        tells them apart), at most `max_rows` rows a rank sends in one, of `row_bytes` out and
        `result_row_bytes` back. Others have nothing to do."""
        return None

    def peers(self) -> list[int]:
        """Other ranks, starting after our own so that not every rank talks to rank 0 first."""
        return [(self.rank + i) % self.size for i in range(1, self.size)]

    # ------------------------------------------------------------------------------ collectives
    @abstractmethod
    def barrier(self, timeout_s: float) -> None:
        """Every rank has reached this point (bounded wait)."""

    @abstractmethod
    def gather(self, obj: Any, timeout_s: float) -> list[Any] | None:
        """Picklable `obj` of every rank, in rank order, on rank 0; None elsewhere (bounded wait)."""

    @abstractmethod
    def bcast(self, obj: Any, timeout_s: float) -> Any:
        """Rank 0's `obj` on every rank (bounded wait)."""

    @abstractmethod
    def abort(self, code: int) -> NoReturn:
        """End every rank of the job at once (after the caller printed why)."""

    @abstractmethod
    def now(self) -> float:
        """Seconds on this rank's clock (MPI.Wtime for MPI)."""

    # ------------------------------------------------------------------------------ buffer pool
    def take_buffer(self, nbytes: int) -> torch.Tensor:
        """A uint8 buffer of `nbytes` on this transport's device, reused from released ones. Measured on
        the 2-core dev box (MPICH shared memory): a fresh host buffer of 1 MB costs about 0.3 ms of page
        faults when MPI first writes it, several times the transfer itself, so receive buffers are
        recycled; and a 16 MB transfer between buffers without transparent huge pages takes 3-4x longer
        than between huge-page buffers, so host buffers come from numpy, which advises huge pages for
        large arrays (torch does so only with THP_MEM_ALLOC_ENABLE=1, which `emu.launch` sets).
        Capacities are powers of two (at least MIN_POOLED_BYTES)."""
        cap = max(MIN_POOLED_BYTES, 1 << max(0, nbytes - 1).bit_length())
        pool = self._buffer_pool()
        free = pool["free"].setdefault(cap, [])
        if free:
            base = free.pop()
        elif self.device.type == "cpu":  # numpy asks the kernel for huge pages (madvise) on large arrays
            arr = np.empty(cap, dtype=np.uint8)
            base = torch.from_numpy(arr)
            pool["arrays"][base.data_ptr()] = arr
        else:
            base = torch.empty(cap, dtype=torch.uint8, device=self.device)
        pool["taken"][base.data_ptr()] = base
        return base[:nbytes]

    def _buffer_pool(self) -> dict:
        pool = getattr(self, "_pool", None)
        if pool is None:
            # free: capacity -> buffers; taken: address -> buffer; arrays: a host buffer's own NumPy array
            pool = self._pool = {"free": {}, "taken": {}, "arrays": {}}
        return pool

    def host_array(self, buf: torch.Tensor | np.ndarray) -> np.ndarray:
        """A contiguous host uint8 buffer as a flat NumPy array of the same memory (no copy). A buffer from
        `take_buffer` (or a leading part of one) is sliced from the pool's own array, a fraction of the cost
        of `Tensor.numpy()`: this runs before every message a rank sends or receives."""
        if isinstance(buf, np.ndarray):
            if buf.dtype != np.uint8 or not buf.flags.c_contiguous:
                raise ValueError(f"host buffers must be contiguous uint8 arrays, got {buf.dtype}"
                                 f"{'' if buf.flags.c_contiguous else ' (not contiguous)'}")
            return buf.reshape(-1)
        if buf.dtype != torch.uint8 or not buf.is_contiguous():
            raise ValueError(f"host buffers must be contiguous uint8 tensors, got {buf.dtype}"
                             f"{'' if buf.is_contiguous() else ' (not contiguous)'}")
        arr = self._buffer_pool()["arrays"].get(buf.data_ptr())
        return buf.numpy().reshape(-1) if arr is None else arr[:buf.numel()]

    def give_buffer(self, buf: torch.Tensor) -> None:
        """Return a buffer from `take_buffer` (or any view of it that starts at its first byte, a NumPy
        view included) once nothing reads or writes it; other tensors are ignored."""
        ptr = buf.ctypes.data if isinstance(buf, np.ndarray) else buf.data_ptr()
        base = self._buffer_pool()["taken"].pop(ptr, None)
        pool = self._buffer_pool()
        if base is not None:
            pool["free"].setdefault(base.numel(), []).append(base)

    # ---------------------------------------------------------------------------- host hand-off
    def to_wire(self, t: torch.Tensor) -> torch.Tensor:
        """A tensor as a contiguous buffer on this transport's device. From a CUDA tensor to the host this
        is a synchronous copy: the copy waits for the producing stream, so the buffer is complete before
        it is handed to the library (host synchronization point)."""
        if t.device != self.device:
            t = t.to(self.device, non_blocking=False)
        return t.contiguous()


def host_to(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A host tensor on `device`. To a GPU the copy goes through pinned memory without blocking (a plain
    copy from pageable memory synchronizes the host with the stream); torch's pinned-memory cache keeps
    the staging block until the copy has run."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
