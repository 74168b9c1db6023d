"""real.stall: a guarded call that does not return in time is acted on; one that returns is not."""

from __future__ import annotations

import threading
import time

from real import stall


def test_overrunning_call_is_reported_once_with_its_name():
    seen: list[str] = []
    fired = threading.Event()

    def on_stall(what: str) -> None:
        seen.append(what)
        fired.set()

    with stall.guard("the counts all-to-all of exchange 3", 0.2, on_stall):
        assert fired.wait(5.0), "the watcher never acted on the overrunning call"
        time.sleep(2 * stall.CHECK_EVERY_S)  # still inside: acted on once, not again
    assert seen == ["the counts all-to-all of exchange 3"]


def test_call_that_returns_in_time_is_not_reported():
    seen: list[str] = []
    with stall.guard("a quick call", 0.3, seen.append):
        time.sleep(0.01)
    time.sleep(0.3 + 2 * stall.CHECK_EVERY_S)
    assert seen == []
