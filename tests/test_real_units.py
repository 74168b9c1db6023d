"""Units of the real backend on one in-process gloo rank: groups issue in key order per phase and only once
both sides are posted, own parts land in their region, completion semantics (host-observed vs
stream-ordered), misuse is refused; cat_rows views adjacent blocks; options and machine names."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emu import dispatch as dp


@pytest.fixture(scope="module")
def groups():
    from real import dist
    from real.groups import forget_process_groups, process_groups

    dist.init("gloo", timeout_s=30)
    yield process_groups("gloo", 30)
    dist.finish()
    forget_process_groups()


def transport(groups, mode: str, stream_ordered: bool = False):
    from real.transport import RealTransport

    return RealTransport(groups, mode, torch.device("cpu"), 30.0, stream_ordered=stream_ordered)


def post_combine(tr, key: int, payload: bytes):
    """One rank's combine group of `key`: its result rows to itself (the only rank)."""
    send = torch.tensor(list(payload), dtype=torch.uint8)
    (views,), recv_pending = tr.irecv_split([np.array([len(payload)])], [dp.tag(key, dp.KIND_RESULT)], ("result", key))
    send_pending = tr.isend_split([send], [np.array([len(payload)])], [dp.tag(key, dp.KIND_RESULT)], ("sent", key))
    return views, recv_pending + send_pending


@pytest.mark.parametrize("mode", ["p2p", "all_to_all"])
def test_groups_issue_in_key_order_and_deliver_the_own_part(groups, mode):
    tr = transport(groups, mode)
    later, pending1 = post_combine(tr, 1, b"later")
    assert not tr.groups[("combine", 1)].issued  # key 0 of this phase comes first
    first, pending0 = post_combine(tr, 0, b"first")
    assert tr.groups[("combine", 0)].issued and tr.groups[("combine", 1)].issued
    tr.wait_all(pending0 + pending1, 10.0, "test groups")
    tr.ready(first[0], later[0])
    assert bytes(first[0].tolist()) == b"first" and bytes(later[0].tolist()) == b"later"
    assert [p.meta for p in pending0] == [("result", 0, 0)]  # the own part is an operation too


def test_a_half_posted_group_is_not_issued(groups):
    tr = transport(groups, "all_to_all")
    tr.irecv_split([np.array([4])], [dp.tag(0, dp.KIND_RESULT)])
    assert not tr.groups[("combine", 0)].issued
    assert tr.next_issue["combine"] == 0


def test_stream_ordered_completion_is_reported_at_issue(groups):
    tr = transport(groups, "p2p", stream_ordered=True)
    views, pending = post_combine(tr, 0, b"abc")
    assert tr.test_some(pending) == list(range(len(pending)))
    tr.ready(views[0])  # on gloo: waits (bounded) for the group's work
    assert bytes(views[0].tolist()) == b"abc"


def test_counts_exchange_is_synchronous(groups):
    tr = transport(groups, "all_to_all")
    assert tr.exchange_counts(np.array([[5, 2, 3]]), dp.tag(0, dp.KIND_COUNTS)).tolist() == [[5, 2, 3]]


def test_misuse_is_refused(groups):
    tr = transport(groups, "all_to_all")
    tr.isend_split([torch.zeros(3, dtype=torch.uint8)], [np.array([3])], [dp.tag(0, dp.KIND_RESULT)])
    with pytest.raises(RuntimeError, match="second send of combine key 0"):
        tr.isend_split([torch.zeros(3, dtype=torch.uint8)], [np.array([3])], [dp.tag(0, dp.KIND_RESULT)])
    with pytest.raises(RuntimeError, match="sends and receives do not match"):  # own part 3 bytes vs 4
        tr.irecv_split([np.array([4])], [dp.tag(0, dp.KIND_RESULT)])
    with pytest.raises(ValueError, match="does not hold its splits"):
        tr.isend_split([torch.zeros(2, dtype=torch.uint8)], [np.array([3])], [dp.tag(1, dp.KIND_RESULT)])
    with pytest.raises(ValueError, match="one key and phase"):
        tr.isend_split([torch.zeros(1, dtype=torch.uint8)] * 2, [np.array([1])] * 2,
                       [dp.tag(2, dp.KIND_PAYLOAD), dp.tag(2, dp.KIND_RESULT)])
    with pytest.raises(NotImplementedError):
        tr.irecv_probed([0], dp.tag(3, dp.KIND_PAYLOAD))


def test_cat_rows_views_adjacent_blocks_and_copies_others():
    buf = torch.arange(24, dtype=torch.uint8)
    a, b = buf[:8].view(2, 4), buf[8:20].view(3, 4)
    joined = dp.cat_rows([a, b])
    assert joined.data_ptr() == a.data_ptr() and joined.shape == (5, 4)
    assert torch.equal(joined, buf[:20].view(5, 4))
    c = buf[12:16].view(1, 4)  # not where a's rows end
    apart = dp.cat_rows([a, c])
    assert apart.data_ptr() != a.data_ptr() and torch.equal(apart, torch.cat([a, c]))
    other = torch.arange(8, dtype=torch.uint8).view(2, 4)  # another buffer
    assert torch.equal(dp.cat_rows([a, other]), torch.cat([a, other]))


def test_cat_rows_views_adjacent_blocks_of_padded_rows():
    """The nvshmem transport's receives: [rows, row bytes] views of a buffer whose rows are padded."""
    padded = torch.arange(60, dtype=torch.uint8).view(6, 10)[:, :7]  # 7-byte rows at a 10-byte stride
    a, b = padded[:2], padded[2:5]
    joined = dp.cat_rows([a, b])
    assert joined.data_ptr() == a.data_ptr() and joined.stride() == (10, 1) and torch.equal(joined, padded[:5])
    assert torch.equal(dp.cat_rows([a, padded[3:5]]), torch.cat([a, padded[3:5]]))  # a gap: copied
    flat = torch.arange(60, dtype=torch.uint8)[:35].view(5, 7)  # same bytes per row, another stride
    assert torch.equal(dp.cat_rows([a, flat[2:5]]), torch.cat([a, flat[2:5]]))
    cols = torch.arange(60, dtype=torch.uint8).view(10, 6).t()  # rows not whole (column stride 6): copied
    assert torch.equal(dp.cat_rows([cols[:2], cols[2:4]]), cols[:4])


def test_real_options_drive_the_runtime():
    from moe.spec import load_scenario
    from real.job import runtime_scenario

    s = load_scenario({"model": {"preset": "tiny"}, "cluster": {"preset": "cpu-host"},
                       "placement": {"strategy": "contiguous"},
                       "emu": {"warmup": 5, "repeats": 7, "timeout_s": 9.0, "fail_rank": 1},
                       "real": {"warmup": 0, "repeats": 2, "timeout_s": 3.0}})
    e = runtime_scenario(s, "cpu").emu
    assert (e.warmup, e.repeats, e.timeout_s, e.device, e.fail_rank) == (0, 2, 3.0, "cpu", 1)
    # on a GPU with graphs, each routing pattern runs twice untimed (eagerly, then captured)
    three = s.model_copy(update={"workload": s.workload.model_copy(update={"steps": 3})})
    assert runtime_scenario(three, "cuda").emu.warmup == 6
    eager = three.model_copy(update={"real": three.real.model_copy(update={"graphs": False})})
    assert runtime_scenario(eager, "cuda").emu.warmup == 0 and runtime_scenario(three, "cpu").emu.warmup == 0


def test_machine_name_counts_gpus_per_kind():
    from types import SimpleNamespace

    from real.backend import machine_name

    recs = [SimpleNamespace(device=f"cuda:{i} (NVIDIA H100 80GB HBM3)", host="n1") for i in range(4)]
    assert machine_name(recs) == "4 x NVIDIA H100 80GB HBM3 on 1 host (n1)"


class FakeEvent:
    """torch.cuda.Event's timing interface on the host clock (the GPU's events behave so once complete)."""

    def __init__(self, enable_timing: bool = False):
        self.t = None

    def record(self, stream=None):
        import time

        self.t = time.perf_counter()

    def query(self) -> bool:
        return self.t is not None

    def elapsed_time(self, end) -> float:
        return (end.t - self.t) * 1e3


def test_cuda_clock_resolves_marks_and_spans_after_the_step(monkeypatch):
    from types import SimpleNamespace

    from real.timing import TRANSFER_LANE, CudaClock, Mark

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    clock = CudaClock(now=lambda: 0.0, rank=3, moe_from=1)
    clock.start_step(7, record=True)
    with clock.span("attention", 0, 0):
        pass
    stats = SimpleNamespace(layer_end_s=[clock.elapsed(), 0.0], end_s=None)
    with clock.span("expert", 1, 1):
        pass
    a, b = FakeEvent(), FakeEvent()
    a.record()
    b.record()
    clock.add_events("wait_dispatch", a, b, 1, 0)
    clock.add_events("dispatch_transfer", a, b, 1, 0)
    clock.add("wait_combine", 1.0, 1.5)  # a host-clock wait: kept apart from GPU time
    stats.end_s = clock.elapsed()
    assert isinstance(stats.end_s, Mark)
    clock.resolve(stats, timeout_s=5.0, rank=3)
    assert isinstance(stats.end_s, float) and stats.end_s >= stats.layer_end_s[0] >= 0.0
    assert [s.name for s in clock.spans] == ["attention", "expert", "wait_dispatch", "dispatch_transfer"]
    lanes = {s.name: s.lane for s in clock.spans}
    assert lanes["wait_dispatch"] == "comm" and lanes["dispatch_transfer"] == TRANSFER_LANE
    assert all(s.rank == 3 and s.args["step"] == 7 for s in clock.spans)
    assert set(clock.moe_totals_s) == {"expert", "wait_dispatch"}  # MoE layers and waits only
    assert "dispatch_transfer" in clock.totals_s and clock.host_s == {"wait_combine": 0.5}


def test_exchange_op_is_the_protocols_host_time_per_signature(groups):
    from moe.spec.loader import build_scenario
    from real.calibrate import measure_exchange_ops

    tiny = build_scenario({"model": {"preset": "tiny"}}).model
    one = tiny.model_copy(update={"top_k": 1})
    models = [(tiny, ("fp8", "bf16")), (tiny, ("fp8", "bf16")), (one, ("bf16", "bf16"))]  # the repeat: once
    points = measure_exchange_ops(models, (4, 32), repeats=2)
    assert [(p["model"], p["tokens"]) for p in points] == [
        ("d256k4-fp8-bf16", 4), ("d256k4-fp8-bf16", 32), ("d256k1-bf16-bf16", 4), ("d256k1-bf16-bf16", 32)]
    assert all(p["op"] == "exchange" and p["s"] > 0 and "per_node" not in p and p["ranks"] == 1 for p in points)


def test_calibrating_for_scenarios_measures_what_their_micro_batches_look_up(tmp_path):
    import yaml

    from real.op_points import OP_SMALLEST_PREFILL, load_scenarios, scenario_grid, scenario_models

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"model": {"preset": "paper", "experts": 4, "top_k": 2},
                                    "cluster": {"preset": "profile-not-made-yet.yaml"},
                                    "workload": {"tokens_per_gpu": 256, "context_len": 256},
                                    "schedule": {"micro_batches": 2, "combine_dtype": "fp8"}}))
    chosen = load_scenarios([str(path)])
    (model, wire), = scenario_models(chosen)
    assert (model.experts, model.top_k, wire) == (4, 2, ("fp8", "fp8"))
    grid = scenario_grid(chosen)
    assert 128 in grid.tokens and min(grid.tokens) < 128  # the chunks, and a small count for the fixed costs
    assert {(128, 128), (128, 256), OP_SMALLEST_PREFILL} <= set(grid.prefill)


def test_host_factors_are_each_ranks_median_ratio_to_the_median_rank():
    from real.calibrate import host_factors

    def run(scale):
        return [{"op": "gate", "s": 1e-3, "host_s": 1e-3 * scale}, {"op": "expert", "s": 2e-3, "host_s": 4e-3 * scale},
                {"op": "exchange", "s": 1e-3}]

    assert host_factors([run(1.0), run(1.0), run(1.5), run(1.0)]) == [1.0, 1.0, 1.5, 1.0]
    assert host_factors([[{"op": "gate", "s": 1e-3}]]) == []


def test_comm_slowdown_is_the_ratio_of_medians_less_one_never_below_zero():
    from real.interference import slowdown

    assert slowdown([1.0, 2.0, 1.0], [1.2, 5.0, 1.1]) == pytest.approx(0.2)
    assert slowdown([1.0], [0.9]) == 0.0


EXCHANGE_CHILD = """
import json
import torch.distributed as dist
from real import dist as rdist
rdist.init("gloo", timeout_s=60)
from moe.spec.loader import build_scenario
from real.calibrate import measure_exchange_ops
tiny = build_scenario({"model": {"preset": "tiny"}}).model
points = measure_exchange_ops([(tiny, ("fp8", "bf16"))], (4, 32), repeats=2)
if dist.get_rank() == 0:
    print(json.dumps([[p["ranks"], p["tokens"], p["s"]] for p in points]))
dist.destroy_process_group()
"""


def test_the_exchange_op_is_measured_by_the_first_1_2_and_4_ranks_of_a_4_rank_job():
    """real.calibrate.measure_exchange_ops on 4 gloo processes: points for 1, 2 and 4 ranks (`ranks`), the
    ranks outside a smaller group waiting for it; every size at every token count."""
    import json

    from test_real_correctness import launch_local

    from real.calibrate import exchange_rank_counts

    assert [exchange_rank_counts(n) for n in (1, 2, 4, 6, 8)] == [[1], [1, 2], [1, 2, 4], [1, 2, 4, 6], [1, 2, 4, 8]]
    codes, out, err = launch_local(4, ["-c", EXCHANGE_CHILD], timeout_s=240)
    assert codes == [0] * 4, out + err
    points = json.loads(out.strip().splitlines()[-1])
    assert [(r, t) for r, t, _ in points] == [(1, 4), (1, 32), (2, 4), (2, 32), (4, 4), (4, 32)]
    assert all(s > 0 for _, _, s in points)
