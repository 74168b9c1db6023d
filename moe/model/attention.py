"""Attention: MLA (multi-head latent attention, DeepSeek-V2/V3) and plain MHA for comparison, with KV caches.

Shape letters: T = B L new tokens (sequence-major), B sequences, L new tokens per sequence, S keys per
sequence (cached + new), H heads, D hidden, C kv_latent, Q q_latent, dn head_dim (no rope), dr rope_dim,
dv v_head_dim, W cache width per token.

MLA: queries go through a low-rank latent (wq_a -> norm -> wq_b, or one wq when q_latent = 0); keys and
values through the KV latent c = norm(wkv_a(x)[:C]) plus one rotary key k_r = rope(wkv_a(x)[C:]) shared
by all heads. The cache keeps only [c, k_r] (W = C + dr per token). Two equivalent forms:
  naive     k_nope, v = wkv_b(c) per head; attention over [k_nope, k_r] (prefill: no cache to reread)
  absorbed  wkv_b's key half folded into the query (q_c = q_nope W_k) and its value half applied after
            attention, so attention runs over the cached latent directly as one KV head shared by the
            H query heads (decode: wkv_b is never applied to S cached tokens).
Scores are scaled by 1/sqrt(dn + dr) in both forms. MHA caches per-head keys (after rope) and values,
W = H (dn + dv). Rotary embeddings (RoFormer, Su et al. 2021) use base ROPE_THETA, rotate-half layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from moe.model import init
from moe.model.linear import Linear
from moe.spec.schema import Model

ROPE_THETA = 10000.0
"""Rotary base (RoFormer; DeepSeek-V3 uses the same base before its YaRN context extension, omitted)."""
NORM_EPS = 1e-6
"""RMSNorm epsilon (DeepSeek-V3 inference/model.py)."""
KV_DTYPES = {"bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn}
FP8_KV_MAX = 448.0
"""FP8 caches store values clamped to the e4m3 range with unit scale (the latent is RMS-normalized)."""


class RMSNorm(torch.nn.Module):
    def __init__(self, dim: int, device: torch.device | str):
        super().__init__()
        self.register_buffer("weight", torch.ones(dim, dtype=torch.float32, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + NORM_EPS) * self.weight).to(x.dtype)


def rope(x: torch.Tensor, positions_L: torch.Tensor) -> torch.Tensor:
    """Rotate the last dim of x [B, L, dim] or [B, L, H, dim] by each token's absolute position."""
    dim = x.shape[-1]
    inv = ROPE_THETA ** (-torch.arange(0, dim, 2, device=x.device, dtype=torch.float32) / dim)
    ang = (positions_L.to(torch.float32)[:, None] * inv[None, :])[None]  # [1, L, dim/2]
    if x.dim() == 4:
        ang = ang[:, :, None]  # [1, L, 1, dim/2]: the same angle for every head
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    xf = x.float()
    rot = torch.cat([-xf[..., dim // 2:], xf[..., :dim // 2]], -1)
    return (xf * cos + rot * sin).to(x.dtype)


@dataclass
class KVCache:
    """Keys/values of B sequences of equal length: data_BSW [B, capacity, W] in the cache dtype, filled up
    to `length`. One cache per layer."""

    data_BSW: torch.Tensor
    length: int = 0

    @property
    def batch(self) -> int:
        return self.data_BSW.shape[0]

    @property
    def capacity(self) -> int:
        return self.data_BSW.shape[1]

    @property
    def bytes_per_token(self) -> int:
        """Bytes the cache holds per token (payload of one row; there is no per-token metadata)."""
        return self.data_BSW.shape[2] * self.data_BSW.element_size()

    def append(self, new_BLW: torch.Tensor) -> torch.Tensor:
        """Store L new tokens per sequence; return all S = length + L keys [B, S, W] as the compute dtype
        sees them (after the cache dtype's rounding)."""
        b, l, _ = new_BLW.shape
        if b != self.batch or self.length + l > self.capacity:
            raise ValueError(f"KV cache holds {self.batch} sequences x {self.capacity} tokens with "
                             f"{self.length} used; cannot append {b} x {l}")
        stored = new_BLW
        if self.data_BSW.dtype == torch.float8_e4m3fn:
            stored = new_BLW.float().clamp(-FP8_KV_MAX, FP8_KV_MAX)
        self.data_BSW[:, self.length:self.length + l] = stored.to(self.data_BSW.dtype)
        self.length += l
        return self.data_BSW[:, :self.length].to(new_BLW.dtype)

    def fill_synthetic(self, length: int, seed: int) -> None:
        """Fill the first `length` tokens with deterministic unit-scale values, so a decode step can be
        run and timed without prefilling `length` tokens first."""
        if length > self.capacity:
            raise ValueError(f"KV cache capacity {self.capacity} < synthetic length {length}")
        b, _, w = self.data_BSW.shape
        vals = init.uniform((b * length * w,), [init.piece_key(seed, -1, "kv-synthetic")],
                            self.data_BSW.device, math.sqrt(3.0))
        self.data_BSW[:, :length] = vals.view(b, length, w).to(self.data_BSW.dtype)
        self.length = length


def _causal_mask(prior: int, new: int, device: torch.device) -> torch.Tensor | None:
    """Bool [L, S] over cache slots: new token l (slot prior + l) sees slots 0..prior + l. Causality follows
    the cache order (positions only set rotary angles). None when L = 1: the token sees every slot."""
    if new == 1:
        return None
    keys = torch.arange(prior + new, device=device)
    return keys[None, :] <= (prior + torch.arange(new, device=device))[:, None]


class MLA(torch.nn.Module):
    def __init__(self, model: Model, seed: int, layer: int, device: torch.device | str):
        super().__init__()
        a, d = model.attention, model.hidden
        self.heads, self.dn, self.dr, self.dv, self.c = a.heads, a.head_dim, a.rope_dim, a.v_head_dim, a.kv_latent
        self.q_latent, self.kv_dtype = a.q_latent, KV_DTYPES[a.kv_dtype]
        qk = self.dn + self.dr

        def lin(name: str, n: int, k: int) -> Linear:
            return Linear(init.weight(n, k, [init.piece_key(seed, layer, "attention", -1, name)], device)[0],
                          model.dtype)

        if a.q_latent:
            self.wq_a, self.q_norm, self.wq_b = lin("wq_a", a.q_latent, d), RMSNorm(a.q_latent, device), \
                lin("wq_b", self.heads * qk, a.q_latent)
        else:
            self.wq = lin("wq", self.heads * qk, d)
        self.wkv_a = lin("wkv_a", self.c + self.dr, d)
        self.kv_norm = RMSNorm(self.c, device)
        self.wkv_b = lin("wkv_b", self.heads * (self.dn + self.dv), self.c)
        self.wo = lin("wo", d, self.heads * self.dv)
        self.scale = 1.0 / math.sqrt(qk)

    @property
    def cache_width(self) -> int:
        return self.c + self.dr

    def new_cache(self, batch: int, capacity: int, device: torch.device | str) -> KVCache:
        return KVCache(torch.zeros(batch, capacity, self.cache_width, dtype=self.kv_dtype, device=device))

    def forward(self, x_TD: torch.Tensor, cache: KVCache, positions_L: torch.Tensor,
                absorbed: bool | None = None) -> torch.Tensor:
        b = cache.batch
        t = x_TD.shape[0]
        l, h = t // b, self.heads
        q = self.wq_b(self.q_norm(self.wq_a(x_TD))) if self.q_latent else self.wq(x_TD)
        q_nope, q_rope = q.view(b, l, h, -1).split([self.dn, self.dr], dim=-1)
        q_rope = rope(q_rope, positions_L)
        kv = self.wkv_a(x_TD).view(b, l, -1)
        c_new, kr_new = kv.split([self.c, self.dr], dim=-1)
        prior = cache.length
        lat_BSW = cache.append(torch.cat([self.kv_norm(c_new), rope(kr_new, positions_L)], dim=-1))
        s = lat_BSW.shape[1]
        mask = _causal_mask(prior, l, x_TD.device)
        if absorbed is None:
            absorbed = s > l  # cached tokens exist: decode (or a later chunk) reads the latent directly
        if absorbed:
            w_kv = self.wkv_b.dequantized(x_TD.dtype).view(h, self.dn + self.dv, self.c)
            w_k, w_v = w_kv[:, :self.dn], w_kv[:, self.dn:]
            q_c = torch.einsum("blhd,hdc->blhc", q_nope, w_k)
            q_abs = torch.cat([q_c, q_rope], dim=-1).reshape(b, 1, l * h, self.c + self.dr)
            mask_r = None if mask is None else mask.repeat_interleave(h, dim=0)
            o_lat = F.scaled_dot_product_attention(q_abs, lat_BSW[:, None], lat_BSW[:, None, :, :self.c],
                                                   attn_mask=mask_r, scale=self.scale)
            o = torch.einsum("blhc,hdc->blhd", o_lat.view(b, l, h, self.c), w_v)
        else:
            c_S, kr_S = lat_BSW.split([self.c, self.dr], dim=-1)
            kvb = self.wkv_b(c_S.reshape(b * s, self.c)).view(b, s, h, self.dn + self.dv)
            k_nope, v = kvb.split([self.dn, self.dv], dim=-1)
            k = torch.cat([k_nope, kr_S[:, :, None, :].expand(b, s, h, self.dr)], dim=-1)
            qf = torch.cat([q_nope, q_rope], dim=-1)
            o = F.scaled_dot_product_attention(qf.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               attn_mask=mask, scale=self.scale).transpose(1, 2)
        return self.wo(o.reshape(t, h * self.dv))


class MHA(torch.nn.Module):
    """Plain multi-head attention with per-head K and V in the cache (the baseline MLA is compared with)."""

    def __init__(self, model: Model, seed: int, layer: int, device: torch.device | str):
        super().__init__()
        a, d = model.attention, model.hidden
        self.heads, self.dn, self.dv = a.heads, a.head_dim, a.v_head_dim
        self.kv_dtype = KV_DTYPES[a.kv_dtype]

        def lin(name: str, n: int, k: int) -> Linear:
            return Linear(init.weight(n, k, [init.piece_key(seed, layer, "attention", -1, name)], device)[0],
                          model.dtype)

        self.wq, self.wk = lin("wq", self.heads * self.dn, d), lin("wk", self.heads * self.dn, d)
        self.wv, self.wo = lin("wv", self.heads * self.dv, d), lin("wo", d, self.heads * self.dv)
        self.scale = 1.0 / math.sqrt(self.dn)

    @property
    def cache_width(self) -> int:
        return self.heads * (self.dn + self.dv)

    def new_cache(self, batch: int, capacity: int, device: torch.device | str) -> KVCache:
        return KVCache(torch.zeros(batch, capacity, self.cache_width, dtype=self.kv_dtype, device=device))

    def forward(self, x_TD: torch.Tensor, cache: KVCache, positions_L: torch.Tensor,
                absorbed: bool | None = None) -> torch.Tensor:
        b = cache.batch
        t = x_TD.shape[0]
        l, h = t // b, self.heads
        q = rope(self.wq(x_TD).view(b, l, h, self.dn), positions_L)
        k = rope(self.wk(x_TD).view(b, l, h, self.dn), positions_L)
        v = self.wv(x_TD).view(b, l, h, self.dv)
        prior = cache.length
        kv_BSW = cache.append(torch.cat([k.reshape(b, l, -1), v.reshape(b, l, -1)], dim=-1))
        s = kv_BSW.shape[1]
        k_S, v_S = kv_BSW.split([h * self.dn, h * self.dv], dim=-1)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k_S.view(b, s, h, self.dn).transpose(1, 2),
                                           v_S.view(b, s, h, self.dv).transpose(1, 2),
                                           attn_mask=_causal_mask(prior, l, x_TD.device), scale=self.scale)
        return self.wo(o.transpose(1, 2).reshape(t, h * self.dv))


def build_attention(model: Model, seed: int, layer: int, device: torch.device | str) -> MLA | MHA:
    cls = MLA if model.attention.kind == "mla" else MHA
    return cls(model, seed, layer, device)
