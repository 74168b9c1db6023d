"""Timing a CPU operation the way a run calls it: with its weights and inputs out of the CPU caches.

In an emulator step an operation never runs twice in a row: between two calls of the gate (or an
expert, or a layer's attention) the rank runs every other operation of the layer and the other layers,
whose weights and KV caches (tens of MB for the validation scenarios: 3 layers x 2 micro-batches x 32
sequences x 1024 keys x 192 bytes of `tiny`'s MLA latent are 38 MB) pass through the caches and evict the
operation's data. A tight timing loop instead finds them in L2/L3 after its warm-up call. Measured on the
2-core AMD EPYC dev box (32 MiB L3) with a probe that was not kept (timers around each operation inside
an emulator step and, in the same minutes, the calibration's loop; ms, tiny-decode-64x1024, 32 tokens per
micro-batch):

    op         in the run   loop, warm   loop, after a pass over 64 MiB
    gate          0.179        0.073        0.132
    shared        0.450        0.315        0.441
    combine       0.095        0.051        0.112
    dense         0.972        0.747        1.013
    attention     4.517        4.004        4.730
    shard + 16 experts  4.137  3.912        4.399

So the calibration times each call after a pass over a buffer of `FLUSH_LLC_MULTIPLE` times the
last-level cache (outside the timed interval): the call then reads its weights from DRAM, as in a run.
The table's pass wrote the buffer; the pass reads one byte of every cache line instead: a read brings
its line in and evicts another just as a write does, without leaving dirty lines to write back. The GPU
calibration (`real.calibrate`) uses the same pass for the host's time to issue an op (measured there:
`benchmarks/host_cold.py`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np

CACHE_ROOT = Path("/sys/devices/system/cpu/cpu0/cache")
FLUSH_LLC_MULTIPLE = 2
"""Buffer bytes per last-level cache byte: passed over once, twice the cache's capacity leaves none of the
timed operation's lines in a cache with (pseudo-)LRU replacement."""
LINE_BYTES = 64
"""Cache line of x86-64 CPUs (and of the Arm Neoverse cores of Grace)."""
FALLBACK_LLC_BYTES = 32 << 20
"""Last-level cache assumed where sysfs does not describe one (the dev box's L3, `lscpu`)."""


def parse_cache_size(text: str) -> int:
    """Bytes of a sysfs cache `size` value ("32768K", "1M", "512")."""
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


def last_level_cache_bytes(root: Path = CACHE_ROOT) -> int:
    """Capacity of the highest-level data or unified cache of cpu0 (sysfs `cache/index*/size`), else
    FALLBACK_LLC_BYTES."""
    best: tuple[int, int] | None = None
    for index in sorted(root.glob("index*")):
        try:
            level = int((index / "level").read_text())
            kind = (index / "type").read_text().strip()
            size = parse_cache_size((index / "size").read_text())
        except (OSError, ValueError):
            continue
        if kind in ("Data", "Unified") and (best is None or level > best[0]):
            best = (level, size)
    return best[1] if best else FALLBACK_LLC_BYTES


class CacheFlusher:
    """A pass that reads one byte of every cache line of `nbytes` (default FLUSH_LLC_MULTIPLE x the
    last-level cache): after it, an operation's data comes from memory. A call returns the lines read."""

    def __init__(self, nbytes: int | None = None):
        self.nbytes = nbytes or FLUSH_LLC_MULTIPLE * last_level_cache_bytes()
        self.buf = np.ones(self.nbytes, dtype=np.uint8)

    def __call__(self) -> int:
        return int(self.buf[::LINE_BYTES].sum(dtype=np.int64))


@cache
def flusher(nbytes: int | None = None) -> CacheFlusher:
    """One CacheFlusher per process and size (its buffer is allocated once)."""
    return CacheFlusher(nbytes)


def median_time_s(fn: Callable[[], object], warmup: int, repeats: int,
                  before: Callable[[], object] | None = None) -> float:
    """Median seconds of fn() over `repeats` calls after `warmup` calls; `before` (e.g. a CacheFlusher)
    runs untimed before every call."""
    for _ in range(warmup):
        if before is not None:
            before()
        fn()
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
