"""Blocks and the whole model: the runtime interface reproduces the reference forward (moe.model.layer).

The distributed test plays the runtimes' part without communication: ranks that each hold some experts
and their own tokens route, pack FP8 shards per destination (moe.model.fp8 wire rows), the holder runs
`expert_forward` on the unpacked payload, results go back as BF16 rows and `combine` sums them. It must
equal `MoEModel.forward` on one device with every expert, which is what emu/ and real/ are checked against.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest
import torch

from moe.model import fp8
from moe.model.model import build_layer, build_model, hidden_states
from moe.spec import load_scenario, sizes


def model(preset="tiny", **over):
    return load_scenario({"model": {"preset": preset, **over}, "cluster": {"nodes": 32, "gpus_per_node": 8}},
                         check=False).model


def _rel(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_tiny_forward_step_takes_milliseconds_on_the_cpu():
    """CPU time of the process on one thread (the autouse fixture): what the step costs, independent of
    other processes sharing the cores. Wall time on an idle 2-core dev box is the same, ~18 ms."""
    m = model()
    net = build_model(m, 0)
    x = hidden_states(m, 64, 0)
    net(x, net.new_caches(2, 32))  # warm-up: first calls keep each weight's float32 copy
    times = []
    for _ in range(5):
        caches = net.new_caches(2, 32)
        t0 = time.process_time()
        y = net(x, caches)
        times.append(time.process_time() - t0)
    print(f"tiny forward, 64 tokens, {m.layers} layers, 1 thread: median {statistics.median(times) * 1e3:.1f} ms "
          "CPU time")
    assert y.shape == x.shape and y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    assert statistics.median(times) < 0.1


def _distributed_layer(m, layer, ranks, tokens, seq, wire):
    """One MoE block run as `ranks` ranks: contiguous expert placement, FP8/BF16 wire rows."""
    per = m.experts // ranks
    owner = {e: e // per for e in range(m.experts)}
    blocks = [build_layer(m, 0, layer, experts=range(r * per, (r + 1) * per)) for r in range(ranks)]
    xs = [hidden_states(m, tokens, 0, stream=r) for r in range(ranks)]
    caches = [b.new_cache(tokens // seq, seq) for b in blocks]
    h = [b.attention(x, c) for b, x, c in zip(blocks, xs, caches, strict=True)]
    z = [b.ffn_input(hr) for b, hr in zip(blocks, h, strict=True)]
    routed = [b.route(zr) for b, zr in zip(blocks, z, strict=True)]
    y = [torch.zeros(tokens, m.top_k, m.hidden, dtype=torch.bfloat16) for _ in range(ranks)]
    for src in range(ranks):  # dispatch: one wire buffer per (source, destination)
        ids = routed[src][0]
        wire_rows = fp8.pack(z[src], wire[0])
        for dst in range(ranks):
            t_idx, k_idx = torch.nonzero(torch.tensor([[owner[int(e)] == dst for e in row] for row in ids]),
                                         as_tuple=True)
            shard = fp8.unpack(wire_rows[t_idx], m.hidden, wire[0])  # what arrives at dst
            out = torch.empty(len(t_idx), m.hidden, dtype=torch.bfloat16)
            for e in ids[t_idx, k_idx].unique().tolist():
                sel = (ids[t_idx, k_idx] == e).nonzero().flatten()
                part = shard.index_select(sel) if isinstance(shard, fp8.Fp8Act) else shard[sel]
                out[sel] = blocks[dst].expert_forward(e, part)
            back = fp8.unpack(fp8.pack(out, wire[1]), m.hidden, wire[1])  # combine wire
            y[src][t_idx, k_idx] = back if wire[1] == "bf16" else back.dequantize(torch.bfloat16)
    outs = [b.combine(hr, yr, w, b.shared_forward(zr)) for b, hr, yr, (_, w), zr
            in zip(blocks, h, y, routed, z, strict=True)]
    return torch.cat(outs), torch.cat(xs)


@pytest.mark.parametrize("wire", [("fp8", "bf16"), ("bf16", "fp8")])
def test_distributed_pieces_reproduce_the_reference_forward(wire):
    m = model()
    out, x_all = _distributed_layer(m, 1, ranks=4, tokens=16, seq=8, wire=wire)
    ref_block = build_layer(m, 0, 1)  # all experts, all ranks' sequences as one batch
    ref = ref_block(x_all, ref_block.new_cache(4 * 2, 8), wire=wire)
    err = _rel(out, ref)
    print(f"distributed vs reference, wire {wire}: relative error {err:.2e}")
    assert err < 1e-3  # only summation order differs (batched matmuls over other row sets)


def test_fp8_dispatch_is_the_quantization_the_expert_does_anyway():
    m = model()
    blk = build_layer(m, 0, 1)
    x = hidden_states(m, 16, 1)
    a = blk(x, blk.new_cache(2, 8), wire=("fp8", "bf16"))
    b = blk(x, blk.new_cache(2, 8), wire=("bf16", "bf16"))
    assert torch.equal(a, b)
    z = hidden_states(m, 5, 2)
    assert torch.equal(blk.expert_forward(3, fp8.quantize_act(z)), blk.expert_forward(3, z))


def test_given_routing_and_dropped_slots():
    m = model()
    net = build_model(m, 0, layers=[1])
    blk = net.block(1)
    x = hidden_states(m, 16, 3)
    ids = np.tile(np.arange(m.top_k), (16, 1))
    y_given = net(x, net.new_caches(2, 8), routing={1: ids})
    y_gate = net(x, net.new_caches(2, 8))
    assert not torch.equal(y_given, y_gate)
    # the given ids are used: the same output as the block's own pieces with those ids
    h = blk.attention(x, blk.new_cache(2, 8))
    z = blk.ffn_input(h)
    ids_t, w = blk.route(z, ids)
    manual = blk.combine(h, blk.moe_local(z, ids_t), w, blk.shared_forward(z))
    assert torch.equal(y_given, manual)
    # every slot dropped: attention output plus the shared expert only
    none = torch.zeros(16, m.top_k, dtype=torch.bool)
    y_dropped = net(x, net.new_caches(2, 8), routing={1: ids}, keep={1: none})
    torch.testing.assert_close(y_dropped.float(), (h.float() + blk.shared_forward(z)).to(torch.bfloat16).float())


def test_expert_is_swiglu_written_out():
    """y = w2(silu(w1 x) * w3 x) with the dequantized weights in float32; the FP8 expert differs by its two
    activation quantizations (x and the product, each ~0.027 relative RMS: sqrt(2) x 0.027 ~ 0.04)."""
    m = model()
    bank = build_layer(m, 0, 1, experts=[7]).experts
    f = m.expert_hidden
    w13 = fp8.dequantize_weight(bank.w13[0], bank.s13[0])
    w2 = fp8.dequantize_weight(bank.w2[0], bank.s2[0])
    x = hidden_states(m, 40, 6, dtype=torch.float32)
    ref = (torch.nn.functional.silu(x @ w13[:f].t()) * (x @ w13[f:].t())) @ w2.t()
    err = _rel(bank(7, x, torch.float32), ref)
    assert 0.005 < err < 0.06


def test_expert_not_held_is_a_clear_error():
    m = model()
    blk = build_layer(m, 0, 1, experts=[0, 1])
    with pytest.raises(KeyError, match="MLP 5 is not held"):
        blk.expert_forward(5, hidden_states(m, 3, 0))
    with pytest.raises(ValueError, match="expert ids"):
        build_layer(m, 0, 1, experts=[16])


def test_bf16_model_runs_and_stays_close_to_fp8():
    x = hidden_states(model(), 16, 4)
    outs = []
    for dtype in ("bf16", "fp8"):
        blk = build_layer(model(dtype=dtype), 0, 1)
        routing = np.tile(np.arange(4), (16, 1))  # same experts, so only the number formats differ
        outs.append(blk(x, blk.new_cache(2, 8), ids_TK=routing))
    assert 0 < _rel(outs[1] - x, outs[0] - x) < 0.1


def test_weights_in_memory_equal_the_spec_sizes_for_tiny():
    m = model()
    blk = build_layer(m, 0, 1)
    assert sum(lin.weight_bytes for lin in blk.attn.modules() if hasattr(lin, "fp8")) == \
        sizes.attention_weight_bytes(m)
    assert blk.experts.weight_bytes == m.experts * sizes.expert_weight_bytes(m)
    assert blk.shared.weight_bytes == m.shared_experts * sizes.expert_weight_bytes(m)
    assert build_layer(m, 0, 0).dense.weight_bytes == sizes.dense_ffn_weight_bytes(m)


def test_one_paper_layer_with_one_expert_on_the_meta_device():
    """A paper layer's 256 experts need 101 GB, more than this machine has: build the attention and one
    expert on the meta device (shapes and dtypes, no data), check their bytes against moe.spec.sizes
    and push a 4096-token prefill through every shape, including the FP8 GEMMs and the absorbed form."""
    m = model("paper")
    blk = build_layer(m, 0, 5, experts=[42], device="meta")
    attn_bytes = sum(lin.weight_bytes for lin in blk.attn.modules() if hasattr(lin, "fp8"))
    assert attn_bytes == sizes.attention_weight_bytes(m)
    assert blk.experts.weight_bytes == sizes.expert_weight_bytes(m) == 396_361_728 + 3 * 56 * 144 * 4
    assert blk.experts.w13.dtype == torch.float8_e4m3fn and blk.experts.s13.shape == (1, 288, 56)
    print(f"paper attention {attn_bytes / 1e6:.1f} MB + one expert {blk.experts.weight_bytes / 1e6:.1f} MB")
    x = torch.empty(4096, m.hidden, dtype=torch.bfloat16, device="meta")
    h = blk.attention(x, blk.new_cache(2, 2048))
    assert h.shape == (4096, 7168)
    y = blk.expert_forward(42, fp8.quantize_act(h[:300]))
    assert y.shape == (300, 7168) and y.dtype == torch.bfloat16
    dec = blk.attention(torch.empty(2, 7168, dtype=torch.bfloat16, device="meta"),
                        _filled(blk.new_cache(2, 4096), 4095))
    assert dec.shape == (2, 7168)


def _filled(cache, length):
    cache.length = length
    return cache


def test_moving_a_block_moves_the_fp8_views_with_it():
    m = model()
    blk = build_layer(m, 0, 1, experts=[0]).to("meta")
    assert blk.attn.wq_a.fp8.q_NK.device.type == "meta"
    assert blk.experts.fp8_w13[0][0].q_NK.device.type == "meta" and blk.experts.fp8_w2[0].scale.is_meta
    y = blk.expert_forward(0, torch.empty(3, m.hidden, dtype=torch.bfloat16, device="meta"))
    assert y.shape == (3, m.hidden)
