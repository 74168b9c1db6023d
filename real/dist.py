"""Process groups for the GPU backend: one process per GPU, started by torchrun or by mpirun/mpiexec.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. Under mpirun (Open MPI, MPICH,
Slurm) the rank variables come from the MPI launcher and rank 0 publishes its host name and a free port
to the others through mpi4py, imported only in that case. Outside any launcher `launch` starts
`python -m torch.distributed.run --nproc-per-node N -m moe ...` itself.
"""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
import sys
from dataclasses import dataclass

from moe.errors import RunFailure

# (rank, size, local rank) variables of each launcher, in the order they are tried
_LAUNCHERS = (
    ("RANK", "WORLD_SIZE", "LOCAL_RANK"),  # torchrun
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),  # Open MPI
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),  # MPICH / Hydra
    ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),  # srun
)
NCCL_TIMEOUT_FACTOR = 2.0
"""NCCL's own timeout (on expiry its watchdog aborts the process) is this multiple of the job's timeout, so
that the host's bounded waits, which name what they waited for, end a stuck job first; NCCL's timeout is
the backstop for a kernel that never ends while no host wait is running."""
NCCL_SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
"""NVLink multicast off: on shared hosts a program using it can take the GPUs out of service."""


@dataclass(frozen=True)
class Place:
    rank: int
    size: int
    local_rank: int
    launcher: str


def place() -> Place | None:
    """Where this process sits in a launched job, or None when no launcher started it."""
    for rank_var, size_var, local_var in _LAUNCHERS:
        if os.environ.get(rank_var, "").isdigit() and os.environ.get(size_var, "").isdigit():
            local = os.environ.get(local_var, "0")
            return Place(int(os.environ[rank_var]), int(os.environ[size_var]), int(local) if local.isdigit() else 0,
                         rank_var)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _rendezvous_over_mpi() -> None:
    """mpirun gives no MASTER_ADDR/PORT: rank 0 picks them and broadcasts them over MPI."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    addr = comm.bcast((socket.gethostname(), _free_port()) if comm.rank == 0 else None, root=0)
    os.environ.setdefault("MASTER_ADDR", addr[0])
    os.environ.setdefault("MASTER_PORT", str(addr[1]))


def init(backend: str, timeout_s: float) -> Place:
    """Join the job's process group (NCCL on GPUs, gloo on CPUs), binding this rank to its local GPU.
    `timeout_s` bounds every collective (NCCL's: `collective_timeout_s`): a dead peer ends the job with an
    error, never a hang."""
    import torch
    import torch.distributed as dist

    for key, value in NCCL_SAFE_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    where = place() or Place(0, 1, 0, "none")
    if dist.is_initialized():
        return where
    kwargs = {}
    if "MASTER_ADDR" not in os.environ:
        if where.size == 1:  # a job of one process: an in-memory store, no rendezvous
            kwargs["store"] = dist.HashStore()
        else:
            _rendezvous_over_mpi()
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise RunFailure("real: backend nccl needs CUDA GPUs and none is visible")
        torch.cuda.set_device(where.local_rank % torch.cuda.device_count())
        kwargs["device_id"] = torch.device("cuda", torch.cuda.current_device())
    dist.init_process_group(backend, rank=where.rank, world_size=where.size,
                            timeout=datetime.timedelta(seconds=collective_timeout_s(backend, timeout_s)), **kwargs)
    return where


def collective_timeout_s(backend: str, timeout_s: float) -> float:
    """The timeout given to a process group of `backend` for a job whose waits are bounded by timeout_s."""
    return timeout_s * NCCL_TIMEOUT_FACTOR if backend == "nccl" else timeout_s


def finish() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _stderr_fd() -> int:
    """Our stderr's descriptor, or /dev/null where stderr is not a file (an embedding host's capture)."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return subprocess.DEVNULL


def launch(ranks: int, argv: list[str], timeout_s: float | None = None, env: dict | None = None) -> None:
    """Start `ranks` processes of `python -m moe argv...` under torchrun on this host and wait. Their
    stdout goes to our stderr (our stdout may have to hold one JSON object); `env` adds variables."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
           "-m", "moe", *argv]
    env = {**os.environ, **NCCL_SAFE_ENV, **(env or {})}
    try:
        proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=_stderr_fd(), timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise RunFailure(f"real: {' '.join(argv[:2])} on {ranks} ranks did not finish in {timeout_s:g} s") from None
    if proc.returncode != 0:
        raise RunFailure(f"real: {' '.join(argv[:2])} on {ranks} ranks failed (torchrun exit {proc.returncode}); "
                         "the failing rank's error is printed above")
