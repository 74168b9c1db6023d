"""FP8 block quantization and the wire format (moe.model.fp8).

Error bound of one e4m3 rounding (used below): e4m3 has 3 mantissa bits, so in the normal range a value is
rounded to the nearest of 8 steps per binade, a relative error <= 2^-4; below the smallest normal (2^-6 in
e4m3 units) the step is the subnormal spacing 2^-9, an absolute error <= 2^-10 units. In real units
(unit = the block's scale): |dequant(quant(x)) - x| <= 2^-4 |x| + 2^-10 scale.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moe.model import fp8
from moe.spec import sizes


def _bound_ok(x: torch.Tensor, back: torch.Tensor, scale_full: torch.Tensor) -> bool:
    return bool(((back - x).abs() <= 2.0 ** -4 * x.abs() + 2.0 ** -10 * scale_full + 1e-30).all())


def test_fp8_max_is_the_e4m3_largest_finite_value():
    assert fp8.FP8_E4M3_MAX == torch.finfo(torch.float8_e4m3fn).max == 448.0


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 300), log_mag=st.floats(-12, 12), seed=st.integers(0, 2**31))
def test_activation_roundtrip_within_one_e4m3_rounding(rows, cols, log_mag, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=gen) * (10.0 ** log_mag) * torch.rand(rows, 1, generator=gen)
    a = fp8.quantize_act(x)
    groups = -(-cols // 128)
    assert a.q_TD.shape == (rows, cols) and a.scale_TG.shape == (rows, groups)
    assert a.q_TD.dtype == torch.float8_e4m3fn and a.scale_TG.dtype == torch.float32
    back = fp8.dequantize_act(a, torch.float32)
    full = a.scale_TG.repeat_interleave(128, dim=1)[:, :cols]
    assert _bound_ok(x, back, full)
    # scale = amax / 448 for every group with data: its largest element maps onto +-448
    for g in range(groups):
        amax = x[:, g * 128:(g + 1) * 128].abs().amax(dim=1)
        torch.testing.assert_close(a.scale_TG[:, g], amax.clamp(min=fp8.AMAX_FLOOR) / 448.0)


def test_zero_rows_quantize_to_zero_with_finite_scales():
    a = fp8.quantize_act(torch.zeros(3, 256))
    assert torch.isfinite(a.scale_TG).all() and (a.scale_TG > 0).all()
    assert (fp8.dequantize_act(a, torch.float32) == 0).all()


def test_weight_blocks_partial_edges_and_bound():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(200, 300, generator=gen) * torch.logspace(-3, 3, 200)[:, None]
    q, s = fp8.quantize_weight(w)
    assert q.shape == (200, 300) and s.shape == (2, 3)
    assert s.numel() == sizes.block_scale_count(200, 300)
    for nb in range(2):
        for kb in range(3):
            block = w[nb * 128:(nb + 1) * 128, kb * 128:(kb + 1) * 128]
            assert s[nb, kb] == pytest.approx(block.abs().max().item() / 448.0, rel=1e-6)
    full = s.repeat_interleave(128, 0).repeat_interleave(128, 1)[:200, :300]
    assert _bound_ok(w, fp8.dequantize_weight(q, s), full)


def test_stacked_weights_quantize_like_their_slices():
    w = torch.randn(3, 256, 384, generator=torch.Generator().manual_seed(2))
    q, s = fp8.quantize_weight(w)
    for e in range(3):
        qe, se = fp8.quantize_weight(w[e])
        assert torch.equal(q[e].view(torch.uint8), qe.view(torch.uint8)) and torch.equal(s[e], se)


@pytest.mark.parametrize("hidden", [256, 7168, 200])
def test_wire_rows_match_the_simulators_bytes_and_roundtrip_exactly(hidden):
    x = torch.randn(10, hidden, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    for dtype in ("fp8", "bf16"):
        buf = fp8.pack(x, dtype)
        assert buf.dtype == torch.uint8 and buf.shape == (10, sizes.activation_bytes_per_token(hidden, dtype))
        got = fp8.unpack(buf, hidden, dtype)
        if dtype == "bf16":
            assert torch.equal(got, x)
        else:
            ref = fp8.quantize_act(x)
            assert torch.equal(got.q_TD.view(torch.uint8), ref.q_TD.view(torch.uint8))
            assert torch.equal(got.scale_TG, ref.scale_TG)
    # gathering wire rows by destination is gathering tokens
    rows = torch.tensor([7, 0, 7, 3])
    shard = fp8.unpack(fp8.pack(x, "fp8")[rows], hidden, "fp8")
    direct = fp8.quantize_act(x).index_select(rows)
    assert torch.equal(shard.q_TD.view(torch.uint8), direct.q_TD.view(torch.uint8))
    assert torch.equal(shard.scale_TG, direct.scale_TG)


def test_pack_accepts_quantized_payload_and_unpack_rejects_wrong_buffers():
    x = torch.randn(4, 256)
    a = fp8.quantize_act(x)
    assert torch.equal(fp8.pack(a, "fp8"), fp8.pack(x, "fp8"))
    with pytest.raises(ValueError, match="uint8"):
        fp8.unpack(torch.zeros(4, 100, dtype=torch.uint8), 256, "fp8")
    with pytest.raises(ValueError, match="wire dtype"):
        fp8.pack(x, "fp16")


def test_roundtrip_names_what_the_receiver_sees():
    x = torch.randn(5, 256, dtype=torch.float32)
    assert torch.equal(fp8.roundtrip(x, "fp8"), fp8.dequantize_act(fp8.quantize_act(x), torch.float32))
    assert torch.equal(fp8.roundtrip(x, "bf16"), x.to(torch.bfloat16).float())
