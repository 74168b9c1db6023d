"""The whole stack of blocks, how to build all or part of it, and deterministic inputs.

Shape letters: T tokens (T = B L), D hidden, K experts per token.

The model works on hidden states: the testbed studies the transformer layers, so the embedding and the
output head (2 x vocab x hidden BF16, counted by moe.spec.sizes) are not built; inputs are random hidden
states from `hidden_states`. Building is deterministic per piece (moe.model.init):
  build_model(model, seed)                       every layer with all its experts (a tiny model only)
  build_model(model, seed, experts=[3, 7])       every layer with routed experts 3 and 7 only (a rank)
  build_model(model, seed, experts={3: [0], 4: [1]}, layers=[3, 4])   chosen layers and experts
  build_layer(model, seed, layer, experts=[5])   one block (a `paper` rank: one layer's local experts)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from moe.model import init
from moe.model.attention import KVCache
from moe.model.layer import Block
from moe.spec.schema import Model, Scenario

Experts = Sequence[int] | Mapping[int, Sequence[int]] | None


def build_layer(model: Model, seed: int, layer: int, *, experts: Sequence[int] | None = None,
                device: torch.device | str = "cpu", act_dtype: torch.dtype = torch.bfloat16) -> Block:
    """One block; a MoE block holds routed experts `experts` (default all)."""
    return Block(model, seed, layer, experts=experts, device=device, act_dtype=act_dtype)


class MoEModel(torch.nn.Module):
    """Blocks `layers` (default all) of `model`. `experts`: routed expert ids held in every MoE layer, or a
    mapping layer -> ids (missing layers hold none), or None for all of them."""

    def __init__(self, model: Model, seed: int, *, experts: Experts = None, layers: Sequence[int] | None = None,
                 device: torch.device | str = "cpu", act_dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.cfg, self.seed, self.act_dtype = model, seed, act_dtype
        self.layer_ids = list(range(model.layers)) if layers is None else [int(i) for i in layers]

        def held(layer: int) -> Sequence[int] | None:
            if isinstance(experts, Mapping):
                return experts.get(layer, ())
            return experts

        self.blocks = torch.nn.ModuleList(
            Block(model, seed, i, experts=held(i), device=device, act_dtype=act_dtype) for i in self.layer_ids)

    def block(self, layer: int) -> Block:
        return self.blocks[self.layer_ids.index(layer)]

    def new_caches(self, batch: int, capacity: int) -> list[KVCache]:
        """One KV cache per block for `batch` sequences of up to `capacity` tokens."""
        return [b.new_cache(batch, capacity) for b in self.blocks]

    def forward(self, x_TD: torch.Tensor, caches: Sequence[KVCache], *,
                routing: Mapping[int, object] | None = None, keep: Mapping[int, torch.Tensor] | None = None,
                wire: tuple[str, str] = ("fp8", "bf16")) -> torch.Tensor:
        """The reference forward step on one device: every block in order. `routing` maps a layer to given
        expert ids [T, K] (numpy or torch; weights still from the gate); `keep` a layer to a [T, K] bool
        mask of slots not dropped; `wire` = (dispatch_dtype, combine_dtype) roundings."""
        if len(caches) != len(self.blocks):
            raise ValueError(f"need one cache per block ({len(self.blocks)}), got {len(caches)}")
        routing, keep = routing or {}, keep or {}
        for block, cache in zip(self.blocks, caches, strict=True):
            x_TD = block(x_TD, cache, ids_TK=routing.get(block.layer), keep_TK=keep.get(block.layer), wire=wire)
        return x_TD


def build_model(model: Model, seed: int, *, experts: Experts = None, layers: Sequence[int] | None = None,
                device: torch.device | str = "cpu", act_dtype: torch.dtype = torch.bfloat16) -> MoEModel:
    return MoEModel(model, seed, experts=experts, layers=layers, device=device, act_dtype=act_dtype)


def from_scenario(scenario: Scenario, *, experts: Experts = None, layers: Sequence[int] | None = None,
                  device: torch.device | str = "cpu", act_dtype: torch.dtype = torch.bfloat16) -> MoEModel:
    """`scenario.model` with weights from `scenario.seed`."""
    return build_model(scenario.model, scenario.seed, experts=experts, layers=layers, device=device,
                       act_dtype=act_dtype)


def wire_dtypes(scenario: Scenario) -> tuple[str, str]:
    """(dispatch_dtype, combine_dtype) of the scenario's schedule, for the reference forward."""
    return scenario.schedule.dispatch_dtype, scenario.schedule.combine_dtype


def hidden_states(model: Model, tokens: int, seed: int, stream: int = 0, *, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Deterministic input hidden states [tokens, D] with unit variance. `stream` tells apart the inputs of
    different ranks or steps (e.g. stream = step * ranks + rank); the reference concatenates the ranks'
    streams in rank order."""
    key = init.piece_key(seed, -1, "input", stream)
    return init.uniform((tokens, model.hidden), [key], device, math.sqrt(3.0))[0].to(dtype)
