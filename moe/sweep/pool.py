"""Running points: in this process, in a local process pool (`--jobs N`), or over MPI ranks.

    mpiexec -n K moetb sweep SWEEP.yaml      rank 0 schedules and writes, ranks 1..K-1 run points

A point runs in `run_point`, which never raises for a point's own failure: a SpecError from the backend
(e.g. a placement that cannot exist) makes the point infeasible, any other exception makes it failed,
with the error text; the sweep goes on. Results come back to the scheduling process, which alone writes
records (so MPI ranks need no shared filesystem). A worker process that dies (killed, out of memory)
breaks a local pool: the points that were in flight are rerun one at a time in a fresh worker, and the
one that kills its worker again is recorded as failed.

Under an MPI launcher (detected from its environment variables) points run on the executor of
`emu.sweep_executor`, found by name through moe.backends, so `moe` itself never imports mpi4py.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from moe.backends import load_executor
from moe.errors import SpecError
from moe.spec.schema import Scenario
from moe.sweep.measures import run_measures
from moe.sweep.store import make_record

_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_UNIVERSE_SIZE")
TRACEBACK_LINES = 6
"""Last lines of a failing point's traceback kept in its record."""


@dataclass(frozen=True)
class Task:
    backend: str
    scenario: Scenario
    spec_hash: str
    measures: tuple[str, ...] = ()
    keep_trace: bool = False


Outcome = tuple[dict[str, Any], dict | None]
"""(record, Chrome trace or None)."""


def run_point(task: Task) -> Outcome:
    """Run one point on its backend; every failure of the point becomes its record."""
    from moe.backends import load_backend
    from moe.result import chrome_trace

    t0 = time.perf_counter()
    try:
        out = load_backend(task.backend).run(task.scenario)
        if out is None:
            raise RuntimeError(f"backend {task.backend} returned no result in the sweep's process")
        result = out.result
        if not result.wall_s:
            result.wall_s = time.perf_counter() - t0
        measures = run_measures(task.measures, task.scenario)
        trace = chrome_trace(out.trace) if task.keep_trace else None
        return make_record(task.backend, task.spec_hash, "ok", result=result.to_dict(), measures=measures,
                           wall_s=time.perf_counter() - t0), trace
    except SpecError as err:
        return make_record(task.backend, task.spec_hash, "infeasible", error=str(err),
                           wall_s=time.perf_counter() - t0), None
    except Exception as err:
        tail = "".join(traceback.format_exception(err)[-TRACEBACK_LINES:]).strip()
        return make_record(task.backend, task.spec_hash, "failed", error=f"{type(err).__name__}: {err}\n{tail}",
                           wall_s=time.perf_counter() - t0), None


def mpi_world_size() -> int:
    """Ranks of the surrounding MPI job (MPICH/Hydra, Open MPI, PMIx); 1 outside a launcher."""
    for var in _SIZE_VARS:
        value = os.environ.get(var)
        if value and value.isdigit():
            return int(value)
    return 1


def _died(task: Task, how: str) -> Outcome:
    return make_record(task.backend, task.spec_hash, "failed", error=f"worker process died while running "
                                                                        f"this point ({how})"), None


Runner = Callable[[Task], Outcome]


def _drive(executor: Executor, tasks: list[Task], in_flight: int, done: Callable[[Task, Outcome], None],
           fn: Runner = run_point) -> list[Task]:
    """Keep `in_flight` tasks submitted until all are done; returns the tasks in flight when the pool
    broke (empty when it did not)."""
    queue = list(reversed(tasks))
    running: dict[Future, Task] = {}
    try:
        while queue or running:
            while queue and len(running) < in_flight:
                task = queue.pop()
                running[executor.submit(fn, task)] = task
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                task = running.pop(fut)
                try:
                    outcome = fut.result()
                except BrokenProcessPool:
                    return [task, *running.values(), *reversed(queue)]
                done(task, outcome)
    except BaseException:
        for fut in running:
            fut.cancel()
        raise
    return []


def _context():
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def run_local(tasks: list[Task], jobs: int, done: Callable[[Task, Outcome], None], fn: Runner = run_point) -> None:
    """Serially when jobs <= 1 or a single task; else a pool of `jobs` worker processes. `fn` runs one
    task (a module-level function, so that worker processes can import it)."""
    if jobs <= 1 or len(tasks) <= 1:
        for task in tasks:
            done(task, fn(task))
        return
    pending = tasks
    while pending:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=_context()) as pool:
            broken = _drive(pool, pending, jobs, done, fn)
        if not broken:
            return
        suspects, pending = broken[:jobs], broken[jobs:]
        for task in suspects:  # alone in a fresh worker: only the culprit dies again
            with ProcessPoolExecutor(max_workers=1, mp_context=_context()) as pool:
                if _drive(pool, [task], 1, done, fn):
                    done(task, _died(task, "killed or crashed; rerun alone, it died again"))


def mpi_executor():
    """Under mpiexec: a context manager giving (executor, workers) on rank 0, which schedules, and (None, 0)
    on the other ranks, which serve points inside it. It lives in the MPI package (`emu.sweep_executor`),
    resolved by name, so that `moe` itself never imports mpi4py."""
    return load_executor("mpi")()


def run_tasks(tasks: list[Task], jobs: int, done: Callable[[Task, Outcome], None],
              mpi: tuple[Executor, int] | None = None) -> None:
    """On the MPI executor when given (2 tasks in flight per worker rank), else locally."""
    if mpi is None:
        run_local(tasks, jobs, done)
        return
    executor, workers = mpi
    for task in _drive(executor, tasks, 2 * workers, done):
        done(task, _died(task, "an MPI worker rank failed"))
