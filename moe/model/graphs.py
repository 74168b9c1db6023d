"""CUDA-graph replay of fixed-shape work: the model's calls whose shapes a (layer, micro-batch) fixes and the
routed experts on padded row counts (`ModelCalls`), and the nvshmem transport's op and counts
(`real.transport`), each captured once per key and replayed with one host call instead of one per operation.

Why: on the H100 nodes every torch call costs the host 8-37 us or more (`benchmarks/real_host_time.py ops`),
so an eager attention call costs the host about 3 ms whatever its size, while the device needs 0.5 ms for
256 tokens (`benchmarks/measured/h100-2026-11-27b/graph_ops.log`): the step waits for the host, not the GPU.
Serving runtimes replay CUDA graphs for the same reason.

`Replays.run(key, body, *inputs)` runs body(*inputs) eagerly on a key's first use (it warms the kernels and
allocates what they need), captures it on the second and replays it after that. A captured body reads its
inputs from fixed buffers: inputs that are a replay's outputs (stable buffers) are read where they are,
others are cloned once at capture and copied into at each replay (one host call; skipped when the caller
passes the buffer itself). The outputs are the same tensors at every replay, rewritten in place, so a
key's outputs are valid until its next replay: keys must separate whatever is alive at once (the runtime
keys by layer and micro-batch). Host-side effects of a body (Python state) happen at the eager run and at
capture only; `ModelCalls.attention` redoes the one it has (the cache's length). Each graph keeps its own
memory pool (replays never share intermediates, whatever their order), except the expert calls': they
share one, since each writes its output to a fixed buffer that is read before the next expert call.
Capture runs on a side stream; where it fails, the key runs eagerly from then on, said once on stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Hashable
from typing import Any

import torch

from moe.model.fp8 import Fp8Act
from moe.spec.sizes import graph_rows

WARM, EAGER = "warm", "eager"
STAGING_ROWS = 4096
"""Rows the expert calls' fixed buffers start with (growing them drops every expert graph)."""


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    return []


class Replays:
    def __init__(self, device: torch.device, rank: int, what: str = "nvshmem", shared_pool: bool = False):
        self.device, self.rank, self.what = device, rank, what
        self.pool = torch.cuda.graph_pool_handle() if shared_pool else None
        """One memory pool for every graph (`ModelCalls.expert`: bodies whose outputs are copied out at once,
        so no graph's memory is alive past its replay); None: a pool of its own per graph."""
        self.state: dict[Hashable, Any] = {}
        """key -> WARM after the first (eager) run; then (graph, static inputs, outputs, which inputs are read
        in place); EAGER where capture failed."""
        self.stable: set[int] = set()
        """Data pointers of every replay's outputs: inputs there are read in place."""
        self.side: torch.cuda.Stream | None = None
        """The one stream every capture runs on (the allocator reuses a block freed during a capture only
        on the stream that freed it, so a shared pool is shared only by captures on one stream)."""

    def clear(self) -> None:
        """Forget every graph (their buffers are about to change: a new job's). A shared pool is replaced
        too: the allocator releases a pool with its last graph, and a capture into a released pool fails
        (an internal assert of torch 2.11's CUDACachingAllocator, seen on H100)."""
        self.state, self.stable, self.side = {}, set(), None
        if self.pool is not None:
            self.pool = torch.cuda.graph_pool_handle()

    def _drop(self, key: Hashable) -> None:
        """Back to WARM: the graph goes, and its outputs' pointers leave `stable` (their memory may be reused)."""
        self.stable.difference_update(t.data_ptr() for t in _tensors(self.state[key][2]))
        self.state[key] = WARM

    def run(self, key: Hashable, body: Callable[..., Any], *inputs: torch.Tensor) -> Any:
        """body(*inputs) on the current stream: eagerly the first time, captured the second, replayed after."""
        state = self.state.get(key)
        if state is None or state == EAGER:
            self.state.setdefault(key, WARM)
            return body(*inputs)
        if state == WARM:
            in_place = tuple(t.data_ptr() in self.stable for t in inputs)
            statics = tuple(t if keep else t.clone() for t, keep in zip(inputs, in_place, strict=True))
            if self.side is None:
                self.side = torch.cuda.Stream(self.device)
            graph, side = torch.cuda.CUDAGraph(), self.side
            side.wait_stream(torch.cuda.current_stream(self.device))
            try:
                with torch.cuda.stream(side):
                    graph.capture_begin(pool=self.pool, capture_error_mode="thread_local")
                    try:
                        out = body(*statics)
                    finally:
                        graph.capture_end()
            except RuntimeError as err:
                print(f"moetb real: rank {self.rank}: {self.what} {key} not captured as a CUDA graph, runs "
                      f"eagerly ({str(err).splitlines()[0]})", file=sys.stderr)
                self.state[key], self.side = EAGER, None  # the next capture on a fresh stream
                return body(*inputs)
            state = self.state[key] = (graph, statics, out, in_place)
            self.stable.update(t.data_ptr() for t in _tensors(out))
        graph, statics, out, in_place = state
        for s, t, keep in zip(statics, inputs, in_place, strict=True):
            if s.data_ptr() != t.data_ptr():
                if keep:  # captured reading another replay's output in place, given another tensor now:
                    self._drop(key)  # never copy over that output; captured again at the next call
                    return body(*inputs)
                s.copy_(t)
        graph.replay()
        return out


class ModelCalls:
    """The runtime's model calls: the fixed-shape ones under a caller's `tag` that separates outputs alive at
    once (the runtime's (layer, micro-batch)), and the routed experts (`expert`). Eager on a CPU or with
    `graphs` off; on a GPU replayed CUDA graphs (`Replays`), keyed by the tag and the shapes (and, for
    attention, the cache and its length; for an expert, its padded rows)."""

    def __init__(self, device: torch.device | str, rank: int = 0, graphs: bool = True):
        self.device = torch.device(device)
        on = graphs and self.device.type == "cuda"
        self.replays = Replays(self.device, rank, "model call") if on else None
        self.expert_replays = Replays(self.device, rank, "expert call", shared_pool=True) if on else None
        self.staging: dict[Hashable, list[torch.Tensor]] = {}
        """Expert calls' fixed input and output buffers (the inputs' parts, then the output), by layout."""

    def clear(self) -> None:
        for r in (self.replays, self.expert_replays):
            if r is not None:
                r.clear()

    def _run(self, key: Hashable, body: Callable[..., Any], *inputs: torch.Tensor) -> Any:
        return body(*inputs) if self.replays is None else self.replays.run(key, body, *inputs)

    def attention(self, block, x_TD: torch.Tensor, cache, absorbed: bool | None, tag: Hashable) -> torch.Tensor:
        """block.attention(x_TD, cache, absorbed=absorbed); the cache's length advances as the call's does."""
        before = cache.length
        key = ("attention", tag, id(block), cache.data_BSW.data_ptr(), before, tuple(x_TD.shape), x_TD.dtype,
               absorbed)
        def body(x):
            cache.length = before  # so that an eager retry after a failed capture appends where it should
            return block.attention(x, cache, absorbed=absorbed)

        out = self._run(key, body, x_TD)
        cache.length = before + x_TD.shape[0] // cache.batch  # a replay does not run the Python that does it
        return out

    def dense(self, block, x_TD: torch.Tensor, tag: Hashable) -> torch.Tensor:
        """x + dense FFN(ffn_norm(x)), summed in float32, in x's dtype."""
        def body(x):
            return (x.float() + block.dense_forward(block.ffn_input(x)).float()).to(x.dtype)

        return self._run(("dense", tag, id(block), tuple(x_TD.shape), x_TD.dtype), body, x_TD)

    def gate(self, block, x_TD: torch.Tensor, ids_TK: torch.Tensor, tag: Hashable) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_TD = ffn_norm(x), weights_TK of the given expert ids), as `Block.route(z, ids)` computes the
        weights, without its range check of the ids (a host synchronization)."""
        def body(x, ids):
            z = block.ffn_input(x)
            return z, block.gate.weights(block.gate.scores(z), ids)

        key = ("gate", tag, id(block), tuple(x_TD.shape), x_TD.dtype, tuple(ids_TK.shape))
        return self._run(key, body, x_TD, ids_TK)

    def expert(self, block, expert: int, x: torch.Tensor | Fp8Act, rows_R: torch.Tensor) -> torch.Tensor:
        """block.expert_forward(expert, x[rows_R]) [R, D] for a shard's rows x (FP8 payload + scales, or a float
        tensor) and a device index tensor rows_R. Captured: the rows are gathered into fixed buffers of
        `graph_rows(R)` rows, one graph per (block, expert, padded rows) computes them into a fixed output,
        and the first R rows are returned: a view valid until the next expert call (read it at once). Every
        expert graph shares one memory pool and the buffers (`Replays(shared_pool=True)`)."""
        if self.expert_replays is None:
            return block.expert_forward(expert, x.index_select(rows_R) if isinstance(x, Fp8Act)
                                        else x.index_select(0, rows_R))
        r, fp8 = rows_R.shape[0], isinstance(x, Fp8Act)
        b = graph_rows(r)
        parts = (x.q_TD, x.scale_TG) if fp8 else (x,)
        *ins, out = self._staging(parts, b, block.act_dtype)
        for src, dst in zip(parts, ins, strict=True):
            torch.index_select(src, 0, rows_R, out=dst[:r])

        def body():
            x_b = Fp8Act(ins[0][:b], ins[1][:b]) if fp8 else ins[0][:b]
            return out[:b].copy_(block.expert_forward(expert, x_b))

        return self.expert_replays.run(("expert", id(block), expert, b, fp8, ins[0].dtype), body)[:r]

    def _staging(self, parts: tuple[torch.Tensor, ...], rows: int, out_dtype: torch.dtype) -> list[torch.Tensor]:
        """The fixed buffers of `parts`' layout with at least `rows` rows (zeros: the padding rows are
        finite), at first STAGING_ROWS. Grown to twice the rows at least; the graphs captured over the old
        ones are dropped."""
        layout = (tuple((p.dtype, tuple(p.shape[1:])) for p in parts), out_dtype)
        bufs = self.staging.get(layout)
        if bufs is None or bufs[0].shape[0] < rows:
            n = max(rows, 2 * bufs[0].shape[0]) if bufs is not None else max(rows, STAGING_ROWS)
            if bufs is not None:
                self.expert_replays.clear()
            bufs = [torch.zeros(n, *p.shape[1:], dtype=p.dtype, device=self.device) for p in parts]
            bufs.append(torch.zeros(n, parts[0].shape[1], dtype=out_dtype, device=self.device))
            self.staging[layout] = bufs
        return bufs

    def shared(self, block, z_TD: torch.Tensor, tag: Hashable) -> torch.Tensor | None:
        """The shared experts' float32 sum on z, or None without shared experts."""
        if block.shared is None:
            return None
        return self._run(("shared", tag, id(block), tuple(z_TD.shape), z_TD.dtype), block.shared_forward, z_TD)
