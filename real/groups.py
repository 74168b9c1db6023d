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
    if _GROUPS is None or _GROUPS.backend != backend:
        _GROUPS = _make(backend, timeout_s, None)
    return _GROUPS


def prefix_groups(backend: str, timeout_s: float, ranks: int) -> Groups | None:
    """Groups of the job's first `ranks` ranks (their ranks in the groups are their job ranks), for measuring
    what a job of that many ranks does (calibration's exchange per rank count); None on the ranks outside.
    Every rank of the job calls it, in the same order; the whole job's are `process_groups`'."""
    if ranks >= dist.get_world_size():
        return process_groups(backend, timeout_s)
    made = _make(backend, timeout_s, list(range(ranks)))
    return made if dist.get_rank() < ranks else None


def _make(backend: str, timeout_s: float, members: list[int] | None) -> Groups:
    """New groups over `members` (None: every rank), warmed up on the members (`process_groups`)."""
    timeout = datetime.timedelta(seconds=collective_timeout_s(backend, timeout_s))
    options = None
    if backend == "nccl":
        try:
            options = dist.ProcessGroupNCCL.Options()
            options.is_high_priority_stream = True
        except AttributeError:
            options = None
    made = [dist.new_group(members, backend=backend, timeout=timeout, pg_options=options) for _ in range(3)]
    objects = dist.group.WORLD if backend == "gloo" and members is None else \
        dist.new_group(members, backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))
    groups = Groups(backend, *made, objects)
    if members is not None and dist.get_rank() not in members:
        return groups
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    n = dist.get_world_size() if members is None else len(members)
    for g in made:  # communicators and every pair's connection, set up while all ranks are known alive
        dist.all_reduce(torch.zeros(1, device=device), group=g)
        dist.all_to_all_single(torch.empty(n, device=device), torch.zeros(n, device=device), group=g)
    return groups


def forget_process_groups() -> None:
    """After `destroy_process_group`: the next job makes new groups."""
    global _GROUPS
    _GROUPS = None
