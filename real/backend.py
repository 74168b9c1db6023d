"""The `real` backend: the emulator's runtime on GPUs with an NCCL transport, and GPU calibration.

    torchrun --nproc-per-node G -m moe run SPEC --backend real       every rank runs its part; rank 0
    mpirun -n G moetb run SPEC --backend real                        writes the Result and trace
    moetb run SPEC --backend real [--ranks G]                        starts torchrun itself (G: --ranks,
                                                                     else the cluster's GPUs); 1 in-process
    torchrun --nproc-per-node G -m moe calibrate --backend real --out PROFILE.yaml
    moetb calibrate --backend real --ranks G --out PROFILE.yaml     (starts torchrun itself)

One process per GPU, NCCL between them (`real.transport`: `all_to_all` or `p2p`); without CUDA the same
code runs on CPU processes over gloo (tests). Fault injection (tests) uses the `emu.fail_*` keys.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import yaml

from moe.backends import RunOutput
from moe.errors import SpecError
from moe.spec.schema import Scenario
from real import dist


def dist_backend() -> str:
    """nccl where CUDA GPUs are visible, gloo otherwise."""
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def machine_name(records) -> str:
    """'4 x NVIDIA H100 80GB HBM3' (GPU name x count, per kind), and the hosts."""
    names = Counter(r.device.split(" (", 1)[1].rstrip(")") if " (" in r.device else r.device for r in records)
    hosts = sorted({r.host for r in records})
    kinds = ", ".join(f"{n} x {name}" for name, n in names.items())
    return f"{kinds} on {len(hosts)} host{'s' if len(hosts) > 1 else ''} ({', '.join(hosts)})"


def run_ranks(scenario: Scenario, transport: str | None = None) -> RunOutput | None:
    """Every rank of a launched job (or the only one): join the process group, run, gather on rank 0."""
    import torch

    from emu.faults import abort_on_error
    from emu.launch import hand_off
    from emu.report import build_output
    from real.groups import forget_process_groups, process_groups
    from real.job import RealJob
    from real.transport import RealTransport

    backend, timeout_s = dist_backend(), scenario.real.timeout_s
    dist.init(backend, timeout_s=timeout_s)
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    tr = RealTransport(process_groups(backend, timeout_s), transport or scenario.real.transport, device, timeout_s)
    with abort_on_error(tr, "real"):
        job = RealJob(scenario, tr)
        record = job.run()
        records = tr.gather(record, timeout_s)
        output = None
        if tr.rank == 0:
            output = build_output(scenario, job.plan, records, tr.name, backend="real", machine=machine_name(records))
        tr.barrier(timeout_s)
    dist.finish()
    forget_process_groups()
    if output is not None:
        hand_off(output)
    return output


def wanted_ranks(scenario: Scenario, ranks: int | None) -> int:
    n = ranks or scenario.cluster.gpus
    if n != scenario.cluster.gpus:
        raise SpecError("--ranks", n, f"the real backend runs one rank per GPU and the cluster has "
                        f"{scenario.cluster.gpus} (set cluster.nodes and cluster.gpus_per_node to match)")
    return n


def run(scenario: Scenario, *, ranks: int | None = None) -> RunOutput | None:
    """One scenario on GPUs (or CPU processes over gloo). Under a launcher every rank runs its part and
    rank 0 returns the output; outside one, `ranks` processes are started with torchrun (one runs here)."""
    where = dist.place()
    if where is not None:
        if ranks and ranks != where.size:
            raise SpecError("--ranks", ranks, f"this process is one of {where.size} ranks started by a launcher")
        return run_ranks(scenario)
    n = wanted_ranks(scenario, ranks)
    if n == 1:
        return run_ranks(scenario)
    import pickle

    from emu.launch import HANDOFF_ENV, spec_for_child
    from moe.errors import RunFailure
    from moe.spec import scenario_dict, spec_hash

    with tempfile.TemporaryDirectory(prefix="moetb-real-") as tmp:
        spec_path, handoff = Path(tmp) / "spec.yaml", Path(tmp) / "output.pkl"
        spec_path.write_text(yaml.safe_dump(spec_for_child(scenario), sort_keys=False))
        dist.launch(n, ["run", str(spec_path), "--backend", "real", "--out", str(Path(tmp) / "out")],
                    env={HANDOFF_ENV: str(handoff)})
        if not handoff.exists():
            raise RunFailure("real: the launched job ended without handing back a result")
        with handoff.open("rb") as f:
            output = pickle.load(f)
    output.result.spec, output.result.spec_hash = scenario_dict(scenario), spec_hash(scenario)
    return output


def calibrate(*, ranks: int | None = None, quick: bool = False, scenarios: tuple[str, ...] = ()) -> dict | None:
    """Microbenchmarks of this GPU node -> a profile mapping (real.calibrate). Under a launcher every rank
    measures and rank 0 returns the mapping; outside one, `ranks` (default: every visible GPU) processes
    are started with torchrun."""
    if dist.place() is None:
        import torch

        n = ranks or torch.cuda.device_count()
        if n < 1:
            from moe.errors import BackendUnavailable

            raise BackendUnavailable("real: calibration needs CUDA GPUs and none is visible")
        with tempfile.TemporaryDirectory(prefix="moetb-real-") as tmp:
            out = Path(tmp) / "profile.yaml"
            extra = (["--quick"] if quick else []) + [a for path in scenarios for a in ("--scenario", str(path))]
            dist.launch(n, ["calibrate", "--backend", "real", "--out", str(out)] + extra)
            return yaml.safe_load(out.read_text())
    from real.calibrate import calibrate_ranks

    dist.init("nccl", timeout_s=600)
    try:
        return calibrate_ranks(quick=quick, scenarios=scenarios)
    finally:
        dist.finish()
