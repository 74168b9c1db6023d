"""Failure handling: an exception on any rank ends the whole job, printed with its rank; fault injection.

A rank that raises prints `moetb emu: rank R of N failed: <error>` on stderr and calls MPI_Abort, which
makes the launcher kill every other rank, so a failure never leaves peers blocked. A rank that stops
responding is caught by its peers' bounded waits (`emu.transport.poll_until`), which raise and abort the
same way within `emu.timeout_s`.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

from emu.transport import Transport
from moe.errors import RunFailure, SpecError
from moe.spec.schema import EmuOptions


class InjectedFault(RuntimeError):
    """The failure that `emu.fail_rank` asks for (tests of the failure path)."""


def check_fault_options(options: EmuOptions, ranks: int) -> None:
    if options.fail_rank >= ranks:
        raise SpecError("emu.fail_rank", options.fail_rank, f"no such rank in a job of {ranks} ranks")


def maybe_fail(options: EmuOptions, rank: int, phase: str, timeout_s: float) -> None:
    """Fail here if this rank and phase are the ones `emu.fail_rank`/`emu.fail_at` name."""
    if options.fail_rank != rank or options.fail_at != phase:
        return
    if options.fail_mode == "hang":
        # stop responding: sleep well past the peers' timeout; their bounded waits abort the job
        deadline = time.monotonic() + 10 * timeout_s + 60
        while time.monotonic() < deadline:
            time.sleep(0.5)
        raise InjectedFault(f"injected hang at {phase} was not ended by the other ranks")
    raise InjectedFault(f"injected failure at {phase}")


@contextmanager
def abort_on_error(transport: Transport, backend: str = "emu") -> Iterator[None]:
    """Run a rank's part of the job; on any exception print it with the rank and end the whole job.
    With one rank there is nothing to abort: the error becomes a RunFailure for the CLI."""
    try:
        yield
    except SpecError:
        if transport.size == 1:
            raise
        report_failure(transport, sys.exc_info()[1], backend)
        transport.abort(2)
    except BaseException as err:  # noqa: B902 - every failure, KeyboardInterrupt included, ends the job
        if transport.size == 1:
            if isinstance(err, RunFailure | KeyboardInterrupt):
                raise
            raise RunFailure(f"{backend}: rank 0 of 1 failed: {type(err).__name__}: {err}") from err
        report_failure(transport, err, backend)
        transport.abort(1)


ERRORS_ENV = "MOETB_RANK_ERRORS"
"""A file the launcher names (emu.launch): a failing rank appends its error line there too."""


def report_failure(transport: Transport, err: BaseException | None, backend: str = "emu") -> None:
    name = type(err).__name__ if err is not None else "error"
    line = f"moetb {backend}: rank {transport.rank} of {transport.size} failed: {name}: {err}"
    print(line, file=sys.stderr, flush=True)
    path = os.environ.get(ERRORS_ENV)
    if path:
        with open(path, "a") as f:  # one short append: whole lines from concurrent ranks
            f.write(line.replace("\n", " ") + "\n")
    if os.environ.get("MOETB_DEBUG"):
        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()
