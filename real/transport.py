"""The Transport over torch.distributed: NCCL on GPUs (CUDA tensors, no host copies), gloo on CPUs (CI).

Shape letters: R ranks, X count columns, B bytes of a buffer.

A grouped transport (`emu.transport`): the split sends and receives that the protocol (`emu.dispatch`)
posts for one (layer, micro-batch) key and phase form a `Group`, issued as one collective once both sides
are posted:
  phase "dispatch": dispatch rows (meta in front) phase "combine": result rows
  mode `all_to_all`: one `all_to_all_single` per buffer kind with the byte splits, own part included
  mode `p2p`:        one `batch_isend_irecv` of every peer's parts; the own part is copied locally
  mode `nvshmem`:    one NVSHMEM `all_to_all_vdev` from and to symmetric buffers (`real.symm`), the splits
                     on the device: issued as soon as the send side is posted (a device-split transport,
                     `Transport.device_splits`); no counts are sent: the receiver derives them from the
                     rows where they landed when it computes the shards (`take_counts`), and a combine's
                     splits are its dispatch's rows per source, which never leave the device; rows sit
                     there at a padded stride (`real.symm.width`), and the receives are [rows, row bytes]
                     views of them (no copy)
Receive buffers are one tensor per kind with a region per source in rank order, so a key's shards are
one contiguous block for the experts. Each phase has its own process group and issues its groups in key
order; the runtime starts keys in order on every rank (`emu.runtime`), so all ranks call every group's
collectives in one order whatever the local timing. The counts go over a third group (`real.groups`).

On a GPU every collective runs on its phase's CUDA stream, which first waits (event) for the compute
stream at the moment of issue (the inputs are complete); a group's `done` event ends it. Completion is
stream-ordered: an operation is reported done once enqueued, and `ready(buffers)` makes the compute
stream wait for the groups that fill them, so the host never waits for a transfer. The one host
synchronization per (layer, micro-batch) is the counts exchange: a receiver must know its shard sizes
before it can post the receives (nvshmem: the copy of the derived counts, once the rows are in). Tensors
of a group stay referenced until its `done` event has passed, so the caching allocator never reuses memory
a transfer still reads or writes. On CPUs (gloo) completion is observed by the host (`Work.is_completed`),
unless `stream_ordered` asks for the GPU's semantics, which tests use to check that the runtime calls
`ready` before every read.
"""

from __future__ import annotations

import datetime
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np
import torch
import torch.distributed as dist

from emu import dispatch as dp
from emu.faults import report_failure
from emu.transport import Pending, Transport, WaitTimeout, poll_until
from moe.errors import RunFailure
from moe.model.graphs import Replays
from real import symm
from real.groups import Groups
from real.stall import ABORT_GRACE_S, Waiter, abort_nccl, guard

PHASE_OF_KIND = {dp.KIND_PAYLOAD: "dispatch", dp.KIND_RESULT: "combine"}
MODES = ("p2p", "all_to_all", "nvshmem")


@dataclass(eq=False)
class Group:
    """One phase of one key: the protocol's split sends and receives, then the collective that moves them."""

    phase: str
    key: int
    send: tuple[list[torch.Tensor], list[np.ndarray]] | None = None
    """Flat input buffers and their byte splits per rank."""
    recv: tuple[list[torch.Tensor], list[np.ndarray]] | None = None
    """Flat output buffers (a region per source, rank order) and their byte splits."""
    issued: bool = False
    works: list = field(default_factory=list)
    done: Any = None
    """CUDA event at the end of the group's transfers on its phase stream."""
    waited: set = field(default_factory=set)
    """Streams already made to wait for `done`."""


class RealTransport(Transport):
    grouped = True
    spin_s = 5e-3
    """A GPU rank's host busy-polls its waits (the counts) this long: its device computes meanwhile, and
    sleeping would add wake-up latency to every exchange (emu.transport.SPIN_S is shorter because there
    the spinning core is a computing core's neighbour)."""

    def __init__(self, groups: Groups, mode: str, device: torch.device, timeout_s: float,
                 stream_ordered: bool | None = None):
        if mode not in MODES:
            raise ValueError(f"transport mode {mode!r} is not one of {MODES}")
        if mode == "nvshmem" and not (device.type == "cuda" and symm.available()):
            raise RunFailure("real.transport=nvshmem needs CUDA GPUs and PyTorch's NVSHMEM library "
                             "(torch.distributed._symmetric_memory.is_nvshmem_available() is false here); "
                             "use all_to_all or p2p")
        self.vdev = mode == "nvshmem"
        """This transport's collectives are NVSHMEM's; `device_splits` is what the protocol reads."""
        self.device_splits = self.vdev
        self.symm: symm.Buffers | None = None
        self.pg = groups
        self.mode = mode
        self.rank, self.size = dist.get_rank(groups.counts), dist.get_world_size(groups.counts)
        self.device = device
        self.cuda = device.type == "cuda"
        self.stream_ordered = self.cuda if stream_ordered is None else stream_ordered
        self.timeout_s = timeout_s
        self.name = f"{groups.backend} {mode}"
        self.messages_posted = 0
        """Collective calls (one all_to_all_single per buffer kind, or one batch_isend_irecv)."""
        self.timing: Callable[[str, int, Any, Any], None] | None = None
        """Called with (name, key, start event, end event) for each transfer ("dispatch_transfer",
        "combine_transfer", on its phase stream) and each wait of the compute stream for one
        ("wait_dispatch", "wait_combine"); CUDA only."""
        self.streams = {p: torch.cuda.Stream(device, priority=-1) for p in ("counts", "dispatch", "combine")} \
            if self.cuda else {}
        self.in_flight: list[Group] = []
        self.replays = Replays(device, self.rank) if self.vdev else None
        """nvshmem: the op and the counts derivation per slot, as CUDA graphs (`moe.model.graphs`)."""
        self.reset()

    def reset(self) -> None:
        """Start of a step: keys start again at 0 (groups still in flight stay referenced)."""
        self.groups: dict[tuple[str, int], Group] = {}
        self.next_issue = {"dispatch": 0, "combine": 0}
        self.by_buffer: dict[int, Group] = {}
        self.issue_log: list[tuple[str, int]] = []
        """(phase, key) of every collective of this step in issue order (counts included): the same on
        every rank with stream-ordered completion, the same per phase otherwise (tests)."""

    # ------------------------------------------------------------------------------------ counts
    def exchange_counts(self, send_RX: np.ndarray, key: int) -> np.ndarray:
        """Synchronous all-to-all of count rows: row r of send_RX to rank r."""
        if not self.cuda:
            send = np.ascontiguousarray(send_RX, dtype=np.int64)
            self.issue_log.append(("counts", dp.key_of_tag(key)))
            recv_t = torch.empty(send.shape, dtype=torch.int64)
            dist.all_to_all_single(recv_t, torch.from_numpy(send), group=self.pg.counts)  # bounded: group timeout
            return recv_t.numpy()
        # the host waits here, the one host synchronization per (layer, micro-batch): the receiver must know
        # its shard sizes before it posts their receives. The counts all-to-all runs on its own stream and
        # communicator; plain copies (pageable memory, each waits for its stream) replace pinned staging and an
        # event poll (4 x H100: 220 us a round trip by `benchmarks/real_host_time.py counts`, the all-to-all
        # alone 61 us); the guard bounds the round trip, so a dead peer ends the job instead of hanging it
        send = np.ascontiguousarray(send_RX, dtype=np.int64)
        self.issue_log.append(("counts", dp.key_of_tag(key)))
        with torch.cuda.stream(self.streams["counts"]), \
                self._guarded(f"the counts all-to-all of exchange {dp.key_of_tag(key)}"):
            send_t = torch.from_numpy(send).to(self.device)  # its own stream: waits for no compute or shard
            recv_t = torch.empty_like(send_t)
            dist.all_to_all_single(recv_t, send_t, group=self.pg.counts)  # on the counts stream (see _launch)
            return recv_t.cpu().numpy()

    def post_counts(self, send_RX: np.ndarray, key: int) -> None:
        """nvshmem: nothing to send, the rows carry their counts (`take_counts`)."""

    def take_counts(self, key: int, derive: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> np.ndarray:
        """nvshmem: the counts of `key` derived from its rows where they landed: on the counts stream, once the
        key's dispatch is done (that stream waits for its event; the compute stream does not), then one copy
        to the host, which waits for that stream alone. No counts all-to-all: no NCCL call and no wait for
        the peers to reach theirs. Eager, the derivation cost the host about as much as a counts all-to-all
        (4 x H100, two jobs: 0.31 against 0.30 ms; `benchmarks/README.md`), so it is replayed as one CUDA graph
        per slot (`moe.model.graphs`)."""
        k = dp.key_of_tag(key)
        g = self.groups.get(("dispatch", k))
        if g is None or not g.issued:
            raise RuntimeError(f"rank {self.rank}: counts of exchange {k} taken before its dispatch was issued")
        ph, slot = self.symm.dispatch, k % self.symm.slots
        stream, compute = self.streams["counts"], torch.cuda.current_stream(self.device)
        stream.wait_event(g.done)
        torch.cuda.set_stream(stream)
        try:
            with self._guarded(f"the dispatch rows of exchange {k} (their counts)"):
                return self.replays.run(("counts", slot), lambda: derive(ph.rows(ph.out[slot]),
                                                                          ph.out_so[slot][0])).cpu().numpy()
        finally:
            torch.cuda.set_stream(compute)

    def prepare(self, slots: int, max_rows: int, row_bytes: int, result_row_bytes: int) -> None:
        """nvshmem: the symmetric buffers (`real.symm`), for the largest rows count any rank asks for."""
        if not self.vdev:
            return
        bound = torch.tensor([max_rows], dtype=torch.int64)
        dist.all_reduce(bound, op=dist.ReduceOp.MAX, group=self.pg.objects)
        self.symm = symm.buffers(self.pg.dispatch, self.pg.combine, self.device, slots, int(bound.item()),
                                 row_bytes, result_row_bytes)
        self.replays.clear()  # captured over the last job's views

    # ------------------------------------------------------------------------------ shard groups
    def _group(self, tags: Sequence[int]) -> Group:
        keys = {dp.key_of_tag(t) for t in tags}
        phases = {PHASE_OF_KIND[t % 4] for t in tags}
        if len(keys) != 1 or len(phases) != 1:
            raise ValueError(f"rank {self.rank}: one split call must carry one key and phase, got tags {list(tags)}")
        ident = (phases.pop(), keys.pop())
        if ident not in self.groups:
            self.groups[ident] = Group(*ident)
        return self.groups[ident]

    def isend_split(self, bufs_B, splits_PR, tags, meta=(), empty=False) -> list[Pending]:
        g = self._group(tags)
        if g.send is not None:
            raise RuntimeError(f"rank {self.rank}: second send of {g.phase} key {g.key} (one per key and phase)")
        splits = [np.asarray(s, dtype=np.int64) for s in splits_PR]
        for b, s in zip(bufs_B, splits, strict=True):
            if b.dtype != torch.uint8 or b.dim() != 1 or b.numel() != int(s.sum()):
                raise ValueError(f"rank {self.rank}: send buffer {b.dtype} {tuple(b.shape)} does not hold its "
                                 f"splits ({int(s.sum())} bytes)")
        g.send = (list(bufs_B), splits)
        posted = [Pending(g, b, r, t, (*meta, r)) for b, s, t in zip(bufs_B, splits, tags, strict=True)
                  for r in range(self.size) if r != self.rank and s[r]]
        self._issue_ready(g.phase)
        return posted

    def irecv_split(self, nbytes_PR, tags, meta=()) -> tuple[list[dict[int, torch.Tensor]], list[Pending]]:
        g = self._group(tags)
        if g.recv is not None:
            raise RuntimeError(f"rank {self.rank}: second receive of {g.phase} key {g.key} (one per key and phase)")
        splits = [np.asarray(s, dtype=np.int64) for s in nbytes_PR]
        bufs, views, posted = [], [], []
        for s, t in zip(splits, tags, strict=True):
            if self.vdev:  # where the op writes: the slot's output, sources in rank order, rows at their stride
                ph = self.symm.of(g.phase)
                if (s % ph.row_bytes).any():
                    raise RuntimeError(f"rank {self.rank}: {g.phase} key {g.key}: receives of {s.tolist()} bytes "
                                       f"are not whole {ph.row_bytes}-byte rows")
                off = np.concatenate([[0], np.cumsum(s // ph.row_bytes)])
                buf = ph.rows(ph.out[g.key % self.symm.slots], int(off[-1]))  # [rows, row bytes], no padding
            else:
                buf = torch.empty(int(s.sum()), dtype=torch.uint8, device=self.device)
                off = np.concatenate([[0], np.cumsum(s)])
            mine = {r: buf[int(off[r]):int(off[r + 1])] for r in range(self.size) if s[r]}
            for r, v in mine.items():
                self.by_buffer[v.data_ptr()] = g
                posted.append(Pending(g, v, r, t, (*meta, r)))
            bufs.append(buf)
            views.append(mine)
        g.recv = (bufs, splits)
        self._issue_ready(g.phase)
        return views, posted

    def _issue_ready(self, phase: str) -> None:
        """Issue this phase's complete groups in key order."""
        while True:
            g = self.groups.get((phase, self.next_issue[phase]))
            if g is None or g.send is None or (g.recv is None and not self.vdev):
                return  # device splits: the receiver's sizes are not needed to move the rows
            self._issue(g)
            self.next_issue[phase] += 1

    def _issue(self, g: Group) -> None:
        (ins, in_splits), (outs, out_splits) = g.send, g.recv or ([], [])
        if g.recv is not None and (len(ins) != len(outs) or any(
                a[self.rank] != b[self.rank] for a, b in zip(in_splits, out_splits, strict=True))):
            raise RuntimeError(f"rank {self.rank}: {g.phase} key {g.key}: sends and receives do not match "
                               f"(own part {[int(a[self.rank]) for a in in_splits]} vs "
                               f"{[int(b[self.rank]) for b in out_splits]})")
        group = self.pg.dispatch if g.phase == "dispatch" else self.pg.combine
        if not self.cuda:
            g.works = self._launch(group, ins, in_splits, outs, out_splits)
            if self.mode == "p2p" and g.works:
                g.works = [Waiter(g.works)]
        else:
            stream, compute = self.streams[g.phase], torch.cuda.current_stream(self.device)
            stream.wait_stream(compute)  # the inputs are complete
            torch.cuda.set_stream(stream)  # not torch.cuda.stream(): its bookkeeping costs the host more
            try:
                start = None
                if self.timing is not None:
                    start = torch.cuda.Event(enable_timing=True)
                    start.record(stream)
                with self._guarded(f"the {g.phase} {self.mode} of exchange {g.key}"):
                    works = self._vdev(g, stream) if self.vdev else \
                        self._launch(group, ins, in_splits, outs, out_splits)
                for w in works:
                    w.wait()  # the phase stream waits for NCCL's stream; the host does not wait
                g.done = torch.cuda.Event(enable_timing=start is not None)
                g.done.record(stream)
            finally:
                torch.cuda.set_stream(compute)
            if self.timing is not None:
                self.timing(f"{g.phase}_transfer", g.key, start, g.done)
        g.issued = True
        self.issue_log.append((g.phase, g.key))
        self.in_flight.append(g)

    def _vdev(self, g: Group, stream) -> list:
        """One all_to_all_vdev of a group's rows on `stream`: copied into the slot's symmetric input, the rows
        per peer to the device (a dispatch's from the host, pinned, without blocking; a combine's from its
        dispatch's rows per source, device to device), then the op, replayed as a CUDA graph per slot
        (`moe.model.graphs`). A kernel launch or copy costs the host 8-37 us on the H100 nodes
        (`benchmarks/real_host_time.py ops`), so there are as few as the op allows."""
        ph, slot = self.symm.of(g.phase), g.key % self.symm.slots  # prepared by the job (Transport.prepare)
        (buf,), (split,) = g.send
        rows_R, rest = np.divmod(split, ph.row_bytes)
        if rest.any() or rows_R.sum() > ph.inp[slot].shape[0]:
            raise RuntimeError(f"rank {self.rank}: {g.phase} key {g.key}: {split.tolist()} bytes are not whole "
                               f"{ph.row_bytes}-byte rows within the {ph.inp[slot].shape[0]} prepared")
        n = int(rows_R.sum())
        symm.copy_rows(ph.rows(ph.inp[slot], n), buf.view(n, ph.row_bytes))

        def op() -> None:  # replayed as a CUDA graph per slot (`moe.model.graphs`)
            if g.phase == "combine":  # results go back where the rows came from: the dispatch's rows per source
                ph.splits[slot].copy_(self.symm.dispatch.out_so[slot][0])
            torch.ops.symm_mem.all_to_all_vdev(ph.inp[slot], ph.out[slot], ph.splits[slot], ph.out_so[slot],
                                               ph.group)

        if g.phase == "combine":
            stream.wait_event(self.groups[("dispatch", g.key)].done)
        else:  # pinned: the copy neither blocks the host nor waits for the stream's earlier work
            ph.splits[slot].copy_(torch.from_numpy(rows_R).pin_memory(), non_blocking=True)
        self.replays.run((g.phase, slot), op)
        self.messages_posted += 1
        return []

    def _launch(self, group, ins, in_splits, outs, out_splits) -> list:
        """The collectives of one group on the current stream; returns their works."""
        if self.mode == "all_to_all":
            # GPU: synchronous, launched on the current (phase) stream without a side stream or event pair
            # (torch >= 2.7, pytorch/pytorch#150398), not blocking the host. gloo: async, completion polled
            self.messages_posted += len(ins)
            works = [dist.all_to_all_single(o, i, so.tolist(), si.tolist(), group=group, async_op=not self.cuda)
                     for i, si, o, so in zip(ins, in_splits, outs, out_splits, strict=True)]
            return [w for w in works if w is not None]
        in_off = [np.concatenate([[0], np.cumsum(s)]) for s in in_splits]
        out_off = [np.concatenate([[0], np.cumsum(s)]) for s in out_splits]
        ops = []
        for r in range(self.size):
            for kind, (i, o) in enumerate(zip(ins, outs, strict=True)):
                a, b = int(in_off[kind][r]), int(in_off[kind][r + 1])
                c, d = int(out_off[kind][r]), int(out_off[kind][r + 1])
                if r == self.rank:
                    if a < b:  # own part: a local copy into its region, so the block stays contiguous
                        o[c:d].copy_(i[a:b])
                    continue
                if a < b:
                    ops.append(dist.P2POp(dist.isend, i[a:b], r, group))
                if c < d:
                    ops.append(dist.P2POp(dist.irecv, o[c:d], r, group))
        if not ops:
            return []
        self.messages_posted += 1
        return dist.batch_isend_irecv(ops)

    def _guarded(self, what: str):
        """A call into NCCL bounded by the job's timeout (`real.stall`); gloo's calls carry their own."""
        return guard(what, self.timeout_s, self.stalled) if self.cuda else nullcontext()

    def stalled(self, what: str) -> None:
        """A guarded call has not returned: this rank's failure, reported as one, ends the job."""
        report_failure(self, WaitTimeout(f"rank {self.rank}: {what} did not return in {self.timeout_s:g} s "
                                         "(a peer never joined it)"), "real")
        self.abort(1)

    # -------------------------------------------------------------------------------- completion
    def _finished(self, g: Group) -> bool:
        """Whether a group's transfers have ended (raising the error of a failed one)."""
        if self.cuda:
            return bool(g.done.query())
        if not all(w.is_completed() for w in g.works):
            return False
        for w in g.works:
            w.wait()  # completed: returns at once, or raises the transfer's error
        return True

    def test_some(self, pending: Sequence[Pending]) -> list[int]:
        done = []
        for i, p in enumerate(pending):
            if not p.done and p.handle.issued and (self.stream_ordered or self._finished(p.handle)):
                p.done = True
                done.append(i)
        self.in_flight = [g for g in self.in_flight if not self._finished(g)]  # their tensors may go now
        return done

    def ready(self, *bufs: torch.Tensor) -> None:
        groups = {id(g): g for g in (self.by_buffer.get(b.data_ptr()) for b in bufs) if g is not None}
        for g in groups.values():
            if not g.issued:
                raise RuntimeError(f"rank {self.rank}: {g.phase} key {g.key} read before it was issued")
            if not self.stream_ordered:
                continue  # reported done only once its data was there
            if not self.cuda:
                self._wait_host(g, f"{g.phase} transfers of exchange {g.key}")
                continue
            stream = torch.cuda.current_stream(self.device)
            if stream.cuda_stream in g.waited:
                continue
            g.waited.add(stream.cuda_stream)
            if self.timing is None:
                stream.wait_event(g.done)  # the compute stream waits for the transfer, the host does not
                continue
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            stream.wait_event(g.done)
            end.record(stream)
            self.timing(f"wait_{g.phase}", g.key, start, end)

    def _wait_host(self, g: Group, what: str) -> None:
        poll_until(lambda: True if self._finished(g) else None, self.timeout_s, what, self.rank, self.spin_s)

    def join(self) -> None:
        """End of a step: the current stream (GPU) or the host (CPU) waits for every transfer issued. On a GPU
        the groups stay referenced until `test_some` sees them finished (the host does not wait here)."""
        for g in self.in_flight:
            if self.cuda:
                torch.cuda.current_stream(self.device).wait_event(g.done)
            else:
                self._wait_host(g, f"the {g.phase} transfers of exchange {g.key} at the end of the step")
        if not self.cuda:
            self.in_flight = []

    # ------------------------------------------------------------------------------ buffers
    def take_buffer(self, nbytes: int) -> torch.Tensor:
        """A fresh buffer from torch's caching allocator (which already pools device memory)."""
        return torch.empty(nbytes, dtype=torch.uint8, device=self.device)

    def give_buffer(self, buf: torch.Tensor) -> None:
        return None  # the allocator takes it back when the last reference (a group's included) goes

    # ------------------------------------------------------------------------------ collectives
    def barrier(self, timeout_s: float) -> None:
        """All ranks here; a missing rank is named (gloo's monitored barrier)."""
        dist.monitored_barrier(group=self.pg.objects, timeout=datetime.timedelta(seconds=timeout_s))

    def gather(self, obj: Any, timeout_s: float) -> list[Any] | None:
        out = [None] * self.size if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0, group=self.pg.objects)  # bounded by the group's timeout
        return out

    def bcast(self, obj: Any, timeout_s: float) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.pg.objects)
        return box[0]

    def abort(self, code: int) -> NoReturn:
        """End this process at once; the launcher (torchrun, mpirun, srun --kill-on-bad-exit) then ends
        the other ranks. No orderly teardown: with a peer gone it could block. On NCCL the communicators
        are aborted first (from a thread, given ABORT_GRACE_S), so that kernels waiting for a stuck peer
        end and the process can exit."""
        sys.stderr.flush()
        sys.stdout.flush()
        if self.cuda:
            aborter = threading.Thread(target=abort_nccl, daemon=True)
            aborter.start()
            aborter.join(ABORT_GRACE_S)
        os._exit(code)

    def now(self) -> float:
        return time.perf_counter()

