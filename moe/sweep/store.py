"""Per-point records of a sweep, one JSON file each, written atomically: what makes a sweep resumable.

    OUT/points/<backend>-<spec_hash>.json          {"status": ok | failed | infeasible, "result": ..., ...}
    OUT/points/<backend>-<spec_hash>.trace.json    Chrome trace, for points whose trace is kept

A point is done once its record exists; the record is written (tmp file + fsync + rename) only after
the point's trace, so a process killed at any instant leaves either no record (the point reruns) or a
whole one (it is skipped). Records are keyed by backend and spec_hash, so one folder can hold a sweep
run on several backends, and identical scenarios run once.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Any

from moe.errors import RunFailure
from moe.result import write_json_atomic

RECORD_VERSION = 1
STATUSES = ("ok", "failed", "infeasible")


def point_id(backend: str, spec_hash: str) -> str:
    return f"{backend}-{spec_hash}"


def record_path(out: Path, backend: str, spec_hash: str) -> Path:
    return out / "points" / f"{point_id(backend, spec_hash)}.json"


def trace_path(out: Path, backend: str, spec_hash: str) -> Path:
    return out / "points" / f"{point_id(backend, spec_hash)}.trace.json"


def make_record(backend: str, spec_hash: str, status: str, *, result: dict | None = None, error: str = "",
                measures: dict | None = None, wall_s: float = 0.0) -> dict[str, Any]:
    assert status in STATUSES, status
    return {"record_version": RECORD_VERSION, "backend": backend, "spec_hash": spec_hash, "status": status,
            "error": error, "wall_s": wall_s, "worker": f"{socket.gethostname()}:{os.getpid()}", "result": result,
            "measures": measures or {}}


def write_record(out: Path, record: dict[str, Any], trace: dict | None = None) -> None:
    """The trace first, then the record: a record never points at a trace that is not there."""
    if trace is not None:
        write_json_atomic(trace_path(out, record["backend"], record["spec_hash"]), trace)
    write_json_atomic(record_path(out, record["backend"], record["spec_hash"]), record)


def read_records(out: Path) -> dict[str, dict[str, Any]]:
    """point_id -> record of every whole record under OUT/points (temporary files are ignored)."""
    records = {}
    folder = out / "points"
    if not folder.is_dir():
        return records
    for path in folder.glob("*.json"):
        if path.name.startswith(".") or path.name.endswith(".trace.json"):
            continue
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # not written by us (our writes are atomic); rerun the point
        if isinstance(rec, dict) and rec.get("status") in STATUSES and "spec_hash" in rec:
            records[point_id(rec["backend"], rec["spec_hash"])] = rec
    return records


def remove_stale_temporaries(out: Path) -> None:
    """Temporary files left by a killed writer (never renamed into place)."""
    for path in (out / "points").glob(".*.tmp"):
        path.unlink(missing_ok=True)


class OutLock:
    """An exclusive lock on OUT, so that two sweeps never write one folder at once. The kernel drops it
    when the holder dies, even by SIGKILL."""

    def __init__(self, out: Path):
        self.path = out / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> OutLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise RunFailure(f"another sweep is writing to {self.path.parent} (lock {self.path})") from None
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
