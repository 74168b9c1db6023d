"""200 small kernels timed by real.calibrate on one H100: device time with the host ahead vs on an idle GPU.
    python benchmarks/measured/h100x4-2026-11-27i/ahead_check.py > ahead_check.txt"""
import torch

from real.calibrate import _sleep_cycles_per_s, cuda_time_s, cuda_times_s

x = torch.zeros(1, device="cuda")


def many():
    for _ in range(200):
        x.add_(1)


print("sleep cycles/s", _sleep_cycles_per_s())
print("200 adds: ahead (device, host) s", cuda_times_s(many, 2, 5), "idle device s", cuda_time_s(many, 2, 5))
