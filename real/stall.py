"""A bound on host calls into a collective library that can block inside the call.

The runtime's own waits are bounded (`emu.transport.poll_until`), but a call into NCCL can itself block
the host where no wait of ours runs: the first transfer between two ranks of a communicator sets up their
connection inside the launching call, which waits for the peer to make its call too. A dead or stuck peer
would hang the rank there. `guard(what, timeout_s, on_stall)` marks such a call; one daemon thread per
process watches the marks and calls `on_stall(what)` (report, then abort: `RealTransport.stalled`) when a
call has not returned within its timeout. The library releases the interpreter lock while it blocks, so
the watcher runs. Cost per guarded call: a dictionary insert and delete.
The other threads the GPU transport (`real.transport`) runs beside such a library: `Waiter`, which waits for
gloo's point-to-point works so that the host can poll them, and the abort of NCCL's communicators on the way
out (`abort_nccl`).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

CHECK_EVERY_S = 0.25
"""How often the watcher looks: a stall is acted on within this much of its timeout."""

_marks: dict[int, tuple[float, str, Callable[[str], None]]] = {}
_ids = itertools.count()
_lock = threading.Lock()
_watcher: threading.Thread | None = None


def _watch() -> None:
    while True:
        time.sleep(CHECK_EVERY_S)
        now = time.monotonic()
        with _lock:
            late = [ident for ident, (deadline, _, _) in _marks.items() if now > deadline]
            acts = [_marks.pop(ident) for ident in late]
        for _, what, act in acts:
            act(what)  # a job's handler ends the process (report, abort)


@contextmanager
def guard(what: str, timeout_s: float, on_stall: Callable[[str], None]) -> Iterator[None]:
    """Run the body with a deadline of timeout_s seconds; past it, `on_stall(what)` runs on the watcher."""
    global _watcher
    ident = next(_ids)
    with _lock:
        if _watcher is None:
            _watcher = threading.Thread(target=_watch, name="moetb-stall-watch", daemon=True)
            _watcher.start()
        _marks[ident] = (time.monotonic() + timeout_s, what, on_stall)
    try:
        yield
    finally:
        with _lock:
            _marks.pop(ident, None)


ABORT_GRACE_S = 5.0


def abort_nccl() -> None:
    """Abort every NCCL communicator of this process (torch's private hook; absent in some versions)."""
    try:
        import torch.distributed as dist

        dist.distributed_c10d._abort_process_group()
    except Exception:  # noqa: BLE001 - best effort on the way out
        pass


class Waiter:
    """gloo's point-to-point works report completion only from `wait()`: a thread waits for them, so the host
    observes their completion as it does a collective's."""

    def __init__(self, works: list):
        self.error: BaseException | None = None
        self.finished = threading.Event()
        threading.Thread(target=self._wait, args=(works,), daemon=True).start()

    def _wait(self, works: list) -> None:
        try:
            for w in works:
                w.wait()  # bounded by the group's timeout
        except BaseException as err:  # noqa: B902 - handed to the rank's thread by wait()
            self.error = err
        finally:
            self.finished.set()

    def is_completed(self) -> bool:
        return self.finished.is_set()

    def wait(self) -> None:
        self.finished.wait()
        if self.error is not None:
            raise self.error
