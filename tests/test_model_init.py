"""Deterministic weights per piece (moe.model.init and the builders that use it)."""

from __future__ import annotations

import math
import struct
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moe.model import init
from moe.model.ffn import SwiGLUBank
from moe.model.layer import Block
from moe.spec import load_scenario

M32 = 0xFFFFFFFF


def _lowbias32_py(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    return x ^ (x >> 16)


def _uniform_py(index: int, key: int, bound: float) -> float:
    """The element formula of init.uniform in plain Python integers and IEEE float32 steps."""
    h = _lowbias32_py(_lowbias32_py(index ^ (key & M32)) ^ (key >> 32))
    f32 = lambda v: struct.unpack("f", struct.pack("f", v))[0]  # noqa: E731
    u = f32(f32((h >> 8) * (2.0 / (1 << 24))) - 1.0)
    return f32(u * f32(bound))


def tiny(**over):
    return load_scenario({"model": {"preset": "tiny", **over}, "cluster": {"nodes": 2, "gpus_per_node": 8}},
                         check=False).model


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, M32), min_size=1, max_size=50))
def test_hash_equals_plain_integer_arithmetic(values):
    """The int64 torch evaluation never overflows: it equals exact 32-bit arithmetic."""
    got = init._lowbias32(torch.tensor(values, dtype=torch.int64)).tolist()
    assert got == [_lowbias32_py(v) for v in values]


def test_uniform_matches_its_formula_bit_for_bit():
    """What makes weights device-independent: each element is a fixed integer/IEEE formula of (index, key)."""
    key = init.piece_key(7, 3, "expert", 5, "w1")
    bound = math.sqrt(3.0 / 256)
    got = init.uniform((33, 17), [key], "cpu", bound)[0].flatten().tolist()
    assert got == [_uniform_py(i, key, bound) for i in range(33 * 17)]


def test_uniform_statistics_and_chunking(monkeypatch):
    keys = [init.piece_key(0, 0, "x", e) for e in range(3)]
    u = init.uniform((200, 300), keys)
    assert u.shape == (3, 200, 300) and u.min() >= -1 and u.max() < 1
    assert abs(u.mean().item()) < 0.01 and u.std().item() == pytest.approx(1 / math.sqrt(3), rel=0.01)
    assert not torch.equal(u[0], u[1])
    monkeypatch.setattr(init, "CHUNK", 40099)  # chunks that straddle rows of different keys
    assert torch.equal(init.uniform((200, 300), keys), u)


def test_piece_keys_are_stable_and_distinct():
    assert init.piece_key(0, 1, "expert", 2, "w1") == init.piece_key(0, 1, "expert", 2, "w1")
    parts = [(0, 1, "expert", 2, "w1"), (1, 1, "expert", 2, "w1"), (0, 2, "expert", 2, "w1"),
             (0, 1, "shared", 2, "w1"), (0, 1, "expert", 3, "w1"), (0, 1, "expert", 2, "w3")]
    assert len({init.piece_key(*p) for p in parts}) == len(parts)


def test_expert_weights_do_not_depend_on_which_rank_builds_them():
    m = tiny()
    everyone = SwiGLUBank(m, 0, 1, "expert", range(m.experts), m.expert_hidden, "cpu")
    rank = SwiGLUBank(m, 0, 1, "expert", [11, 2], m.expert_hidden, "cpu")
    for e in (11, 2):
        i, j = everyone.slot[e], rank.slot[e]
        for name in ("w13", "s13", "w2", "s2"):
            a, b = getattr(everyone, name)[i], getattr(rank, name)[j]
            assert torch.equal(a.view(torch.uint8) if a.dtype == torch.float8_e4m3fn else a,
                               b.view(torch.uint8) if b.dtype == torch.float8_e4m3fn else b)
    other_layer = SwiGLUBank(m, 0, 2, "expert", [2], m.expert_hidden, "cpu")
    assert not torch.equal(other_layer.s13[0], rank.s13[1])


def test_replicated_pieces_are_identical_on_every_rank():
    m = tiny()
    a, b = Block(m, 5, 1, experts=[0]), Block(m, 5, 1, experts=[9, 10])
    for (name, x), (_, y) in zip(a.named_buffers(), b.named_buffers(), strict=False):
        if name.startswith("experts."):
            continue
        assert torch.equal(x.view(torch.uint8) if x.dtype == torch.float8_e4m3fn else x,
                           y.view(torch.uint8) if y.dtype == torch.float8_e4m3fn else y), name


def test_tiny_model_builds_fast():
    from moe.model.model import build_model

    m = tiny()
    build_model(m, 0)
    t0 = time.process_time()  # CPU time on one thread: the cost, whatever else runs on the machine
    model = build_model(m, 1)
    elapsed = time.process_time() - t0
    print(f"tiny model build: {elapsed * 1e3:.0f} ms CPU time")
    assert elapsed < 1.0 and len(model.blocks) == m.layers


@pytest.mark.gpu
def test_weights_are_bit_identical_on_cpu_and_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    keys = [init.piece_key(0, 4, "expert", e, "w1") for e in range(3)]
    assert torch.equal(init.uniform((300, 700), keys, "cuda").cpu(), init.uniform((300, 700), keys, "cpu"))
    m = tiny()
    cpu, gpu = (SwiGLUBank(m, 0, 1, "expert", [3, 8], m.expert_hidden, d) for d in ("cpu", "cuda"))
    for name in ("w13", "s13", "w2", "s2"):
        a, b = getattr(cpu, name), getattr(gpu, name).cpu()
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8)) if a.dtype == torch.float8_e4m3fn \
            else torch.equal(a, b), name
