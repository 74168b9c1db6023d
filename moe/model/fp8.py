"""FP8 e4m3 block quantization and the wire format of token shards.

Shape letters:
  T tokens (rows of an activation), D channels (hidden), G = ceil(D / 128) channel groups of a row,
  N output features, K input features of a weight, Nb = ceil(N / 128), Kb = ceil(K / 128), B bytes of a
  wire row.

Recipe (DeepSeek-V3 config_671B.json "quantization_config" and its inference code; ../shared/data/
hardware_facts.md): weights are float8_e4m3fn with one float32 scale per 128 x 128 block; activations are
quantized per token per 128 channels. A scale is the *dequantization* factor: value = q * scale, with
scale = amax / FP8_E4M3_MAX over the block, so the block's largest magnitude maps to the largest finite
e4m3 value. FP8_E4M3_MAX = 448 is the largest finite e4m3 value in the OCP 8-bit floating point
specification (OFP8, v1.0, 2023, table "E4M3": S.1111.110 = 448).

Wire format (what the runtimes ship over MPI/NCCL): one contiguous uint8 row per token, so a shard for one
destination is a single gather of rows. FP8 rows hold D payload bytes then G float32 scales (little-endian,
as in memory); BF16 rows hold the 2 D bytes of the bf16 values. Row sizes equal
`moe.spec.sizes.activation_bytes_per_token`; a dispatch row carries its token's routing meta in front of
them (`pack(head=...)`, `moe.spec.sizes.dispatch_row_bytes`, which the traffic model and the simulator use).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moe.spec.sizes import FP8_BLOCK, activation_bytes_per_token

FP8_DTYPE = torch.float8_e4m3fn
FP8_E4M3_MAX = 448.0
INV_FP8_E4M3_MAX = 1.0 / FP8_E4M3_MAX
"""Scales are amax times this float32 constant, not amax / 448: torch's CUDA kernels turn division by a
scalar into this product, the CPU divides, and the two differ in the last bit. The product is the same on
every device, so a weight built on a CPU and on a GPU has the same scales."""
"""Largest finite float8 e4m3 value (OCP OFP8 specification v1.0, E4M3 table)."""
AMAX_FLOOR = 1e-12
"""Lower bound on a block's amax so an all-zero block gets a finite scale (its values quantize to 0)."""
WIRE_DTYPES = ("fp8", "bf16")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _pad_to_block(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Zero-pad the given dims of x up to a multiple of FP8_BLOCK (a view-free copy only when needed)."""
    pad: list[int] = []
    for d in range(x.dim() - 1, -1, -1):
        extra = (-x.shape[d]) % FP8_BLOCK if d in dims else 0
        pad += [0, extra]
    return torch.nn.functional.pad(x, pad) if any(pad) else x


# ------------------------------------------------------------------------------------------- weights
def quantize_weight(w_NK: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight [..., N, K] -> (q [..., N, K] float8_e4m3fn, scale [..., Nb, Kb] float32).

    scale[nb, kb] = max(|w| over the block, AMAX_FLOOR) / FP8_E4M3_MAX; q = round_to_e4m3(w / scale).
    Leading dims (stacked experts) are quantized independently. Partial edge blocks are allowed.
    """
    *lead, n, k = w_NK.shape
    nb, kb = _ceil_div(n, FP8_BLOCK), _ceil_div(k, FP8_BLOCK)
    w = _pad_to_block(w_NK.float(), (len(lead), len(lead) + 1))
    blocks = w.reshape(*lead, nb, FP8_BLOCK, kb, FP8_BLOCK)
    amax = blocks.abs().amax(dim=(-3, -1))
    scale = amax.clamp(min=AMAX_FLOOR) * INV_FP8_E4M3_MAX
    q = (blocks / scale[..., :, None, :, None]).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(FP8_DTYPE)
    q = q.reshape(*lead, nb * FP8_BLOCK, kb * FP8_BLOCK)[..., :n, :k]
    return q.contiguous(), scale.contiguous()


def dequantize_weight(q_NK: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of `quantize_weight`: q * scale of its block, in `dtype` (float32 is exact for e4m3 x f32
    products up to one rounding)."""
    *lead, n, k = q_NK.shape
    full = scale.repeat_interleave(FP8_BLOCK, dim=-2).repeat_interleave(FP8_BLOCK, dim=-1)
    return (q_NK.float() * full[..., :n, :k]).to(dtype)


# --------------------------------------------------------------------------------------- activations
@dataclass(frozen=True)
class Fp8Act:
    """FP8 activations as they travel: payload q_TD (float8_e4m3fn) and scale_TG (float32, per token per
    128 channels). value[t, d] = q[t, d] * scale[t, d // 128]."""

    q_TD: torch.Tensor
    scale_TG: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.q_TD.shape

    @property
    def device(self) -> torch.device:
        return self.q_TD.device

    def __len__(self) -> int:
        return self.q_TD.shape[0]

    def index_select(self, rows: torch.Tensor) -> Fp8Act:
        return Fp8Act(self.q_TD.index_select(0, rows), self.scale_TG.index_select(0, rows))

    def to(self, device: torch.device | str) -> Fp8Act:
        return Fp8Act(self.q_TD.to(device), self.scale_TG.to(device))

    def dequantize(self, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        return dequantize_act(self, dtype)

    @staticmethod
    def cat(parts: list[Fp8Act]) -> Fp8Act:
        return Fp8Act(torch.cat([p.q_TD for p in parts]), torch.cat([p.scale_TG for p in parts]))


def quantize_act(x_TD: torch.Tensor) -> Fp8Act:
    """Per token, per 128 channels: scale = max(amax, AMAX_FLOOR) / FP8_E4M3_MAX, q = round(x / scale).

    Written for few passes over memory on a GPU: amax as an infinity norm (no |x| temporary), the division
    straight from x's dtype into float32 (type promotion: exact for bf16), the clamp in place."""
    t, d = x_TD.shape
    g = _ceil_div(d, FP8_BLOCK)
    x = _pad_to_block(x_TD, (1,)).view(t, g, FP8_BLOCK)
    amax_TG = torch.linalg.vector_norm(x, ord=float("inf"), dim=-1, dtype=torch.float32)
    scale_TG = amax_TG.clamp(min=AMAX_FLOOR) * INV_FP8_E4M3_MAX
    q = (x / scale_TG[..., None]).clamp_(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(FP8_DTYPE)  # x / scale in float32
    return Fp8Act(q.view(t, g * FP8_BLOCK)[:, :d].contiguous(), scale_TG)


def dequantize_act(a: Fp8Act, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    t, d = a.q_TD.shape
    full_TD = a.scale_TG.repeat_interleave(FP8_BLOCK, dim=1)[:, :d]
    return (a.q_TD.float() * full_TD).to(dtype)


def roundtrip(x_TD: torch.Tensor, dtype: str) -> torch.Tensor:
    """What a receiver sees of x after the wire in `dtype` ("fp8" or "bf16"), in x's dtype."""
    if dtype == "fp8":
        return dequantize_act(quantize_act(x_TD), x_TD.dtype)
    return x_TD.to(torch.bfloat16).to(x_TD.dtype)


# ------------------------------------------------------------------------------------------------ wire
def wire_bytes_per_token(hidden: int, dtype: str) -> int:
    """Bytes of one wire row: `moe.spec.sizes.activation_bytes_per_token` (the simulator's figure)."""
    return activation_bytes_per_token(hidden, dtype)


def pack(x: torch.Tensor | Fp8Act, dtype: str, head: torch.Tensor | None = None) -> torch.Tensor:
    """Activations -> wire rows uint8 [T, B]. `x` is a float tensor [T, D] (quantized here when dtype is
    "fp8") or an already quantized Fp8Act. `head` (uint8 [T, H]): columns written before each row's
    activation bytes in the same copy (rows [T, H + B]); `unpack` then takes the rows without them."""
    if dtype not in WIRE_DTYPES:
        raise ValueError(f"wire dtype {dtype!r} is not one of {WIRE_DTYPES}")
    lead = [] if head is None else [head]
    if dtype == "bf16":
        if isinstance(x, Fp8Act):
            x = dequantize_act(x)
        wire = x.to(torch.bfloat16).contiguous().view(torch.uint8)
        return torch.cat([*lead, wire], dim=1) if lead else wire
    a = x if isinstance(x, Fp8Act) else quantize_act(x)
    return torch.cat([*lead, a.q_TD.view(torch.uint8), a.scale_TG.view(torch.uint8)], dim=1)


def unpack(buf_TB: torch.Tensor, hidden: int, dtype: str) -> torch.Tensor | Fp8Act:
    """Wire rows uint8 [T, B] -> Fp8Act (dtype "fp8") or a bf16 tensor [T, D] (dtype "bf16"). Returns
    contiguous tensors (copies), so the caller may reuse `buf_TB` at once."""
    expect = wire_bytes_per_token(hidden, dtype)
    if buf_TB.dtype != torch.uint8 or buf_TB.dim() != 2 or buf_TB.shape[1] != expect:
        raise ValueError(f"wire buffer must be uint8 [T, {expect}] for hidden={hidden} {dtype}, got "
                         f"{buf_TB.dtype} {tuple(buf_TB.shape)}")
    if dtype == "bf16":
        return buf_TB.contiguous().view(torch.bfloat16).clone()
    q = buf_TB[:, :hidden].contiguous().view(FP8_DTYPE)
    scale = buf_TB[:, hidden:].contiguous().view(torch.float32)
    return Fp8Act(q, scale)
