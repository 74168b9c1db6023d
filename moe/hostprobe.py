"""The host's speed at a runtime's kind of work, as one number: to tell a machine's drift from a model's
error.

`host_probe_s` times a fixed reference workload made of what a host-bound step is made of (Python
bookkeeping, NumPy on small arrays, small torch calls on CPU tensors; no device work, so the number means the
same on any backend): runs back to back over a window of WINDOW_S, the mean per run. The window is long
beside a scheduler's time slice, so the figure includes the share of a core the process got: a host whose
cores are shared with other work probes slower, as its ops time slower (the median of short runs, tried
first, missed exactly that: a calibration next to a busy process, ops 1.5-2x slower, probed within 5% in
18 of 20 cases).
Calibration records it in the profile (`cluster.host_probe_s`), every emu and real run in its Result
(`extra.host_probe_s`, the median over ranks, each rank's the mean of a probe before and after its recorded
steps), and `moetb validate` sets the two side by side (`moe.result.summary.compare`): a profile whose probe
took 1.3x the run's was calibrated on a host 1.3x slower than the one that ran, and host-bound ops are
predicted that much too slow.
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import torch

WINDOW_S = 0.1
"""Seconds of back-to-back runs per probe (a scheduler's time slice is a few ms)."""
ITERATIONS = 200
"""About 1.4 ms a run on the 2-core CI box when it is quiet."""


def reference() -> float:
    """The reference workload (deterministic; its value only keeps the work from being optimized away)."""
    x = torch.zeros(64, 16)
    rows = torch.arange(0, 64, 2)
    a = np.arange(256)
    acc = 0.0
    for i in range(ITERATIONS):
        acc += x.index_select(0, rows).shape[0]  # one torch call's dispatch
        acc += int(np.bincount(a % 7).max())  # small NumPy
        acc += len({j: i * j for j in range(8)})  # Python bookkeeping
    return acc


def host_probe_s(window_s: float = WINDOW_S) -> float:
    """Seconds of one reference run on this host now: the mean over runs back to back for `window_s`, after
    a warm-up run."""
    reference()
    runs, start = 0, time.perf_counter()
    while True:
        reference()
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= window_s:
            return elapsed / runs


DRIFT_WARN = 0.25
"""A calibration whose host probe moved by more than this between the start and the end of its op table,
on any rank, was not measured on a steady host: its op table mixes two speeds (a busy box, a clock that
changed). Measured on the 2-core CI box: a process spinning beside it makes the probe read 1.8-2.0x."""


def drift(before_R, after_R) -> float:
    """Largest change of a rank's probe over a calibration, either way (2x slower or 2x faster: 100%)."""
    return max((max(a / b, b / a) - 1 for b, a in zip(before_R, after_R, strict=True) if a > 0 and b > 0),
               default=0.0)


def drift_warning(before_R, after_R, what: str = "calibration") -> str | None:
    """A one-line warning when the host's speed moved beyond DRIFT_WARN during `what`, else None."""
    d = drift(before_R, after_R)
    if d <= DRIFT_WARN:
        return None
    return (f"warning: the host probe moved {d:.0%} during the {what} (before {min(before_R) * 1e3:.2f}-"
            f"{max(before_R) * 1e3:.2f} ms, after {min(after_R) * 1e3:.2f}-{max(after_R) * 1e3:.2f} ms over "
            f"ranks): the host was not steady (another process on its cores?), so its op table mixes speeds; "
            f"calibrate again on a quiet host")


def calibration_probe(pairs_R, what: str) -> float:
    """A calibration's `host_probe_s` from each rank's (before, after) probes: the median over ranks of each
    rank's mean; prints `drift_warning` to stderr when the host was not steady."""
    warning = drift_warning([p[0] for p in pairs_R], [p[1] for p in pairs_R], what)
    if warning:
        print(f"calibrate: {warning}", file=sys.stderr, flush=True)
    return statistics.median((b + a) / 2 for b, a in pairs_R)
