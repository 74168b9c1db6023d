"""The process groups of a `real` job: one per collective stream (counts, dispatch, combine) and one for
pickled objects, made once per process and warmed up while every rank is known alive.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from real.dist import collective_timeout_s


@dataclass
class Groups:
    """The process groups of one job: counts, dispatch and combine collectives, and pickled objects."""

    backend: str
    counts: Any
    dispatch: Any
    combine: Any
    objects: Any


_GROUPS: Groups | None = None


def process_groups(backend: str, timeout_s: float) -> Groups:
    """This job's groups, made once per process (new_group is collective: every rank calls it in the same
    order). NCCL groups get high-priority streams where torch offers them, so transfers are scheduled
    ahead of queued compute; a first all-reduce on each creates its communicator on every rank, and a
    first all-to-all the connection of every pair of ranks (NCCL makes it inside the first call between
    two ranks, which blocks the host until the peer calls too; `real.stall` bounds the later calls)."""
    global _GROUPS
    if _GROUPS is not None and _GROUPS.backend == backend:
        return _GROUPS
    timeout = datetime.timedelta(seconds=collective_timeout_s(backend, timeout_s))
    options = None
    if backend == "nccl":
        try:
            options = dist.ProcessGroupNCCL.Options()
            options.is_high_priority_stream = True
        except AttributeError:
            options = None
    made = [dist.new_group(backend=backend, timeout=timeout, pg_options=options) for _ in range(3)]
    objects = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s)) \
        if backend != "gloo" else dist.group.WORLD
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    n = dist.get_world_size()
    for g in made:  # communicators and every pair's connection, set up while all ranks are known alive
        dist.all_reduce(torch.zeros(1, device=device), group=g)
        dist.all_to_all_single(torch.empty(n, device=device), torch.zeros(n, device=device), group=g)
    _GROUPS = Groups(backend, *made, objects)
    return _GROUPS


def forget_process_groups() -> None:
    """After `destroy_process_group`: the next job makes new groups."""
    global _GROUPS
    _GROUPS = None
