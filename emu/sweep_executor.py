"""Sweep points over MPI ranks: `mpiexec -n K moetb sweep SWEEP.yaml` (moe.sweep finds this by name).

Rank 0 schedules points and writes results; ranks 1..K-1 run points, through mpi4py.futures.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager


@contextmanager
def executor() -> Iterator[tuple[Executor | None, int]]:
    """(executor, worker ranks) on rank 0; (None, 0) on the other ranks, which serve points inside this
    call until rank 0 leaves its `with` block (normally or by an exception)."""
    from mpi4py import MPI
    from mpi4py.futures import MPICommExecutor

    comm = MPI.COMM_WORLD
    with MPICommExecutor(comm, root=0) as pool:
        yield pool, max(comm.Get_size() - 1, 1)
