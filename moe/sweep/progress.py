"""A progress bar with ETA on stderr: redrawn in place on a terminal, one line every few seconds in logs.

    placement [##########----------] 8/16 run, 4 skipped, 1 failed  0:21 elapsed, ETA 0:21

ETA = remaining points x elapsed / points finished in this run (points run in parallel finish at the
pool's rate, so this is the pool's throughput, not one point's time).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 24
LOG_EVERY_S = 5.0
"""Without a terminal, the shortest gap between two progress lines."""


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    def __init__(self, name: str, total: int, skipped: int = 0, stream: TextIO | None = None,
                 now=time.monotonic):
        self.name, self.total, self.skipped = name, total, skipped
        self.stream = stream if stream is not None else sys.stderr
        self.now = now
        self.start = now()
        self.done = self.failed = 0
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.last_log = -LOG_EVERY_S

    def eta_s(self) -> float | None:
        if self.done == 0:
            return None
        elapsed = self.now() - self.start
        return elapsed / self.done * (self.total - self.done)

    def line(self) -> str:
        filled = WIDTH * self.done // self.total if self.total else WIDTH
        bar = "#" * filled + "-" * (WIDTH - filled)
        eta = self.eta_s()
        parts = [f"{self.name} [{bar}] {self.done}/{self.total} run"]
        if self.skipped:
            parts.append(f", {self.skipped} skipped")
        if self.failed:
            parts.append(f", {self.failed} failed")
        parts.append(f"  {clock(self.now() - self.start)} elapsed")
        parts.append(f", ETA {clock(eta)}" if eta is not None else ", ETA ?")
        return "".join(parts)

    def draw(self, final: bool = False) -> None:
        if self.tty:
            self.stream.write("\r" + self.line() + ("\n" if final else ""))
            self.stream.flush()
        elif final or self.now() - self.last_log >= LOG_EVERY_S:
            self.last_log = self.now()
            print(self.line(), file=self.stream, flush=True)

    def advance(self, failed: bool = False) -> None:
        self.done += 1
        self.failed += int(failed)
        self.draw(final=self.done == self.total)
