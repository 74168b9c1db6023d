"""`moetb sweep`: expand, skip what is done, run the rest, write the table.

    OUT/sweep.json         the sweep's manifest: name, backend, figure family, axes, points
    OUT/points/*.json      one record per point (moe.sweep.store), written as each point finishes
    OUT/results.parquet    the table (moe.sweep.table), rebuilt from the records at the end, also
    OUT/results.csv        after an interrupt (unfinished points are rows with status "pending")

Exit codes: 2 for a bad sweep file (before any point runs); 1 when some point failed (the others are
in the table; `--retry-failed` reruns the failed ones); 0 otherwise. Infeasible points (do not fit in
memory, impossible placement) are rows with their reason, not failures.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, TextIO

from moe.backends import load_backend
from moe.errors import SpecError
from moe.result import write_json_atomic
from moe.spec import scenario_dict
from moe.sweep.measures import check_measures
from moe.sweep.points import Point, expand
from moe.sweep.pool import Outcome, Task, mpi_executor, mpi_world_size, run_tasks
from moe.sweep.progress import Progress
from moe.sweep.spec import Sweep, load_sweep
from moe.sweep.store import (
    OutLock,
    make_record,
    point_id,
    read_records,
    remove_stale_temporaries,
    trace_path,
    write_record,
)
from moe.sweep.table import make_row, write_table
from moe.sweep.validation import error_columns, missing_report, validation_points

SHOWN_FAILURES = 5


def sweep_points(sweep: Sweep) -> list[Point]:
    """The sweep's points, every one validated (SpecError: bad input, before anything runs)."""
    check_measures(sweep.measures)
    if sweep.measured is not None:
        if sweep.axes or sweep.derive:
            raise SpecError("measured", str(sweep.measured), "a validation sweep takes its points from the "
                            "committed measurements; it has no axes or derive")
        return validation_points(sweep)
    return expand(sweep)


def manifest(sweep: Sweep, points: list[Point]) -> dict[str, Any]:
    return {"name": sweep.name, "description": sweep.description, "backend": sweep.backend,
            "plot": sweep.plot or sweep.name, "sweep_file": str(sweep.path) if sweep.path else "",
            "axes": [a.key for a in sweep.axes], "derive": sweep.derive, "measures": list(sweep.measures),
            "points": [{"point": p.index, "values": p.values, "spec_hash": p.spec_hash, "infeasible": p.infeasible}
                       for p in points]}


def pending_tasks(sweep: Sweep, points: list[Point], records: dict[str, dict], retry_failed: bool) -> list[Task]:
    """One task per distinct scenario that has no record yet; with retry_failed also those recorded as
    failed, or as infeasible by the backend while they pass the scenario checks now."""
    tasks: dict[str, Task] = {}
    for p in points:
        if p.infeasible or p.scenario is None:
            continue
        pid = point_id(sweep.backend, p.spec_hash)
        rec = records.get(pid)
        if rec is not None and not (retry_failed and rec["status"] in ("failed", "infeasible")):
            continue
        keep = sweep.keeps_trace(p.index) or (pid in tasks and tasks[pid].keep_trace)
        tasks[pid] = Task(sweep.backend, p.scenario, p.spec_hash, sweep.measures, keep)
    return list(tasks.values())


def table_rows(sweep: Sweep, points: list[Point], records: dict[str, dict], out: Path) -> list[dict[str, Any]]:
    rows = []
    for p in points:
        rec = records.get(point_id(sweep.backend, p.spec_hash)) or {}
        if p.infeasible:  # decided by this expansion, whatever an older record of the scenario says
            rec = {"status": "infeasible", "error": p.infeasible}
        result = rec.get("result")
        meta = {"sweep": sweep.name, "point": p.index, "status": rec.get("status", "pending"),
                "error": rec.get("error", "") or p.infeasible, "backend": sweep.backend, "spec_hash": p.spec_hash,
                "wall_s": rec.get("wall_s")}
        columns = dict(p.columns)
        if sweep.measured is not None:
            columns.update(error_columns(p.columns, result))
        if trace_path(out, sweep.backend, p.spec_hash).exists():
            columns["trace"] = str(trace_path(out, sweep.backend, p.spec_hash).relative_to(out))
        spec = scenario_dict(p.scenario) if p.scenario is not None else {}
        rows.append(make_row(meta, p.values, result, rec.get("measures", {}), columns, spec))
    return rows


def _summary(sweep: Sweep, rows: list[dict[str, Any]], written: list[Path], stream: TextIO) -> int:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    text = " (" + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) + ")" if counts else ""
    print(f"{sweep.name}: {len(rows)} points{text}; wrote {', '.join(str(p) for p in written)}", file=stream)
    failed = [r for r in rows if r["status"] == "failed"]
    for row in failed[:SHOWN_FAILURES]:
        print(f"  point {row['point']} failed: {row['error'].splitlines()[0]}", file=stream)
    if len(failed) > SHOWN_FAILURES:
        print(f"  ... and {len(failed) - SHOWN_FAILURES} more (see the table's error column)", file=stream)
    if failed:
        print(f"  rerun with --retry-failed to run the {len(failed)} failed points again", file=stream)
    return 1 if failed else 0


def _run(sweep: Sweep, points: list[Point], out: Path, jobs: int, retry_failed: bool, stream: TextIO,
         mpi) -> tuple[list[dict[str, Any]], list[Path]]:
    with OutLock(out):
        remove_stale_temporaries(out)
        write_json_atomic(out / "sweep.json", manifest(sweep, points))
        if sweep.measured is not None:
            for line in missing_report(sweep, points):
                print(line, file=stream)
        records = read_records(out)
        for p in points:
            pid = point_id(sweep.backend, p.spec_hash)
            if p.infeasible and pid not in records:
                records[pid] = make_record(sweep.backend, p.spec_hash, "infeasible", error=p.infeasible)
                write_record(out, records[pid])
        tasks = pending_tasks(sweep, points, records, retry_failed)
        todo = {point_id(t.backend, t.spec_hash) for t in tasks}
        skipped = sum(1 for p in points if point_id(sweep.backend, p.spec_hash) not in todo)
        progress = Progress(sweep.name, total=len(tasks), skipped=skipped, stream=stream)

        def done(task: Task, outcome: Outcome) -> None:
            record, trace = outcome
            write_record(out, record, trace)
            records[point_id(task.backend, task.spec_hash)] = record
            progress.advance(failed=record["status"] == "failed")

        try:
            if tasks:
                progress.draw()
                run_tasks(tasks, jobs, done, mpi)
        finally:
            rows = table_rows(sweep, points, records, out)
            written = write_table(out, rows)
    return rows, written


def run_sweep(path: str | Path, *, backend: str | None = None, jobs: int = 1, out: str | Path | None = None,
              retry_failed: bool = False, stream: TextIO | None = None) -> int:
    """Run a sweep file; see the module docstring for outputs and exit codes."""
    stream = stream if stream is not None else sys.stderr
    if jobs < 1:
        raise SpecError("--jobs", jobs, "expected a positive number of worker processes")
    sweep = load_sweep(path, backend)
    points = sweep_points(sweep)
    load_backend(sweep.backend)  # an unavailable backend stops here, before any point (exit 1)
    out = Path(out) if out is not None else Path("results") / sweep.name
    with contextlib.ExitStack() as stack:
        mpi = None
        if mpi_world_size() > 1:
            mpi = stack.enter_context(mpi_executor())
            if mpi[0] is None:  # a worker rank: it served points until rank 0 finished
                return 0
        rows, written = _run(sweep, points, out, jobs, retry_failed, stream, mpi)
    return _summary(sweep, rows, written, stream)
