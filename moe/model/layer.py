"""One transformer block and the interface the runtimes call; `Block.forward` is the single-device reference.

Shape letters: T tokens on this device (T = B L: B sequences of L new tokens), D hidden, K experts per
token, E routed experts, R rows given to one expert.

A block is pre-norm, as DeepSeek-V3:
    x = x + attn(attn_norm(x))                                   -> Block.attention
    z = ffn_norm(x)                                              -> Block.ffn_input
    dense layer:  x = x + dense(z)
    MoE layer:    ids_TK, w_TK = route(z)                        -> Block.route
                  y_TKD[t, k] = expert(ids[t, k])(z[t])          -> Block.expert_forward (after dispatch)
                  x = x + shared(z) + sum_k w[t, k] y[t, k]       -> Block.combine (after combine)
A distributed runtime calls these pieces with dispatch and combine between them; the reference
`Block.forward` calls the same pieces on one device with the same wire roundings, so the two agree up to
the order of floating-point sums. Routing slots a runtime drops (capacity) are passed as keep_TK = False:
their weight counts as 0 and their y is ignored.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from moe.model.attention import KVCache, RMSNorm, build_attention
from moe.model.ffn import SwiGLUBank
from moe.model.fp8 import Fp8Act, quantize_act, roundtrip
from moe.model.gate import Gate
from moe.spec.schema import Model


class Block(torch.nn.Module):
    """Layer `layer` of `model`. A MoE block holds the routed experts `experts` (default: all of them)."""

    def __init__(self, model: Model, seed: int, layer: int, *, experts: Sequence[int] | None = None,
                 device: torch.device | str = "cpu", act_dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        if not 0 <= layer < model.layers:
            raise ValueError(f"layer {layer} is outside model.layers={model.layers}")
        self.cfg, self.layer, self.act_dtype = model, layer, act_dtype
        self.is_moe = layer >= model.dense_layers
        self.attn_norm = RMSNorm(model.hidden, device)
        self.attn = build_attention(model, seed, layer, device)
        self.ffn_norm = RMSNorm(model.hidden, device)
        if self.is_moe:
            ids = range(model.experts) if experts is None else experts
            if any(not 0 <= int(e) < model.experts for e in ids):
                raise ValueError(f"expert ids must lie in [0, {model.experts}), got {list(ids)}")
            self.gate = Gate(model, seed, layer, device)
            self.experts = SwiGLUBank(model, seed, layer, "expert", ids, model.expert_hidden, device)
            self.shared = SwiGLUBank(model, seed, layer, "shared", range(model.shared_experts),
                                     model.expert_hidden, device) if model.shared_experts else None
        else:
            self.dense = SwiGLUBank(model, seed, layer, "dense", [0], model.dense_hidden, device)

    # ------------------------------------------------------------------------------ runtime interface
    def new_cache(self, batch: int, capacity: int) -> KVCache:
        return self.attn.new_cache(batch, capacity, self.attn_norm.weight.device)

    def attention(self, x_TD: torch.Tensor, cache: KVCache, positions_L: torch.Tensor | None = None,
                  absorbed: bool | None = None) -> torch.Tensor:
        """x + attention(attn_norm(x)) for T = B L new tokens (sequence-major) of the cache's B sequences.
        positions_L: rotary positions of the L new tokens (default: right after the cached ones); the
        causal order is the cache's slot order. `absorbed` None: MLA's absorbed form when the cache
        already held tokens (decode), the naive form otherwise."""
        b, t = cache.batch, x_TD.shape[0]
        if t % b:
            raise ValueError(f"{t} tokens do not split into the cache's {b} sequences")
        l = t // b
        if positions_L is None:
            positions_L = torch.arange(cache.length, cache.length + l, device=x_TD.device)
        elif positions_L.shape != (l,):
            raise ValueError(f"positions must be [L={l}], got {tuple(positions_L.shape)}")
        return x_TD + self.attn(self.attn_norm(x_TD), cache, positions_L, absorbed).to(x_TD.dtype)

    def ffn_input(self, x_TD: torch.Tensor) -> torch.Tensor:
        return self.ffn_norm(x_TD)

    def dense_forward(self, z_TD: torch.Tensor) -> torch.Tensor:
        return self.dense(0, z_TD, self.act_dtype)

    def route(self, z_TD: torch.Tensor, ids_TK=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids_TK int64, weights_TK float32); given `ids_TK` replace the gate's choice, not its weights."""
        return self.gate(z_TD, ids_TK)

    def expert_forward(self, expert: int, x: torch.Tensor | Fp8Act) -> torch.Tensor:
        """Routed expert `expert` (held here) on rows x [R, D]: bf16/float rows or FP8 payload + scales as
        received from the wire. Returns [R, D] in the activation dtype."""
        return self.experts(expert, x, self.act_dtype)

    def shared_forward(self, z_TD: torch.Tensor) -> torch.Tensor | None:
        if self.shared is None:
            return None
        out = self.shared(0, z_TD, torch.float32)
        for i in self.shared.ids[1:]:
            out = out + self.shared(i, z_TD, torch.float32)
        return out

    def combine(self, x_TD: torch.Tensor, y_TKD: torch.Tensor, weights_TK: torch.Tensor,
                shared_TD: torch.Tensor | None = None, keep_TK: torch.Tensor | None = None) -> torch.Tensor:
        """x + shared + sum_k w[t, k] y[t, k], summed in float32 in a fixed order, cast to x's dtype."""
        w_TK = weights_TK.float() if keep_TK is None else weights_TK.float() * keep_TK
        y_TKD = y_TKD.float()
        if keep_TK is not None:  # dropped slots may hold garbage; never let a NaN through a zero weight
            y_TKD = torch.where(keep_TK[..., None], y_TKD, 0.0)
        out = x_TD.float() + (y_TKD * w_TK[..., None]).sum(dim=1)
        if shared_TD is not None:
            out = out + shared_TD.float()
        return out.to(x_TD.dtype)

    # ---------------------------------------------------------------------------------- reference
    def moe_local(self, z_TD: torch.Tensor, ids_TK: torch.Tensor, keep_TK: torch.Tensor | None = None,
                  wire: tuple[str, str] = ("fp8", "bf16")) -> torch.Tensor:
        """y_TKD of every (token, slot) computed here, grouping rows by expert as a dispatch would, with the
        dispatch and combine wire roundings `wire` = (dispatch_dtype, combine_dtype)."""
        t, k = ids_TK.shape
        y_SD = torch.zeros(t * k, z_TD.shape[1], dtype=self.act_dtype, device=z_TD.device)
        flat = ids_TK.reshape(-1)
        live = torch.ones_like(flat, dtype=torch.bool) if keep_TK is None else keep_TK.reshape(-1)
        payload = quantize_act(z_TD) if wire[0] == "fp8" else roundtrip(z_TD, "bf16")
        order = torch.argsort(torch.where(live, flat, self.cfg.experts), stable=True)
        counts = torch.bincount(flat[live], minlength=self.cfg.experts).tolist()  # host sync: loop bounds
        start = 0
        for e, n in enumerate(counts):
            if n:
                slots = order[start:start + n]
                rows = slots // k
                x = payload.index_select(rows) if isinstance(payload, Fp8Act) else payload.index_select(0, rows)
                y_SD[slots] = roundtrip(self.expert_forward(e, x), wire[1])
            start += n
        return y_SD.view(t, k, -1)

    def forward(self, x_TD: torch.Tensor, cache: KVCache, positions_L: torch.Tensor | None = None, *,
                ids_TK=None, keep_TK: torch.Tensor | None = None,
                wire: tuple[str, str] = ("fp8", "bf16")) -> torch.Tensor:
        """The whole block on one device (every expert it routes to must be held here)."""
        x_TD = self.attention(x_TD, cache, positions_L)
        z_TD = self.ffn_input(x_TD)
        if not self.is_moe:
            return (x_TD.float() + self.dense_forward(z_TD).float()).to(x_TD.dtype)
        ids_TK, w_TK = self.route(z_TD, ids_TK)
        y_TKD = self.moe_local(z_TD, ids_TK, keep_TK, wire)
        return self.combine(x_TD, y_TKD, w_TK, self.shared_forward(z_TD), keep_TK)

    @property
    def weight_bytes(self) -> int:
        return sum(b.nbytes for b in self.buffers())
