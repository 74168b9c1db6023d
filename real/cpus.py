"""Each GPU rank's host on physical cores of its own, among the cores near its GPU.

Why: at small token counts the runtime is host-bound (Python issues every kernel) and every exchange waits
for the slowest rank's host. Host timers in runs on the lent 4 x H100 machines (`benchmarks/
real_host_time.py run`) showed one rank 40-70% slower at the same calls than the others of its job, and
the other ranks waiting for it at every counts exchange: the signature of two busy processes sharing a
physical core, or of a process far from its GPU. So, on GPUs, each rank keeps to whole physical cores
(hardware threads that share a core stay together) from the CPUs local to its GPU (the GPU's NUMA node:
`/sys/bus/pci/devices/<bus id>/local_cpulist`), the local ranks whose GPUs share those CPUs splitting
them evenly. Where the topology cannot be read, or there are fewer cores than ranks, nothing is bound.
`MOETB_CPU_BIND=0` turns it off.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

ENV = "MOETB_CPU_BIND"
SYSFS = Path("/sys")


def parse_cpulist(text: str) -> list[int]:
    """'0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11] (the kernel's cpulist format)."""
    out: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return out


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def gpu_cpus(bus_id: str, root: Path = SYSFS) -> frozenset[int] | None:
    """The CPUs local to the PCI device `bus_id` ('0000:18:00.0'), or None where unknown."""
    text = _read(root / "bus" / "pci" / "devices" / bus_id.lower() / "local_cpulist")
    cpus = parse_cpulist(text) if text else []
    return frozenset(cpus) or None


def physical_cores(cpus: Sequence[int], root: Path = SYSFS) -> list[list[int]]:
    """`cpus` grouped by physical core (hardware threads that share one), cores in order of their first
    CPU; a CPU whose siblings cannot be read is a core of its own."""
    cores: dict[tuple[int, ...], list[int]] = {}
    for cpu in sorted(cpus):
        text = _read(root / "devices" / "system" / "cpu" / f"cpu{cpu}" / "topology" / "thread_siblings_list")
        key = tuple(parse_cpulist(text)) if text else (cpu,)
        cores.setdefault(key, []).append(cpu)
    return list(cores.values())


def share(cores: list[list[int]], index: int, count: int) -> list[int] | None:
    """The CPUs of the index-th of `count` even shares of whole cores (the first shares take one core more
    where they do not divide); None with fewer cores than shares."""
    if count < 1 or len(cores) < count:
        return None
    per, extra = divmod(len(cores), count)
    start = index * per + min(index, extra)
    return [cpu for core in cores[start:start + per + (index < extra)] for cpu in core]


def plan(local_rank: int, local_size: int, bus_ids: Sequence[str], allowed: set[int],
         root: Path = SYSFS) -> list[int] | None:
    """The CPUs for local rank `local_rank` of `local_size`, whose GPU is local_rank % len(bus_ids)."""
    if not bus_ids or local_size < 1:
        return None
    sets = [gpu_cpus(b, root) for b in bus_ids]
    mine = [(s & allowed) if s else frozenset(allowed) for s in sets]
    own = mine[local_rank % len(bus_ids)]
    peers = [r for r in range(local_size) if mine[r % len(bus_ids)] == own]
    return share(physical_cores(sorted(own), root), peers.index(local_rank), len(peers))


def bind(local_rank: int, local_size: int) -> list[int] | None:
    """Pin this process (a rank on a GPU) to its CPUs (`plan`); returns them, or None where nothing was
    bound."""
    if os.environ.get(ENV, "1") == "0" or not hasattr(os, "sched_setaffinity"):
        return None
    import torch

    bus_ids = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        domain, bus, dev = (getattr(p, k, None) for k in ("pci_domain_id", "pci_bus_id", "pci_device_id"))
        if None in (domain, bus, dev):
            return None
        bus_ids.append(f"{domain:04x}:{bus:02x}:{dev:02x}.0")
    cpus = plan(local_rank, local_size, bus_ids, os.sched_getaffinity(0))
    if cpus:
        os.sched_setaffinity(0, cpus)
    return cpus
