"""200 small kernels on one H100: CUDA-event time on an idle GPU (the host issues each kernel as the device
waits for it) against the same events queued behind a device sleep that lets the host issue everything first
(the device's own time). The experiment behind `experiments/validation/h100x4-i` (op-table device times
taken this way; reverted: predictions got worse).
    python benchmarks/measured/h100x4-2026-11-27i/ahead_check.py > ahead_check.txt"""
import statistics
import time

import torch

x = torch.zeros(1, device="cuda")


def many():
    for _ in range(200):
        x.add_(1)


def timed(sleep_cycles: int) -> tuple[float, float]:
    """Median (device, host) seconds of many() over 5 calls after 2, each behind a sleep of sleep_cycles."""
    for _ in range(2):
        many()
    torch.cuda.synchronize()
    dev, host = [], []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if sleep_cycles:
            torch.cuda._sleep(sleep_cycles)
        start.record()
        t0 = time.perf_counter()
        many()
        host.append(time.perf_counter() - t0)
        end.record()
        end.synchronize()
        dev.append(start.elapsed_time(end) / 1e3)
    return statistics.median(dev), statistics.median(host)


start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
torch.cuda._sleep(1000)
start.record()
torch.cuda._sleep(2_000_000)
end.record()
end.synchronize()
per_s = 2_000_000 / (start.elapsed_time(end) / 1e3)
print("sleep cycles/s", per_s)
idle = timed(0)
ahead = timed(int((2 * idle[1] + 200e-6) * per_s))
print("200 adds: ahead (device, host) s", ahead, "idle device s", idle[0])
