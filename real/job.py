"""One rank's part of a `real` run: the emulator's Job (`emu.job`) over a torch.distributed transport.

The runtime (`emu.runtime`), the protocol (`emu.dispatch`) and the reduction to a Result (`emu.report`) are
the emulator's; what differs here:
- options: `real.warmup`, `real.repeats`, `real.timeout_s` take the place of the `emu.*` ones, and the
  device is the rank's GPU (NCCL) or the CPU (gloo); fault injection uses the `emu.fail_*` keys;
- timing on a GPU: CUDA events (`real.timing.CudaClock`). A step is timed from an event recorded right
  after the barrier (every rank's GPU idle, hosts released together) to an event recorded once the compute
  stream has waited for every transfer of the step; spans and layer ends are events on the streams;
- on a GPU the model's calls are replayed CUDA graphs (`moe.model.graphs`; `real.graphs`).
"""

from __future__ import annotations

import torch

from emu.job import Job, RankRecord, inputs
from moe.model.graphs import ModelCalls
from moe.spec.schema import Scenario
from real.timing import CudaClock
from real.transport import RealTransport


def runtime_scenario(scenario: Scenario, device: str) -> Scenario:
    """The scenario as emu's Job and runtime read it: the real.* run options in the emu section."""
    r = scenario.real
    # replayed graphs: each routing pattern's shapes run eagerly once and are captured the next time
    warmup = max(r.warmup, 2 * scenario.workload.steps) if r.graphs and device == "cuda" else r.warmup
    emu = scenario.emu.model_copy(update={"warmup": warmup, "repeats": r.repeats, "timeout_s": r.timeout_s,
                                          "device": device})
    return scenario.model_copy(update={"emu": emu})


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from emu.report import cpu_name

    return cpu_name()


class RealJob(Job):
    def __init__(self, scenario: Scenario, tr: RealTransport, plan=None, model=None):
        device = "cuda" if tr.device.type == "cuda" else "cpu"
        super().__init__(runtime_scenario(scenario, device), tr, plan=plan, model=model)
        if self.device != tr.device:
            raise RuntimeError(f"rank {tr.rank}: computing on {self.device} but the transport is on {tr.device}")
        self.tr: RealTransport = tr
        self.runtime.calls = ModelCalls(self.device, tr.rank, graphs=scenario.real.graphs)
        if self.device.type == "cuda":
            self.clock = CudaClock(tr.now, tr.rank, moe_from=scenario.model.dense_layers)
            self.runtime.clock = self.clock
            tr.timing = self._transport_event

    def _transport_event(self, name: str, key: int, start, end) -> None:
        mbs = len(self.layout.micro_batches)
        self.clock.add_events(name, start, end, self.s.model.dense_layers + key // mbs, key % mbs)

    def step(self, pattern: int, record: bool, index: int = 0) -> tuple[torch.Tensor, object]:
        s, tr = self.s, self.tr
        x_TD = inputs(s, pattern, tr.rank, tr.size, self.device)
        tr.reset()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # host sync: the GPU is idle when the step starts
        tr.barrier(s.emu.timeout_s)
        self.clock.start_step(index, record)
        with torch.inference_mode():
            out, stats = self.runtime.step(x_TD, pattern, s.seed)
            tr.join()  # the step ends when its last transfer has
        if isinstance(self.clock, CudaClock):
            stats.end_s = self.clock.elapsed()
            self.clock.resolve(stats, s.emu.timeout_s, tr.rank)
        else:
            stats.end_s = self.clock.elapsed()
        return out, stats

    def run(self) -> RankRecord:
        rec = super().run()
        rec.device = f"{self.device} ({device_name(self.device)})"
        if isinstance(self.clock, CudaClock):
            rec.phase_s.update({f"host_{k}": v for k, v in self.clock.host_s.items()})
        return rec
