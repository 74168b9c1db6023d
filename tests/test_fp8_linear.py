"""fp8_linear's GEMM paths against a float32 reference (moe.model.linear).

Error bound for an FP8 GEMM against the exact float32 product x @ w^T, in relative Frobenius norm:
every product x_k w_k carries two independent e4m3 roundings (activation and weight), each a relative
error of RMS about 2^-4 / sqrt(3) ~ 0.036 at the bottom of a binade and half that at its top (~0.027 on
average for Gaussian data); the errors of a dot product's K terms are independent, so the output's relative
RMS error is about sqrt(2) x 0.027 ~ 0.038 whatever K is. We allow 0.045 for blockwise scaling (dequant
path on the CPU; the GPU's blockwise kernel differs from it only by summation order and its bf16 output,
checked to 1% in the gpu test). The rowwise fold rounds each element a second time (to the row's largest
block scale): one more e4m3 rounding, sqrt(3) x 0.027 ~ 0.047, allowed 0.06.
"""

from __future__ import annotations

import pytest
import torch

from moe.model import linear
from moe.model.fp8 import quantize_act, quantize_weight
from moe.model.linear import Fp8Weight, Linear, fp8_linear

BLOCKWISE_BOUND, ROWWISE_BOUND = 0.045, 0.06


def _problem(m=64, k=512, n=384, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x, w = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen)
    return x, w, x @ w.t()


def _rel(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_cpu_uses_the_dequant_path():
    assert linear.gemm_path("cpu") == "dequant"


@pytest.mark.parametrize("path,bound", [("dequant", BLOCKWISE_BOUND), ("rowwise", ROWWISE_BOUND)])
def test_paths_against_float32(path, bound):
    x, w, ref = _problem()
    wt = Fp8Weight(*quantize_weight(w))
    err = _rel(fp8_linear(x, wt, torch.float32, path), ref)
    assert 0.01 < err < bound  # > 0.01: the product really went through FP8
    assert _rel(fp8_linear(x, wt, torch.bfloat16, path), ref) < bound  # bf16 output adds ~2^-9


def test_rowwise_runs_torch_scaled_mm_on_the_cpu():
    """The rowwise fold is the same code on CPU and GPU: torch._scaled_mm exists on the CPU for it."""
    x, w, ref = _problem(m=48, k=256, n=128, seed=4)
    wt = Fp8Weight(*quantize_weight(w))
    y = linear._rowwise_gemm(quantize_act(x), wt, torch.bfloat16)
    assert y.dtype == torch.bfloat16 and _rel(y, ref) < ROWWISE_BOUND
    assert "rowwise" in wt.derived  # the re-quantized weight is kept for the next call


def test_fp8_payload_input_equals_float_input():
    x, w, _ = _problem(seed=5)
    wt = Fp8Weight(*quantize_weight(w))
    assert torch.equal(fp8_linear(quantize_act(x), wt, torch.float32), fp8_linear(x, wt, torch.float32))


def test_blockwise_request_on_unsupported_shape_falls_back_to_rowwise():
    x, w, ref = _problem(k=256, n=130)  # 2 K-blocks: cuBLAS wants a multiple of 4
    y = fp8_linear(x, Fp8Weight(*quantize_weight(w)), torch.float32, "blockwise")
    assert _rel(y, ref) < ROWWISE_BOUND


def test_probe_rejects_a_path_that_does_not_run_here():
    assert linear._probe("cpu", None, "rowwise") and not linear._probe("cpu", None, "blockwise")


def test_bad_inputs():
    x, w, _ = _problem()
    wt = Fp8Weight(*quantize_weight(w))
    with pytest.raises(ValueError, match="features"):
        fp8_linear(x[:, :256], wt)
    with pytest.raises(ValueError, match="unknown path"):
        fp8_linear(x, wt, path="fast")
    assert fp8_linear(x[:0], wt).shape == (0, 384)


def test_linear_module_fp8_and_bf16():
    x, w, ref = _problem(seed=6)
    lin8, lin16 = Linear(w, "fp8"), Linear(w, "bf16")
    assert lin8.weight.dtype == torch.float8_e4m3fn and lin8.weight_bytes == 384 * 512 + 3 * 4 * 4
    assert lin16.weight_bytes == 384 * 512 * 2
    assert _rel(lin8(x), ref) < BLOCKWISE_BOUND
    assert _rel(lin16(x), ref) < 0.01  # bf16 weights: 2^-9 relative rounding
    assert _rel(lin8.dequantized(), w) < 0.04


@pytest.mark.gpu
def test_gpu_paths_agree_with_dequant():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    x, w, ref = _problem(m=1000, k=1024, n=768)
    x, w, ref = x.cuda(), w.cuda(), ref.cuda()
    wt = Fp8Weight(*quantize_weight(w))
    path = linear.gemm_path("cuda")
    deq = fp8_linear(x, wt, torch.float32, "dequant")
    got = fp8_linear(x, wt, torch.bfloat16, path)
    assert _rel(got, ref) < (BLOCKWISE_BOUND if path != "rowwise" else ROWWISE_BOUND)
    if path == "blockwise":
        assert _rel(got, deq) < 0.01
    if torch.cuda.get_device_capability() == (9, 0):
        assert path == "blockwise", "an H100 should run DeepSeek-style blockwise scaling (torch >= 2.9, CUDA >= 12.9)"
