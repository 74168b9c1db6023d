"""Backends by name, imported lazily, so `moe` never imports simpy, mpi4py or torch on its own.

A backend is a module with
    run(scenario, *, ranks: int | None = None) -> RunOutput | None
        one scenario -> its Result and Trace; None on the ranks that do not write the result
    calibrate(*, ranks: int | None = None, quick: bool = False) -> dict     (optional)
        microbenchmarks -> the `cluster` section of a hardware profile
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType

from moe.errors import BackendUnavailable
from moe.result import Result, Trace

BACKENDS = {"sim": "sim.backend", "emu": "emu.backend", "real": "real.backend"}
EXECUTORS = {"mpi": "emu.sweep_executor"}
"""Sweep executors by name: a module with `executor()`, a context manager (see moe.sweep.pool)."""


@dataclass
class RunOutput:
    result: Result
    trace: Trace = field(default_factory=Trace)


def load_backend(name: str) -> ModuleType:
    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    module = BACKENDS[name]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and (module == err.name or module.startswith(err.name + ".")):
            raise BackendUnavailable(f"backend {name!r} is not built yet ({module} does not exist)") from None
        raise BackendUnavailable(f"backend {name!r} needs the Python package {err.name!r}, which is not "
                                 "installed") from None


def load_executor(name: str):
    """The `executor` context manager of a sweep executor module (imported lazily, like backends)."""
    module = EXECUTORS[name]
    try:
        return importlib.import_module(module).executor
    except ModuleNotFoundError as err:
        raise BackendUnavailable(f"sweep executor {name!r} needs the Python package {err.name!r} "
                                 "(pip install 'moetb[mpi]')") from None
