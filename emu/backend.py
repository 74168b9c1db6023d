"""The `emu` backend: `run` and `calibrate` as moe.backends expects them.

    mpiexec -n N moetb run SPEC --backend emu      every rank runs its part; rank 0 returns the output
    moetb run SPEC --backend emu [--ranks N]       starts `mpiexec -n N python -m moe run ...` itself
                                                   (N: --ranks, else emu.ranks, else cluster GPUs);
                                                   N = 1 runs in this process
"""

from __future__ import annotations

import os

from emu.launch import hand_off, launch_calibrate, launch_run, launched_size
from moe.backends import RunOutput
from moe.errors import SpecError
from moe.spec.schema import Scenario


def _transport(single: bool):
    from mpi4py import MPI

    from emu.mpi_transport import MPITransport

    return MPITransport(MPI.COMM_SELF if single else MPI.COMM_WORLD)


def run_ranks(scenario: Scenario, tr) -> RunOutput | None:
    """Every rank of a job: run, gather the records on rank 0, which builds the output."""
    from emu.faults import abort_on_error
    from emu.job import Job
    from emu.report import build_output

    with abort_on_error(tr):
        job = Job(scenario, tr)
        record = job.run()
        records = tr.gather(record, scenario.emu.timeout_s)
        output = build_output(scenario, job.plan, records, tr.name) if tr.rank == 0 else None
    if output is not None:
        hand_off(output)
    return output


CPU_WEIGHT_COPIES = 5
"""Host bytes per FP8 weight byte of a CPU run: the FP8 weights plus the float32 copy moe.model.linear
keeps on CPUs for its dequantize path (4 bytes per FP8 byte)."""


def check_host_memory(scenario: Scenario, ranks: int) -> None:
    """Refuse, with the key to change, a CPU run whose ranks' weights and KV caches cannot fit this host
    (e.g. the `paper` model on a laptop), instead of swapping or being killed."""
    import torch

    from moe.spec import sizes

    if scenario.emu.device == "cuda" or (scenario.emu.device == "auto" and torch.cuda.is_available()):
        return
    mem = sizes.memory_per_gpu(scenario)
    weights = sum(mem[k] for k in ("attention_bytes", "dense_ffn_bytes", "gate_and_shared_bytes",
                                   "routed_expert_bytes"))
    need = ranks * (CPU_WEIGHT_COPIES * weights + mem["kv_cache_bytes"] + mem["buffer_bytes"])
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have:
        raise SpecError("model.preset", scenario.model.preset,
                        f"{ranks} CPU ranks of this model need about {need / 1e9:.0f} GB of host memory and "
                        f"this host has {have / 1e9:.0f} GB; use a smaller model (model.preset=tiny) or GPUs")


def wanted_ranks(scenario: Scenario, ranks: int | None) -> int:
    n = ranks or scenario.emu.ranks or scenario.cluster.gpus
    if n != scenario.cluster.gpus:
        raise SpecError("--ranks" if ranks else "emu.ranks", n,
                        f"the emulator runs one rank per GPU and the cluster has {scenario.cluster.gpus} "
                        "(set cluster.nodes and cluster.gpus_per_node to match)")
    return n


def run(scenario: Scenario, *, ranks: int | None = None) -> RunOutput | None:
    size = launched_size()
    if size is not None:  # already one rank of an mpiexec job
        if ranks and ranks != size:
            raise SpecError("--ranks", ranks, f"this process is one of {size} ranks started by a launcher")
        from emu.job import ranks_on_host

        check_host_memory(scenario, ranks_on_host(size))
        return run_ranks(scenario, _transport(single=False))
    n = wanted_ranks(scenario, ranks)
    check_host_memory(scenario, n)
    if n == 1:
        return run_ranks(scenario, _transport(single=True))
    output = launch_run(scenario, n)
    from moe.spec import scenario_dict, spec_hash

    output.result.spec, output.result.spec_hash = scenario_dict(scenario), spec_hash(scenario)
    return output


def calibrate(*, ranks: int | None = None, quick: bool = False) -> dict | None:
    """Microbenchmarks of this machine -> a cpu-host-style profile (emu.calibrate). Outside a launcher it
    starts `ranks` (default: one per core, at least 2) ranks itself."""
    size = launched_size()
    if size is None:
        n = ranks or max(2, os.cpu_count() or 2)
        return launch_calibrate(n, quick)
    from emu.calibrate import calibrate_ranks
    from emu.faults import abort_on_error

    tr = _transport(single=False)
    with abort_on_error(tr):
        return calibrate_ranks(tr, quick=quick)
