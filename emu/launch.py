"""Starting ranks: detect a surrounding MPI launcher, or start `mpiexec -n N python -m moe ...` ourselves.

`moetb run SPEC --backend emu --ranks N` outside a launcher writes the resolved scenario to a temporary
YAML file and runs `mpiexec -n N python -m moe run TMP.yaml --backend emu --out TMP/out` with the
`mpiexec` that sits next to this Python (the PyPI `mpich` package installs it there), falling back to the
one on PATH. Rank 0 of that job hands its RunOutput back through a pickle file named by the
MOETB_EMU_HANDOFF environment variable, so the parent returns the same objects a one-process run does.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from emu.faults import ERRORS_ENV
from moe.errors import BackendUnavailable, RunFailure
from moe.spec import scenario_dict
from moe.spec.loader import self_contained
from moe.spec.schema import Scenario

HANDOFF_ENV = "MOETB_EMU_HANDOFF"
"""Path where rank 0 of a launched job pickles its RunOutput (set by `launch_run` for its child)."""

_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_UNIVERSE_SIZE")
_LOCAL_RANK_VARS = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "PMIX_LOCAL_RANK", "SLURM_LOCALID",
                    "LOCAL_RANK")


def launched_size() -> int | None:
    """Ranks of the surrounding MPI job (MPICH/Hydra, Open MPI, PMIx), or None when not under a launcher."""
    for var in _SIZE_VARS:
        value = os.environ.get(var)
        if value and value.isdigit():
            return int(value)
    return None


def local_rank() -> int:
    """This process's index among the ranks of its host (for binding a rank to a CUDA device)."""
    for var in _LOCAL_RANK_VARS:
        value = os.environ.get(var)
        if value and value.isdigit():
            return int(value)
    return 0


def mpiexec_path() -> str:
    """The mpiexec beside sys.executable (PyPI mpich in a venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.exists():
        return str(beside)
    found = shutil.which("mpiexec")
    if not found:
        raise BackendUnavailable("emu: no mpiexec found next to Python or on PATH (pip install mpich)")
    return found


def mpiexec_command(ranks: int, argv: list[str]) -> list[str]:
    """`mpiexec -n ranks python -m moe argv...`; Open MPI needs --oversubscribe for more ranks than cores."""
    exe = mpiexec_path()
    cmd = [exe, "-n", str(ranks)]
    try:
        version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        version = ""
    if "Open MPI" in version or "OpenRTE" in version:
        cmd.append("--oversubscribe")
    return cmd + [sys.executable, "-m", "moe", *argv]


def spec_for_child(scenario: Scenario) -> dict:
    """The resolved scenario as a self-contained mapping (moe.spec.loader.self_contained): every key
    explicit, so preset files named by a relative path are not needed by the child."""
    return self_contained(scenario_dict(scenario))


def child_env() -> dict:
    """The environment of launched ranks: ours, plus THP_MEM_ALLOC_ENABLE=1 so torch's CPU allocator asks
    for transparent huge pages for large tensors (read once, when torch starts). Measured on the 2-core
    dev box: MPI moves 16 MB between huge-page buffers 3-4x faster than between 4 KiB-page ones."""
    return {"THP_MEM_ALLOC_ENABLE": "1", **os.environ}


def _run_child(cmd: list[str], env: dict, timeout_s: float | None, what: str) -> None:
    """Run the job; a failed one raises RunFailure naming the first failing rank's error, which the ranks
    also append to the file named by ERRORS_ENV (emu.faults: mpiexec forwards a rank's stderr
    asynchronously, and MPI_Abort can end the forwarding before the rank's last line is out)."""
    with tempfile.TemporaryDirectory(prefix="moetb-emu-errors-") as tmp:
        errors = Path(tmp) / "errors.txt"
        try:
            proc = subprocess.run(cmd, env={**env, ERRORS_ENV: str(errors)}, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise RunFailure(f"emu: {what} with {cmd[2]} ranks did not finish within {timeout_s:g} s") from None
        if proc.returncode != 0:
            first = errors.read_text().splitlines()[:1] if errors.exists() else []
            why = f": {first[0]}" if first else "; the failing rank's error is printed above"
            raise RunFailure(f"emu: {what} with {cmd[2]} ranks failed (mpiexec exit {proc.returncode}){why}")


def launch_run(scenario: Scenario, ranks: int, timeout_s: float | None = None):
    """Run `scenario` on `ranks` MPI ranks in a child mpiexec job; returns rank 0's RunOutput."""
    with tempfile.TemporaryDirectory(prefix="moetb-emu-") as tmp:
        spec_path, handoff = Path(tmp) / "spec.yaml", Path(tmp) / "output.pkl"
        spec_path.write_text(yaml.safe_dump(spec_for_child(scenario), sort_keys=False))
        cmd = mpiexec_command(ranks, ["run", str(spec_path), "--backend", "emu", "--out", str(Path(tmp) / "out")])
        _run_child(cmd, {**child_env(), HANDOFF_ENV: str(handoff)}, timeout_s, "run")
        if not handoff.exists():
            raise RunFailure("emu: the launched job ended without handing back a result")
        with handoff.open("rb") as f:
            return pickle.load(f)


def launch_calibrate(ranks: int, quick: bool, timeout_s: float | None = None) -> dict:
    """`moetb calibrate --backend emu` on `ranks` ranks in a child job; returns the profile mapping."""
    with tempfile.TemporaryDirectory(prefix="moetb-emu-") as tmp:
        out = Path(tmp) / "profile.yaml"
        argv = ["calibrate", "--backend", "emu", "--out", str(out)] + (["--quick"] if quick else [])
        _run_child(mpiexec_command(ranks, argv), child_env(), timeout_s, "calibrate")
        data = yaml.safe_load(out.read_text())
        data.pop("preset", None)
        return data


def hand_off(output) -> None:
    """On rank 0 of a launched job: pickle the RunOutput where the parent expects it."""
    path = os.environ.get(HANDOFF_ENV)
    if path:
        tmp = Path(path + ".tmp")
        with tmp.open("wb") as f:
            pickle.dump(output, f)
        tmp.replace(path)
