"""One rank's part of an emulator run: set up (device, threads, plan, model), warm up, time the steps,
and send what it measured to rank 0.

Timing discipline: every step starts with a barrier and this rank's clock (MPI.Wtime) read right after
it; warm-up steps (emu.warmup) are run but not recorded; emu.repeats x workload.steps steps are recorded
(step i uses routing pattern i mod workload.steps). Rank 0 takes the median of the per-step maxima.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

import numpy as np
import torch

from emu import dispatch as dp
from emu.faults import check_fault_options
from emu.launch import local_rank
from emu.microbatch import layout
from emu.plan import RunPlan, build_plan
from emu.runtime import RankRuntime
from emu.timing import PhaseClock
from emu.transport import Transport
from moe.errors import SpecError
from moe.hostprobe import host_probe_s
from moe.model.fp8 import wire_bytes_per_token
from moe.model.model import from_scenario, hidden_states
from moe.result import Span
from moe.spec.schema import Scenario


@dataclass
class RankRecord:
    """What one rank sends to rank 0."""

    rank: int
    host: str
    device: str
    step_s: list[float] = field(default_factory=list)
    layer_end_s: list[list[float]] = field(default_factory=list)
    phase_s: dict[str, float] = field(default_factory=dict)
    """Seconds per phase name, summed over the recorded steps."""
    moe_phase_s: dict[str, float] = field(default_factory=dict)
    """The same, MoE layers and waits only."""
    peak_memory_bytes: int = 0
    mpi_s: float = 0.0
    """Seconds inside transport calls (posting, testing) over the recorded steps, waits excluded."""
    host_probe_s: float = 0.0
    """moe.hostprobe's reference time on this rank: the mean of one probe before the recorded steps and
    one after."""
    pair_rows_PJR: np.ndarray | None = None
    """This rank's row of the measured token matrix, per routing pattern and MoE layer."""
    requests_PJ: np.ndarray | None = None
    """(token, expert) requests this rank computed, per pattern and MoE layer."""
    spans: list[Span] = field(default_factory=list)
    """Spans of the last recorded step."""
    messages: int = 0


def pick_device(option: str) -> torch.device:
    """cuda when asked (or auto and present): rank i of a host uses device i mod the host's devices."""
    if option == "cpu" or (option == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SpecError("emu.device", option, "no CUDA device is available")
    index = local_rank() % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def set_threads(ranks_on_host: int, threads: int = 0) -> int:
    """`threads` intra-op threads, or (0) share the host's cores among its ranks: one thread pool per rank
    of the core count oversubscribes, and a spinning OpenMP pool on a busy core costs milliseconds per op."""
    n = threads or max(1, (os.cpu_count() or 1) // max(1, ranks_on_host))
    torch.set_num_threads(n)
    return n


def ranks_on_host(size: int) -> int:
    value = os.environ.get("MPI_LOCALNRANKS") or os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE")
    return int(value) if value and value.isdigit() else size


def peak_memory_bytes(device: torch.device) -> int:
    """Peak device memory of this rank: CUDA's allocator peak, or the process's peak resident set."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def inputs(scenario: Scenario, pattern: int, rank: int, ranks: int, device) -> torch.Tensor:
    """This rank's input hidden states of routing pattern `pattern` (stream = pattern * ranks + rank)."""
    return hidden_states(scenario.model, scenario.workload.tokens_per_gpu, scenario.seed,
                         pattern * ranks + rank, device=device)


class Job:
    """Everything one rank holds for a run."""

    def __init__(self, scenario: Scenario, tr: Transport, plan: RunPlan | None = None, model=None):
        """`plan` and `model` (built with this rank's experts on the chosen device) may be passed in to
        reuse them across runs of the same scenario (tests)."""
        if scenario.cluster.gpus != tr.size:
            raise SpecError("cluster.gpus_per_node", scenario.cluster.gpus_per_node,
                            f"the emulator runs one rank per GPU: cluster has {scenario.cluster.gpus} GPUs "
                            f"(nodes x gpus_per_node) but the job has {tr.size} ranks")
        check_fault_options(scenario.emu, tr.size)
        self.s, self.tr = scenario, tr
        self.device = pick_device(scenario.emu.device)
        local = ranks_on_host(tr.size)
        threads = set_threads(local, scenario.emu.threads)
        if local * threads > (os.cpu_count() or 1):
            tr.spin_s = 0.0  # oversubscribed: a spinning rank would take the core from the one it waits for
        self.plan = build_plan(scenario, tr.rank) if plan is None else plan
        self.model = model if model is not None else from_scenario(
            scenario, experts=self.plan.held_experts(tr.rank), device=self.device)
        self.layout = layout(scenario)
        m, sched = scenario.model, scenario.schedule
        tr.prepare(len(self.layout.micro_batches),
                   max(len(mb.tokens_T) for mb in self.layout.micro_batches) * min(m.top_k, tr.size),
                   dp.row_bytes(m.hidden, sched.dispatch_dtype, m.top_k),
                   wire_bytes_per_token(m.hidden, sched.combine_dtype))
        self.clock = PhaseClock(tr.now, tr.rank, moe_from=scenario.model.dense_layers)
        self.runtime = RankRuntime(scenario, tr, self.plan, self.model, self.layout, self.clock, self.device)

    def step(self, pattern: int, record: bool, index: int = 0) -> tuple[torch.Tensor, object]:
        x_TD = inputs(self.s, pattern, self.tr.rank, self.tr.size, self.device)
        self.tr.barrier(self.s.emu.timeout_s)
        self.clock.start_step(index, record)
        with torch.inference_mode():
            return self.runtime.step(x_TD, pattern, self.s.seed)

    def run(self) -> RankRecord:
        s, tr = self.s, self.tr
        patterns = s.workload.steps
        for i in range(s.emu.warmup):
            self.step(i % patterns, record=False)
        rec = RankRecord(rank=tr.rank, host=socket.gethostname(), device=str(self.device))
        rec.pair_rows_PJR = np.zeros((patterns, s.model.moe_layers, tr.size), dtype=np.int64)
        rec.requests_PJ = np.zeros((patterns, s.model.moe_layers), dtype=np.int64)
        probe0 = host_probe_s()
        mpi0, msgs0 = getattr(tr, "busy_s", 0.0), getattr(tr, "messages_posted", 0)
        for i in range(s.emu.repeats * patterns):
            _, stats = self.step(i % patterns, record=True, index=i)
            rec.step_s.append(stats.end_s)
            rec.layer_end_s.append(list(stats.layer_end_s))
            rec.pair_rows_PJR[i % patterns] = stats.pair_rows_JR
            rec.requests_PJ[i % patterns] = stats.requests_J
        rec.phase_s = dict(self.clock.totals_s)
        rec.moe_phase_s = dict(self.clock.moe_totals_s)
        rec.peak_memory_bytes = peak_memory_bytes(self.device)
        rec.mpi_s = getattr(tr, "busy_s", 0.0) - mpi0
        rec.messages = getattr(tr, "messages_posted", 0) - msgs0
        rec.spans = list(self.clock.spans)
        rec.host_probe_s = (probe0 + host_probe_s()) / 2
        return rec
