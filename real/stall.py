"""A bound on host calls into a collective library that can block inside the call.

The runtime's own waits are bounded (`emu.transport.poll_until`), but a call into NCCL can itself block
the host where no wait of ours runs: the first transfer between two ranks of a communicator sets up their
connection inside the launching call, which waits for the peer to make its call too. A dead or stuck peer
would hang the rank there. `guard(what, timeout_s, on_stall)` marks such a call; one daemon thread per
process watches the marks and calls `on_stall(what)` (report, then abort: `RealTransport.stalled`) when a
call has not returned within its timeout. The library releases the interpreter lock while it blocks, so
the watcher runs. Cost per guarded call: a dictionary insert and delete.
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
