"""SwiGLU MLPs: routed experts, shared experts and the dense FFN, stored as stacked banks.

Shape letters: R rows (tokens given to one MLP), D hidden, F inner width, N number of MLPs in a bank.

y = w2( silu(w1 x) * (w3 x) ). w1 and w3 are quantized as two matrices (their own 128 x 128 block grids,
as `moe.spec.sizes` counts them) and stored one above the other, so when F is a multiple of 128 the pair
is one GEMM with 2F outputs; otherwise they run as two GEMMs. The product silu(w1 x) * (w3 x) is formed in
the GEMM's bf16 output and quantized per token per 128 channels for w2 (FP8 weights).

A bank holds the MLPs of a list of ids (a rank's local experts), built in groups so the float32
temporaries of a group stay under BUILD_BYTES; MLP `id`'s weights depend only on (seed, layer, piece, id).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from moe.model import init
from moe.model.fp8 import FP8_BLOCK, Fp8Act, dequantize_act, quantize_act, quantize_weight
from moe.model.linear import Fp8Weight, fp8_linear
from moe.spec.schema import Model

BUILD_BYTES = 1 << 31
"""float32 bytes of weights generated at once while building a bank (then quantized and dropped)."""


def swiglu_quant(h_R2F: torch.Tensor) -> Fp8Act:
    """silu(h[:, :F]) * h[:, F:] in h's dtype (bf16 from the GEMM, as DeepSeek-V3's inference code), then
    quantized per token per 128 channels: the input of w2. The bf16 rounding (2^-9) is far below the
    e4m3 rounding that follows (2^-4)."""
    a, b = h_R2F.chunk(2, dim=-1)
    return quantize_act(F.silu(a) * b)


class SwiGLUBank(torch.nn.Module):
    """SwiGLU MLPs D -> inner -> D for `ids`, weights keyed by (seed, layer, piece, id)."""

    def __init__(self, model: Model, seed: int, layer: int, piece: str, ids: Sequence[int], inner: int,
                 device: torch.device | str):
        super().__init__()
        self.ids = [int(i) for i in ids]
        self.slot = {e: i for i, e in enumerate(self.ids)}
        if len(self.slot) != len(self.ids):
            raise ValueError(f"{piece} ids must be distinct, got {self.ids}")
        self.dtype_name, self.hidden, self.inner = model.dtype, model.hidden, inner
        n, d, f = len(self.ids), model.hidden, inner
        fp8 = model.dtype == "fp8"
        wdt = torch.float8_e4m3fn if fp8 else torch.bfloat16
        self.register_buffer("w13", torch.empty(n, 2 * f, d, dtype=wdt, device=device))
        self.register_buffer("w2", torch.empty(n, d, f, dtype=wdt, device=device))
        if fp8:
            fb, db = -(-f // FP8_BLOCK), -(-d // FP8_BLOCK)
            self.register_buffer("s13", torch.empty(n, 2 * fb, db, dtype=torch.float32, device=device))
            self.register_buffer("s2", torch.empty(n, db, fb, dtype=torch.float32, device=device))
        group = max(1, BUILD_BYTES // (4 * 3 * d * f))
        for start in range(0, n, group):
            chunk = self.ids[start:start + group]
            self._build(seed, layer, piece, chunk, slice(start, start + len(chunk)), device)
        self._views()

    def _build(self, seed: int, layer: int, piece: str, ids: list[int], rows: slice, device) -> None:
        d, f = self.hidden, self.inner
        keys = {name: [init.piece_key(seed, layer, piece, e, name) for e in ids] for name in ("w1", "w3", "w2")}
        w1, w3 = init.weight(f, d, keys["w1"], device), init.weight(f, d, keys["w3"], device)
        w2 = init.weight(d, f, keys["w2"], device)
        if self.dtype_name == "fp8":
            (q1, s1), (q3, s3), (q2, s2) = quantize_weight(w1), quantize_weight(w3), quantize_weight(w2)
            self.w13[rows] = torch.cat([q1, q3], dim=1)
            self.s13[rows] = torch.cat([s1, s3], dim=1)
            self.w2[rows], self.s2[rows] = q2, s2
        else:
            self.w13[rows] = torch.cat([w1, w3], dim=1).to(torch.bfloat16)
            self.w2[rows] = w2.to(torch.bfloat16)

    def _views(self) -> None:
        """Per-MLP Fp8Weight views into the stacked storage (each caches its own GEMM layouts)."""
        self.fused = self.inner % FP8_BLOCK == 0
        self.fp8_w13: list[list[Fp8Weight]] = []
        self.fp8_w2: list[Fp8Weight] = []
        if self.dtype_name != "fp8":
            return
        f, fb = self.inner, -(-self.inner // FP8_BLOCK)
        for i in range(len(self.ids)):
            if self.fused:
                self.fp8_w13.append([Fp8Weight(self.w13[i], self.s13[i])])
            else:
                self.fp8_w13.append([Fp8Weight(self.w13[i, :f], self.s13[i, :fb]),
                                     Fp8Weight(self.w13[i, f:], self.s13[i, fb:])])
            self.fp8_w2.append(Fp8Weight(self.w2[i], self.s2[i]))

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._views()
        return self

    @property
    def weight_bytes(self) -> int:
        return sum(b.nbytes for b in self.buffers())

    def forward(self, mlp_id: int, x: torch.Tensor | Fp8Act, out_dtype: torch.dtype = torch.bfloat16,
                path: str | None = None) -> torch.Tensor:
        """MLP `mlp_id` on rows x [R, D] (a float tensor, or FP8 payload + scales from the wire)."""
        if mlp_id not in self.slot:
            more = "..." if len(self.ids) > 16 else ""
            raise KeyError(f"MLP {mlp_id} is not held here (held: {self.ids[:16]}{more})")
        i = self.slot[mlp_id]
        if self.dtype_name != "fp8":
            xb = dequantize_act(x, torch.bfloat16) if isinstance(x, Fp8Act) else x.to(torch.bfloat16)
            a, b = (xb @ self.w13[i].t()).chunk(2, dim=-1)
            return ((F.silu(a) * b) @ self.w2[i].t()).to(out_dtype)
        xa = x if isinstance(x, Fp8Act) else quantize_act(x)
        h = torch.cat([fp8_linear(xa, w, torch.bfloat16, path) for w in self.fp8_w13[i]], dim=-1) \
            if not self.fused else fp8_linear(xa, self.fp8_w13[i][0], torch.bfloat16, path)
        return fp8_linear(swiglu_quant(h), self.fp8_w2[i], out_dtype, path)
