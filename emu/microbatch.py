"""How a rank's tokens split into sequences and micro-batches, and their KV caches.

Shape letters: T tokens per rank (sequence-major: token b * L + l is token l of sequence b), B sequences,
L new tokens per sequence, M micro-batches.

prefill: B = ceil(T / context_len) sequences of L = T / B new tokens (moe.spec.sizes.sequences_per_gpu);
decode: B = T sequences of one new token each, after context_len cached tokens (synthetic cache values).
Micro-batches take whole sequences when B >= M; otherwise every sequence is cut into M chunks of
consecutive positions (chunked prefill), and chunk i of a layer can only attend once chunk i - 1 has
written its keys, so micro-batch i runs a layer's attention after micro-batch i - 1 (`after`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from moe.errors import SpecError
from moe.model.attention import KVCache
from moe.spec import sizes
from moe.spec.schema import Scenario


@dataclass(frozen=True)
class MicroBatch:
    index: int
    tokens_T: torch.Tensor
    """Indices of its tokens among the rank's T tokens (ascending)."""
    group: int
    """Which KV-cache group (one cache per layer per group) its sequences live in."""
    after: int | None
    """Micro-batch that must run a layer's attention before this one (chunked prefill), or None."""


@dataclass(frozen=True)
class Layout:
    sequences: int
    new_per_sequence: int
    cached: int
    """Tokens already in each sequence's cache when the step starts (decode: context_len)."""
    micro_batches: list[MicroBatch]
    group_sequences: list[int]
    """Sequences per cache group."""


def layout(scenario: Scenario) -> Layout:
    w, m = scenario.workload, scenario.schedule.micro_batches
    t, b = w.tokens_per_gpu, sizes.sequences_per_gpu(scenario)
    if t % b:
        raise SpecError("workload.tokens_per_gpu", t, f"must split evenly into the {b} sequences of "
                        f"context_len={w.context_len} per rank")
    l = t // b
    cached = w.context_len if w.phase == "decode" else 0
    if b < m and l < m:
        raise SpecError("schedule.micro_batches", m, f"more than the {l} tokens of each of the {b} sequences")
    tokens = [torch.from_numpy(x) for x in sizes.micro_batch_tokens(scenario)]
    if b >= m:
        groups = [len(x) for x in np.array_split(np.arange(b), m)]
        return Layout(b, l, cached, [MicroBatch(i, x, i, None) for i, x in enumerate(tokens)], groups)
    return Layout(b, l, cached, [MicroBatch(i, x, 0, i - 1 if i else None) for i, x in enumerate(tokens)], [b])


def full_caches(model, lay: Layout, seed: int) -> list[KVCache]:
    """One cache per block for all B sequences of the rank (what the reference forward uses); decode
    caches hold `cached` synthetic tokens, keyed by (seed, block)."""
    caches = model.new_caches(lay.sequences, lay.cached + lay.new_per_sequence)
    if lay.cached:
        for i, c in enumerate(caches):
            c.fill_synthetic(lay.cached, seed * 1000 + i)
    return caches


def new_caches(model, lay: Layout, seed: int) -> list[list[KVCache]]:
    """caches[group][block] for one step: `full_caches` split into the micro-batch groups' sequences."""
    full = full_caches(model, lay, seed)
    if len(lay.group_sequences) == 1:
        return [full]
    starts = np.concatenate([[0], np.cumsum(lay.group_sequences)])
    return [[KVCache(c.data_BSW[starts[g]:starts[g + 1]].clone(), c.length) for c in full]
            for g in range(len(lay.group_sequences))]


def rewind(caches: list[list[KVCache]], lay: Layout) -> list[list[KVCache]]:
    """Caches from `new_caches`, back to a step's start: `lay.cached` tokens (the synthetic context is
    never overwritten: a step appends after it). A rank builds its caches once and rewinds them at each
    step, so that a step's time is the forward pass, not the fabrication of its context."""
    for group in caches:
        for c in group:
            c.length = lay.cached
    return caches
