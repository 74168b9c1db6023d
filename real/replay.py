"""CUDA-graph replay of the nvshmem transport's fixed device work (`real.transport`): the op with its
splits, and the counts derivation, always on the same symmetric buffers of a slot, so each can be
captured once and replayed with one host call instead of one per operation.

On the H100 nodes every torch call costs the host 8-37 us or more (`benchmarks/real_host_time.py ops`), the
exchange is host-bound, and the derivation alone is about ten calls per micro-batch. A replay writes the
captured outputs in place, so a body's outputs are the same tensors every time; their reader (the host's
copy of the counts) finishes before the slot's next replay. Capture runs on a side stream (nothing runs
while capturing; the replay that follows does the work on the current stream). Where capture fails, the
body runs eagerly from then on, said once on stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Hashable
from typing import Any

import torch

WARM, EAGER = "warm", "eager"


class Replays:
    def __init__(self, device: torch.device, rank: int):
        self.device, self.rank = device, rank
        self.state: dict[Hashable, Any] = {}
        """key -> WARM after the first (eager) run, which warms its kernels up; then (graph, outputs); EAGER
        where capture failed."""

    def clear(self) -> None:
        """Forget every graph (their buffers are about to change: a new job's)."""
        self.state = {}

    def run(self, key: Hashable, body: Callable[[], Any]) -> Any:
        """body() on the current stream: eagerly the first time, captured the second, replayed after."""
        state = self.state.get(key)
        if state is None or state == EAGER:
            self.state.setdefault(key, WARM)
            return body()
        if state == WARM:
            graph, side = torch.cuda.CUDAGraph(), torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            try:
                with torch.cuda.stream(side):
                    graph.capture_begin(capture_error_mode="thread_local")
                    try:
                        out = body()
                    finally:
                        graph.capture_end()
            except RuntimeError as err:
                print(f"moetb real: rank {self.rank}: nvshmem {key} not captured as a CUDA graph, runs eagerly "
                      f"({str(err).splitlines()[0]})", file=sys.stderr)
                self.state[key] = EAGER
                return body()
            state = self.state[key] = (graph, out)
        graph, out = state
        graph.replay()
        return out
