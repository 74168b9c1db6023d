"""MLA and MHA: the absorbed form, decoding from the cache, and cache bytes (moe.model.attention)."""

from __future__ import annotations

import pytest
import torch

from moe.model.attention import rope
from moe.model.model import build_layer, hidden_states
from moe.spec import load_scenario, sizes

F32 = torch.float32


def model(preset="tiny", **over):
    att = over.pop("attention", {})
    return load_scenario({"model": {"preset": preset, **over, "attention": att},
                          "cluster": {"nodes": 32, "gpus_per_node": 8}}, check=False).model


def _rel(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def _block(m, act=F32):
    return build_layer(m, 0, 0, act_dtype=act)  # layer 0: dense in tiny, attention is what is tested


@pytest.mark.parametrize("q_latent", [128, 0])
def test_mla_absorbed_form_equals_naive_form(q_latent):
    """Same algebra, other association: equal up to float32 rounding (bf16 weights, float32 activations)."""
    m = model(dtype="bf16", attention={"q_latent": q_latent})
    blk = _block(m)
    x = hidden_states(m, 2 * 9, 0, dtype=F32)
    naive = blk.attention(x, blk.new_cache(2, 9), absorbed=False)
    absorbed = blk.attention(x, blk.new_cache(2, 9), absorbed=True)
    assert _rel(absorbed, naive) < 1e-5


def _rms(x):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def test_mla_matches_the_formula_written_out():
    """MLA by its definition (DeepSeek-V2 section 2.1): per head, softmax((q_nope . k_nope + q_rope . k_rope)
    / sqrt(dn + dr)) over earlier tokens, values from the latent; no cache, no absorption."""
    m = model(dtype="bf16")
    a = m.attention
    attn = _block(m).attn
    b, l, h, dn, dr, dv, c = 2, 7, a.heads, a.head_dim, a.rope_dim, a.v_head_dim, a.kv_latent
    x = hidden_states(m, b * l, 5, dtype=F32)
    W = {name: getattr(attn, name).dequantized(F32) for name in ("wq_a", "wq_b", "wkv_a", "wkv_b", "wo")}
    pos = torch.arange(l)
    q = (_rms(x @ W["wq_a"].t()) @ W["wq_b"].t()).view(b, l, h, dn + dr)
    kv = (x @ W["wkv_a"].t()).view(b, l, c + dr)
    lat, k_rope = _rms(kv[..., :c]), rope(kv[..., c:], pos)  # one rotary key shared by all heads
    lat, k_rope = (t.to(torch.bfloat16).float() for t in (lat, k_rope))  # as the bf16 cache keeps them
    kvb = (lat @ W["wkv_b"].t()).view(b, l, h, dn + dv)
    q_nope, q_rope = q[..., :dn], rope(q[..., dn:], pos)
    scores = (torch.einsum("bihd,bjhd->bhij", q_nope, kvb[..., :dn])
              + torch.einsum("bihd,bjd->bhij", q_rope, k_rope)) / (dn + dr) ** 0.5
    scores = scores.masked_fill(~torch.ones(l, l, dtype=torch.bool).tril(), float("-inf"))
    out = torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), kvb[..., dn:]).reshape(b * l, h * dv) @ W["wo"].t()
    for absorbed in (False, True):
        assert _rel(attn(x, attn.new_cache(b, l, "cpu"), pos, absorbed), out) < 1e-5


@pytest.mark.parametrize("kind", ["mla", "mha"])
def test_decoding_from_the_cache_equals_recomputing_everything(kind):
    """Prefill 6 tokens, then decode 2 one by one: the cache alone (for MLA: latent + rope key) must be
    enough to reproduce the full causal pass."""
    m = model(dtype="bf16", attention={"kind": kind})
    blk = _block(m)
    x_BLD = hidden_states(m, 3 * 8, 1, dtype=F32).view(3, 8, -1)
    full = blk.attention(x_BLD.reshape(24, -1), blk.new_cache(3, 8)).view(3, 8, -1)
    cache = blk.new_cache(3, 8)
    pre = blk.attention(x_BLD[:, :6].reshape(18, -1), cache).view(3, 6, -1)
    steps = [blk.attention(x_BLD[:, i].contiguous(), cache) for i in (6, 7)]
    assert cache.length == 8
    assert _rel(pre, full[:, :6]) < 1e-5
    for i, y in zip((6, 7), steps, strict=True):
        assert _rel(y, full[:, i]) < 1e-5


@pytest.mark.parametrize("kind", ["mla", "mha"])
@pytest.mark.parametrize("kv_dtype", ["bf16", "fp8"])
def test_cache_bytes_per_token_equal_the_spec(kind, kv_dtype):
    m = model(attention={"kind": kind, "kv_dtype": kv_dtype})
    blk = _block(m, torch.bfloat16)
    cache = blk.new_cache(2, 16)
    blk.attention(hidden_states(m, 2 * 5, 2), cache)
    expect = sizes.kv_cache_bytes_per_token_per_layer(m)
    assert cache.bytes_per_token == expect
    assert cache.data_BSW.nbytes == 2 * 16 * expect  # the real tensor: nothing else is kept per token
    assert cache.length == 5


@pytest.mark.parametrize("kind", ["mla", "mha"])
def test_paper_cache_bytes_on_the_meta_device(kind):
    m = model("paper", attention={"kind": kind})
    blk = build_layer(m, 0, 0, device="meta")
    cache = blk.new_cache(1, 4096)
    assert cache.bytes_per_token == sizes.kv_cache_bytes_per_token_per_layer(m)
    assert cache.bytes_per_token == ((512 + 64) * 2 if kind == "mla" else 128 * (56 + 56) * 2)


def test_fp8_cache_decodes_close_to_bf16_cache():
    m8, m16 = model(attention={"kv_dtype": "fp8"}), model()
    x = hidden_states(m16, 2 * 4, 3)
    y8 = _block(m8, torch.bfloat16).attention(x, _block(m8, torch.bfloat16).new_cache(2, 4))
    y16 = _block(m16, torch.bfloat16).attention(x, _block(m16, torch.bfloat16).new_cache(2, 4))
    assert 0 < _rel(y8 - x, y16 - x) < 0.1  # one e4m3 rounding of the latent, seen through attention


def test_synthetic_cache_lets_decode_run_without_prefill():
    m = model()
    blk = _block(m, torch.bfloat16)
    c1, c2 = blk.new_cache(4, 65), blk.new_cache(4, 65)
    c1.fill_synthetic(64, seed=3)
    c2.fill_synthetic(64, seed=3)
    assert torch.equal(c1.data_BSW, c2.data_BSW) and c1.length == 64
    x = hidden_states(m, 4, 4)
    y = blk.attention(x, c1)
    assert y.shape == x.shape and torch.isfinite(y).all() and c1.length == 65
    with pytest.raises(ValueError, match="cannot append"):
        blk.attention(x, c1)


def test_bad_token_counts_fail_with_the_shapes():
    m = model()
    blk = _block(m, torch.bfloat16)
    with pytest.raises(ValueError, match="sequences"):
        blk.attention(hidden_states(m, 5, 0), blk.new_cache(2, 8))
    with pytest.raises(ValueError, match="positions"):
        blk.attention(hidden_states(m, 4, 0), blk.new_cache(2, 8), torch.arange(3))


def test_rope_scores_depend_only_on_relative_position():
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 32, generator=gen), torch.randn(1, 1, 32, generator=gen)

    def score(pq, pk):
        return float((rope(q, torch.tensor([pq])) * rope(k, torch.tensor([pk]))).sum())

    assert score(5, 2) == pytest.approx(score(103, 100), abs=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-3)
