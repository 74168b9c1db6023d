"""Linear layers with FP8 (128 x 128 block-scaled) or BF16 weights, and `fp8_linear`'s three GEMM paths.

Shape letters: T rows (tokens), K input features, N output features, Kb = ceil(K/128), Nb = ceil(N/128).

GEMM paths of `fp8_linear(x, w)` (y = x @ w^T), chosen per device by `gemm_path`:
- "blockwise": `torch._scaled_mm` with the DeepSeek recipe done by the GEMM itself: activation scales
  1 x 128 (per row per K-block, passed outer-dim-major: stride (1, T)) and weight scales 128 x 128 (passed as
  scale^T, shape (Kb, Nb), K-block-major). cuBLAS supports it on sm_90 from CUDA 12.9 (torch's
  test_scaled_matmul_cuda.py, "cuBLAS blockwise scaling"); used when K and N are multiples of 128 and Kb of 4
  (cuBLAS pads 128x128 scales to a multiple of 4 K-blocks).
- "rowwise": for FP8 GPUs without blockwise support (sm_89, sm_100, older CUDA), and on CPUs where
  torch._scaled_mm exists: the block scales are folded into one scale per activation row and one per
  weight output column (the max over the row's blocks), and the payload is re-quantized to that scale
  once (weights, cached) or per call (activations). Error: every element is rounded to e4m3 a second
  time with a step up to (row scale / block scale) coarser; on data whose blocks have similar amax this is
  one extra e4m3 rounding (<= 2^-4 relative per element), measured in tests/test_fp8_linear.py.
- "dequant": both operands dequantized to float32 (exact for e4m3 x float32 up to one rounding), one
  float32 matmul, result cast to the output dtype. The CPU path and the reference. (Float32, not bf16: a
  bf16 dequantization would round every element to 8 bits, an error the FP8 tensor-core path does not
  have.) On the CPU each weight's float32 copy is kept after first use (4x its FP8 bytes; CPU runs are
  tiny models), because converting e4m3 there costs more than the matmul.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from moe.model.fp8 import (
    FP8_BLOCK,
    FP8_DTYPE,
    FP8_E4M3_MAX,
    Fp8Act,
    dequantize_act,
    dequantize_weight,
    quantize_act,
    quantize_weight,
)
from moe.spec.sizes import GEMM_ROW_ALIGN

GEMM_PATHS = ("blockwise", "rowwise", "dequant")
ROW_ALIGN = GEMM_ROW_ALIGN
"""The blockwise path pads the row count to a multiple of this (cuBLAS FP8 operands want 16-byte aligned
dimensions; a dispatch shard has any number of rows)."""
PROBE_REL_ERROR = 0.1
"""Largest relative Frobenius error of a path's probe against the dequantized reference, on data whose
blocks differ in scale by up to 64x: a misread scale layout gives errors of order 1, a correct blockwise
kernel ~0.3% (bf16 output), the rowwise fold a few % (tests/test_fp8_linear.py)."""


@dataclass(eq=False)
class Fp8Weight:
    """An FP8 weight [N, K] (row-major, so q.t() is the column-major operand _scaled_mm wants) and its
    block scales [Nb, Kb]. `derived` caches layouts for the GEMM paths (rowwise re-quantization)."""

    q_NK: torch.Tensor
    scale: torch.Tensor
    derived: dict = field(default_factory=dict, repr=False)

    @property
    def shape(self) -> torch.Size:
        return self.q_NK.shape

    @property
    def nbytes(self) -> int:
        return self.q_NK.nbytes + self.scale.nbytes

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_weight(self.q_NK, self.scale, dtype)


# ---------------------------------------------------------------------------------------- path choice
def _blockwise_fits(k: int, n: int) -> bool:
    return k % FP8_BLOCK == 0 and n % FP8_BLOCK == 0 and (k // FP8_BLOCK) % 4 == 0


@functools.cache
def _probe(device_type: str, index: int | None, path: str) -> bool:
    """Run `path` once on a 100 x 512 x 256 problem on the device (100 rows: exercises row padding) and
    compare with the dequantized reference. False if the kernel raises or disagrees (e.g. blockwise
    scaling missing in this torch/CUDA build)."""
    device = torch.device(device_type, index) if index is not None else torch.device(device_type)
    gen = torch.Generator(device="cpu").manual_seed(0)
    k_groups = (4.0 ** torch.arange(4)).repeat_interleave(FP8_BLOCK)  # blocks of very different scale, so
    rows = 1.0 + torch.arange(100)[:, None] % 7  # a misread scale layout cannot pass unnoticed
    x = (torch.randn(100, 512, generator=gen) * k_groups * rows).to(device)
    w_rows = torch.tensor([1.0, 8.0]).repeat_interleave(FP8_BLOCK)[:, None]
    w = quantize_weight((torch.randn(256, 512, generator=gen) * w_rows / k_groups).to(device))
    xa, wt = quantize_act(x), Fp8Weight(*w)
    try:
        got = _GEMMS[path](xa, wt, torch.float32)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # host sync: kernel errors surface here, once per device
    except (RuntimeError, NotImplementedError, ValueError, TypeError):
        return False
    ref = _dequant_gemm(xa, wt, torch.float32)
    return bool(((got - ref).norm() / ref.norm()).item() < PROBE_REL_ERROR)


def gemm_path(device: torch.device | str) -> str:
    """The fastest correct path on `device`: blockwise on sm_90 when this torch/CUDA has it, rowwise on
    other FP8 GPUs (sm_89+), dequant elsewhere (CPU, older GPUs)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return "dequant"
    return _cuda_path(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _cuda_path(index: int) -> str:
    if torch.cuda.get_device_capability(index) < (8, 9):
        return "dequant"
    for path in ("blockwise", "rowwise"):
        if _probe("cuda", index, path):
            return path
    return "dequant"


# ------------------------------------------------------------------------------------------ the paths
def _dequant_gemm(x: Fp8Act, w: Fp8Weight, out_dtype: torch.dtype) -> torch.Tensor:
    if w.q_NK.device.type == "cpu":  # CPU runs are tiny models: keep the float32 copy, converting e4m3
        if "dequant" not in w.derived:  # on the CPU costs more than the matmul
            w.derived["dequant"] = w.dequantize(torch.float32).t()
        w_KN = w.derived["dequant"]
    else:
        w_KN = w.dequantize(torch.float32).t()
    return (dequantize_act(x, torch.float32) @ w_KN).to(out_dtype)


def _blockwise_gemm(x: Fp8Act, w: Fp8Weight, out_dtype: torch.dtype) -> torch.Tensor:
    m = x.q_TD.shape[0]
    q, scale = x.q_TD, x.scale_TG
    if m % ROW_ALIGN:  # zero rows (scale 0) up to an aligned count; their outputs are sliced off
        pad = ROW_ALIGN - m % ROW_ALIGN
        q = torch.nn.functional.pad(q.view(torch.uint8), (0, 0, 0, pad)).view(FP8_DTYPE)
        scale = torch.nn.functional.pad(scale, (0, 0, 0, pad))
    scale_a = scale.t().contiguous().t()  # outer-dim-major (stride (1, T)), as cuBLAS reads 1x128 scales
    y = torch._scaled_mm(q, w.q_NK.t(), scale_a=scale_a, scale_b=w.scale.t(), out_dtype=torch.bfloat16)
    return y[:m].to(out_dtype)


def _rowwise_weight(w: Fp8Weight) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight re-quantized to one scale per output row n (the max of its blocks' scales), cached."""
    if "rowwise" not in w.derived:
        n = w.q_NK.shape[0]
        col_N = w.scale.amax(dim=1).repeat_interleave(FP8_BLOCK)[:n]
        q = (w.dequantize(torch.float32) / col_N[:, None]).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(FP8_DTYPE)
        w.derived["rowwise"] = (q, col_N[None, :].contiguous())
    return w.derived["rowwise"]


def _rowwise_gemm(x: Fp8Act, w: Fp8Weight, out_dtype: torch.dtype) -> torch.Tensor:
    q_w, scale_b = _rowwise_weight(w)
    row_T = x.scale_TG.amax(dim=1, keepdim=True)
    q_x = (dequantize_act(x, torch.float32) / row_T).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(FP8_DTYPE)
    return torch._scaled_mm(q_x, q_w.t(), scale_a=row_T, scale_b=scale_b, out_dtype=torch.bfloat16).to(out_dtype)


_GEMMS = {"blockwise": _blockwise_gemm, "rowwise": _rowwise_gemm, "dequant": _dequant_gemm}


def fp8_linear(x: torch.Tensor | Fp8Act, w: Fp8Weight, out_dtype: torch.dtype = torch.bfloat16,
               path: str | None = None) -> torch.Tensor:
    """y_TN = x_TK @ w_NK^T with an FP8 weight. `x` is a float tensor (quantized here per token per 128
    channels) or an Fp8Act as received from the wire. `path` None picks `gemm_path(x.device)`; a blockwise
    request on a shape cuBLAS cannot take runs rowwise."""
    xa = x if isinstance(x, Fp8Act) else quantize_act(x)
    if xa.q_TD.shape[1] != w.q_NK.shape[1]:
        raise ValueError(f"fp8_linear: input has {xa.q_TD.shape[1]} features, weight expects {w.q_NK.shape[1]}")
    if xa.q_TD.shape[0] == 0:
        return torch.empty(0, w.q_NK.shape[0], dtype=out_dtype, device=xa.device)
    path = path or gemm_path(xa.device)
    if path not in _GEMMS:
        raise ValueError(f"fp8_linear: unknown path {path!r}; known: {GEMM_PATHS}")
    if path == "blockwise" and not _blockwise_fits(*w.q_NK.shape[::-1]):
        path = "rowwise"
    return _GEMMS[path](xa, w, out_dtype)


# ---------------------------------------------------------------------------------------------- Linear
class Linear(torch.nn.Module):
    """y = x @ W^T without bias. `dtype` "fp8": W is an Fp8Weight built from float weights by
    `quantize_weight`; "bf16": W is a bf16 tensor, multiplied in the activation dtype."""

    def __init__(self, w_NK: torch.Tensor, dtype: str):
        super().__init__()
        self.dtype_name = dtype
        self.out_features, self.in_features = w_NK.shape
        if dtype == "fp8":
            self.fp8 = Fp8Weight(*quantize_weight(w_NK))
            self.register_buffer("weight", self.fp8.q_NK, persistent=True)
            self.register_buffer("scale", self.fp8.scale, persistent=True)
        else:
            self.fp8 = None
            self.register_buffer("weight", w_NK.to(torch.bfloat16).contiguous(), persistent=True)
            self.scale = None

    def _apply(self, fn, recurse=True):
        """Keep the Fp8Weight view in step with the buffers when the module is moved (`.to(device)`)."""
        super()._apply(fn, recurse)
        if self.fp8 is not None:
            self.fp8 = Fp8Weight(self.weight, self.scale)
        return self

    @property
    def weight_bytes(self) -> int:
        return self.weight.nbytes + (self.scale.nbytes if self.scale is not None else 0)

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight as a float tensor [N, K] (for the absorbed MLA form)."""
        return self.fp8.dequantize(dtype) if self.fp8 is not None else self.weight.to(dtype)

    def forward(self, x: torch.Tensor | Fp8Act, out_dtype: torch.dtype | None = None,
                path: str | None = None) -> torch.Tensor:
        if self.fp8 is not None:
            if out_dtype is None:
                out_dtype = x.dtype if isinstance(x, torch.Tensor) else torch.bfloat16
            return fp8_linear(x, self.fp8, out_dtype, path)
        x = dequantize_act(x, torch.bfloat16) if isinstance(x, Fp8Act) else x
        out_dtype = out_dtype or x.dtype
        return (x @ self.weight.to(x.dtype).t()).to(out_dtype)  # in the activation dtype (bf16 on GPUs)
