"""moe.model.shapes lists exactly the GEMMs the model runs, and imports without torch."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode

from moe.model import shapes
from moe.model.model import build_layer, hidden_states
from moe.spec import load_scenario


def model(preset="tiny", **over):
    return load_scenario({"model": {"preset": preset, **over}, "cluster": {"nodes": 32, "gpus_per_node": 8}},
                         check=False).model


class RecordGemms(TorchDispatchMode):
    """Every aten mm/bmm as (batch, m, k, n)."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[int, int, int, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name == "mm":
            (m, k), (_, n) = args[0].shape, args[1].shape
            self.seen.append((1, m, k, n))
        elif name == "bmm":
            (b, m, k), (_, _, n) = args[0].shape, args[1].shape
            self.seen.append((b, m, k, n))
        elif name in ("addmm", "baddbmm", "matmul", "_scaled_mm"):
            raise AssertionError(f"unexpected GEMM op {name}: extend the recorder")
        return func(*args, **(kwargs or {}))


def _expected(gemms: list[shapes.Gemm]) -> Counter:
    return Counter((g.batch, g.m, g.k, g.n) for g in gemms)


@pytest.mark.parametrize("kind,layer", [("mla", 1), ("mla", 0), ("mha", 1)])
def test_a_prefill_and_a_decode_step_run_the_listed_gemms(kind, layer, monkeypatch):
    m = model(attention={"kind": kind})
    blk = build_layer(m, 0, layer)
    routed = []
    if blk.is_moe:  # remember the routing, to know how many rows each expert got
        route = blk.route
        monkeypatch.setattr(blk, "route", lambda z, ids=None: routed.append(route(z, ids)) or routed[-1])
    cache = blk.new_cache(2, 9)
    for tokens, absorbed in ((16, False), (2, True)):  # prefill 8 per sequence, then one decode step
        keys = cache.length + tokens // 2
        with sdpa_kernel(SDPBackend.MATH), RecordGemms() as rec:  # math SDPA: attention as two bmm
            blk(hidden_states(m, tokens, tokens), cache)
        rows = [n for n in torch.bincount(routed[-1][0].flatten(), minlength=m.experts).tolist() if n] \
            if blk.is_moe else []
        expect = shapes.layer_gemms(m, tokens, moe=blk.is_moe, sequences=2, keys=keys,
                                    absorbed=absorbed and kind == "mla", expert_rows=rows)
        assert Counter(rec.seen) == _expected(expect), (tokens, sorted(rec.seen), expect)


def test_paper_expert_flops_by_hand():
    m = model("paper")
    w13, w2 = shapes.expert_gemms(m, 4096)
    assert (w13.m, w13.k, w13.n, w13.dtype) == (4096, 7168, 2 * 18432, "fp8")
    assert (w2.m, w2.k, w2.n) == (4096, 18432, 7168)
    assert shapes.total_flops([w13, w2]) == 3 * 2 * 4096 * 7168 * 18432
    names = [g.name for g in shapes.layer_gemms(m, 4096, moe=True, sequences=1)]
    assert names[:3] == ["wq_a", "wq_b", "wkv_a"] and "gate" in names and "wo" in names
    with pytest.raises(ValueError, match="multiple of sequences"):
        shapes.attention_gemms(m, 10, sequences=3)


def test_shapes_import_without_torch():
    code = "import sys, moe.model.shapes; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_model_imports_no_simulator_or_mpi():
    code = ("import sys, moe.model.model, moe.model.linear, moe.model.fp8; "
            "bad = {'simpy', 'mpi4py'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
