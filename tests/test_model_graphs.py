"""The model's fixed-shape calls (moe.model.graphs.ModelCalls): eager on a CPU, replayed CUDA graphs on a GPU,
with the same results and the same cache bookkeeping as the direct calls."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moe.model.graphs import EAGER, ModelCalls, Replays
from moe.model.model import build_layer, hidden_states
from moe.spec import load_scenario


def _model():
    return load_scenario({"model": {"preset": "tiny", "layers": 2, "dense_layers": 1}}, check=False).model


def _layers(device):
    model = _model()
    return model, build_layer(model, 0, 0, device=device), build_layer(model, 0, 1, device=device)


def _run_all(calls: ModelCalls, model, dense, moe, x_TD, ids_TK, cache, tag):
    """Every call of a layer front, as the runtime makes them; returns outputs (cloned) and the cache length."""
    a = calls.attention(dense, x_TD, cache, False, tag)
    length = cache.length
    d = calls.dense(dense, a, tag)
    z, w = calls.gate(moe, d, ids_TK, tag)
    s = calls.shared(moe, z, tag)
    return [t.clone() for t in (a, d, z, w)] + [None if s is None else s.clone()], length


def _direct(model, dense, moe, x_TD, ids_TK, cache):
    a = dense.attention(x_TD, cache, absorbed=False)
    d = (a.float() + dense.dense_forward(dense.ffn_input(a)).float()).to(a.dtype)
    z = moe.ffn_input(d)
    return [a, d, z, moe.gate.weights(moe.gate.scores(z), ids_TK), moe.shared_forward(z)]


def _check(device, graphs: bool):
    torch.manual_seed(0)
    model, dense, moe = _layers(device)
    calls = ModelCalls(device, graphs=graphs)
    cache = dense.new_cache(2, 64)
    with torch.inference_mode():
        for step in range(4):  # eager, captured + replayed, replayed, replayed
            x_TD = hidden_states(model, 32, 0, step, device=device)  # a fresh buffer each step: copied in
            ids_TK = torch.randint(0, model.experts, (32, model.top_k), device=device)
            cache.length = 8
            got, length = _run_all(calls, model, dense, moe, x_TD, ids_TK, cache, (1, 0))
            assert cache.length == length == 8 + 16
            ref_cache = dense.new_cache(2, 64)
            ref_cache.data_BSW.copy_(cache.data_BSW)
            ref_cache.length = 8
            want = _direct(model, dense, moe, x_TD, ids_TK, ref_cache)
            for g, w in zip(got, want, strict=True):
                assert (g is None) == (w is None)
                if g is not None:
                    assert torch.equal(g, w), f"step {step}"
    return calls


def test_model_calls_on_a_cpu_are_the_direct_calls():
    calls = _check("cpu", graphs=True)
    assert calls.replays is None  # graphs only on a GPU


@pytest.mark.gpu
def test_model_calls_replayed_as_cuda_graphs_equal_the_direct_calls():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    calls = _check(torch.device("cuda", 0), graphs=True)
    assert calls.replays is not None
    states = list(calls.replays.state.values())
    assert states and all(isinstance(s, tuple) for s in states), "every call captured"


@pytest.mark.gpu
def test_replays_read_stable_inputs_in_place_copy_others_and_keep_tags_apart():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    dev = torch.device("cuda", 0)
    r = Replays(dev, 0, "test")
    x = torch.arange(8, dtype=torch.float32, device=dev)
    first = [r.run(("double", tag), lambda v: v * 2, x) for tag in (0, 1)]
    outs = [r.run(("double", tag), lambda v: v * 2, x) for tag in (0, 1)]  # captured, replayed
    assert outs[0].data_ptr() != outs[1].data_ptr()  # each key its own output buffer
    y = r.run("plus", lambda v: v + 1, outs[0])
    y = r.run("plus", lambda v: v + 1, outs[0])
    assert r.state["plus"][1][0] is outs[0]  # a replay's output is read where it is, not cloned
    x2 = x + 10  # another buffer: copied into the captured input
    r.run(("double", 0), lambda v: v * 2, x2)
    r.run("plus", lambda v: v + 1, outs[0])
    torch.cuda.synchronize()
    assert torch.equal(first[0], x * 2) and torch.equal(outs[0], x2 * 2) and torch.equal(y, x2 * 2 + 1)
    assert torch.equal(outs[1], x * 2)  # the other tag's output untouched
    elsewhere = outs[0].clone() + 100  # the in-place input given as another tensor: never copied over outs[0]
    got = r.run("plus", lambda v: v + 1, elsewhere)
    torch.cuda.synchronize()
    assert torch.equal(got, elsewhere + 1) and torch.equal(outs[0], x2 * 2) and r.state["plus"] == "warm"
    r.clear()
    assert not r.state and not r.stable


@pytest.mark.gpu
def test_replays_run_eagerly_then_replay_the_captured_graph_in_place_and_fall_back_where_capture_fails():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    dev = torch.device("cuda", 0)
    x = torch.arange(8, dtype=torch.float32, device=dev)
    r = Replays(dev, 0)
    calls = []

    def body():
        calls.append(1)
        return x * 2 + 1

    first = r.run("k", body)  # eager (warm-up)
    second = r.run("k", body)  # captured, then replayed
    x.add_(1)
    third = r.run("k", body)  # replayed: body is not called, the captured output is rewritten
    torch.cuda.synchronize()
    assert len(calls) == 2 and third is second
    assert torch.equal(first, torch.arange(8, device=dev) * 2 + 1) and torch.equal(third, x * 2 + 1)

    def syncs():
        return torch.tensor([float(x.sum().item())], device=dev)  # a host sync: not capturable

    r.run("s", syncs)
    out = r.run("s", syncs)  # capture fails: eager from then on
    assert r.state["s"] == EAGER and float(out) == float(x.sum())
    r.clear()
    assert not r.state


def test_graph_rows_pad_by_at_most_a_sixteenth_to_a_bounded_set_of_shapes():
    from moe.spec.sizes import GRAPH_ROW_STEPS as ROW_STEPS
    from moe.spec.sizes import graph_rows

    seen = set()
    for rows in range(1, 5000):
        b = graph_rows(rows)
        assert b >= rows and b % 16 == 0 and b - rows < max(16, rows / ROW_STEPS)
        seen.add(b)
    assert graph_rows(4096) == 4096 and graph_rows(4097) == 4352 and graph_rows(300) == 304
    assert len(seen) <= 16 * 13  # per doubling at most ROW_STEPS shapes
    assert list(graph_rows(np.array([1.5, 300.0, 4097.0]))) == [16, 304, 4352]  # the simulator's expected rows


@pytest.mark.gpu
@pytest.mark.parametrize("wire", ["fp8", "bf16"])
def test_expert_calls_replayed_on_padded_rows_equal_the_eager_calls(wire):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from moe.model.fp8 import quantize_act

    dev = torch.device("cuda", 0)
    model, _, moe = _layers(dev)
    calls = ModelCalls(dev, graphs=True)
    gen = torch.Generator(device="cpu").manual_seed(1)
    # 100 rows: eager, captured, replayed; 37: another shape; 5000 grows the buffers past STAGING_ROWS (every
    # graph dropped, the pool replaced); then 100 rows are captured again
    sizes = (5, 100, 100, 100, 37, 5000, 100, 100, 100)
    expect_captured = (False, False, True, True, True, False, False, True, True)
    with torch.inference_mode():
        x = hidden_states(model, 6000, 0, 3, device=dev)
        shard = quantize_act(x) if wire == "fp8" else x
        for rows, expected in zip(sizes, expect_captured, strict=True):
            rows_R = torch.randperm(6000, generator=gen)[:rows].to(dev)
            for e in (0, 3):
                got = calls.expert(moe, e, shard, rows_R).clone()
                sel = shard.index_select(rows_R) if wire == "fp8" else shard.index_select(0, rows_R)
                want = moe.expert_forward(e, sel)
                assert got.shape == want.shape
                err = float((got.float() - want.float()).norm() / want.float().norm())
                assert err < 1e-2, (rows, e, err)
            states = calls.expert_replays.state.values()
            assert not any(s == EAGER for s in states), "a capture failed (stderr says why)"
            assert any(isinstance(s, tuple) for s in states) == expected, rows
