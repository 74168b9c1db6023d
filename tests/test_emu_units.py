"""Pieces of the emulator that need no second rank: token grouping against moe.traffic, bounded waits,
the buffer pool, the report's figures, the launcher's environment detection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from emu import dispatch as dp
from emu.launch import launched_size, spec_for_child
from emu.transport import WaitTimeout, poll_until
from moe.spec import load_scenario


@settings(max_examples=60, deadline=None)
@given(t=st.integers(1, 40), k=st.integers(1, 4), ranks=st.integers(1, 6), slots=st.integers(1, 3),
       seed=st.integers(0, 2**31 - 1))
def test_plan_groups_distinct_tokens_per_destination(t, k, ranks, slots, seed):
    rng = np.random.default_rng(seed)
    slot_TK = rng.integers(0, ranks * slots, size=(t, k)).astype(np.int32)
    keep_TK = rng.random((t, k)) > 0.2
    w_TK = torch.from_numpy(rng.random((t, k)).astype(np.float32))
    plan = dp.plan_dispatch(3, slot_TK, keep_TK, w_TK, slots, ranks)
    rows_NB = dp.pack_rows(torch.zeros(t, 8), plan, "bf16")
    assert rows_NB.shape == (len(plan.token_N), dp.row_bytes(8, "bf16", k))
    meta_NC = rows_NB[:, :8 * k].contiguous().view(torch.int32)
    for d in range(ranks):
        rows = plan.rows_to(d)
        expect = sorted({i for i in range(t) for j in range(k) if keep_TK[i, j] and slot_TK[i, j] // slots == d})
        assert plan.token_N[rows].tolist() == expect  # distinct tokens, ascending: moe.traffic's count
        meta = meta_NC[rows]
        local = dp.local_slots(meta[:, :k], d * slots, slots)  # what rank d keeps of each row
        for r, tok in enumerate(expect):
            for j in range(k):
                here = keep_TK[tok, j] and slot_TK[tok, j] // slots == d
                assert local[r, j] == (slot_TK[tok, j] % slots if here else -1)
            assert torch.equal(meta[r, k:].view(torch.float32), w_TK[tok])
        assert local[local >= 0].numel() == plan.requests_RS[d].sum()
    assert plan.counts_R.sum() == len(plan.token_N)


@settings(max_examples=40, deadline=None)
@example(ranks=1, slots=1, k=1, spare=0, wire=(7, "bf16"), seed=2510)  # one row of a 22-byte stride
@given(ranks=st.integers(1, 5), slots=st.integers(1, 3), k=st.integers(1, 3), spare=st.integers(0, 9),
       wire=st.sampled_from([(8, "fp8"), (7, "bf16")]), seed=st.integers(0, 2**31 - 1))
def test_counts_of_rows_match_what_the_senders_planned(ranks, slots, k, spare, wire, seed):
    """A device-split receiver derives its counts from the rows that landed (rank order, unused rows of
    stale bytes after them): the same as the sources' plans say, empty sources included; rows of any
    stride (7 bf16 values: a row stride that is no multiple of 4)."""
    hidden, dtype = wire
    rng = np.random.default_rng(seed)
    me = int(rng.integers(0, ranks))
    blocks, want = [], []
    for _ in range(ranks):
        t = int(rng.integers(1, 12))
        slot_TK = rng.integers(0, ranks * slots, size=(t, k)).astype(np.int32)
        plan = dp.plan_dispatch(0, slot_TK, rng.random((t, k)) > 0.3, torch.ones(t, k), slots, ranks)
        blocks.append(dp.pack_rows(torch.zeros(t, hidden), plan, dtype)[plan.rows_to(me)])
        want.append(plan.counts_RX[me])
    stale = torch.from_numpy(rng.integers(0, 256, (spare, dp.row_bytes(hidden, dtype, k)), dtype=np.uint8))
    got = dp.counts_of_rows(torch.cat([*blocks, stale]), torch.tensor([len(b) for b in blocks]), me * slots,
                            slots, k)
    want_RX = np.array(want)
    assert got.dtype == torch.int64
    assert np.array_equal(got.numpy(), np.concatenate([want_RX[:, 0], want_RX[:, 1:].sum(axis=0)]))


def test_compute_shard_weights_each_local_expert():
    """Rows that chose two local experts get w1 f1(x) + w2 f2(x); choices of other ranks' slots and dropped
    ones (-1) are ignored. This rank's slots are 10 and 11 (global ids)."""

    class Block:
        def expert_forward(self, expert, x):
            return (x.dequantize(torch.float32) if hasattr(x, "q_TD") else x.float()) * (expert + 1)

    x = torch.tensor([[1.0] * 128, [2.0] * 128])
    meta = torch.tensor([[10, 11, -1, 0, 0, 0], [12, 11, 10, 0, 0, 0]], dtype=torch.int32)
    meta[:, 3:] = torch.tensor([[0.5, 0.25, 9.0], [9.0, 1.0, 2.0]]).view(torch.int32)
    rows = dp.pack(x, "bf16", head=meta.view(torch.uint8))
    for slot_rows in (None, np.array([2, 2])):  # grouped by nonzero per slot, or by one sort
        out = dp.unpack(dp.compute_shard(Block(), [4, 7], 10, rows, 128, "bf16", "bf16", torch.device("cpu"),
                                         slot_rows_S=slot_rows), 128, "bf16")
        assert torch.allclose(out[0].float(), torch.full((128,), 0.5 * 5 + 0.25 * 8))
        assert torch.allclose(out[1].float(), torch.full((128,), 2.0 * (1.0 * 8 + 2.0 * 5)))


def test_compute_shard_reads_meta_of_rows_with_an_odd_stride():
    """bf16 rows of an odd hidden size are 2 (mod 4) bytes long: the meta columns cannot be viewed as
    int32 in place, even for a single row."""

    class Block:
        def expert_forward(self, expert, x):
            return x.float() * (expert + 1)

    meta = torch.tensor([[3, -1, 0, 0]], dtype=torch.int32)
    meta[:, 2:] = torch.tensor([[0.5, 7.0]]).view(torch.int32)
    rows = dp.pack(torch.ones(1, 129), "bf16", head=meta.view(torch.uint8))
    assert rows.shape == (1, dp.row_bytes(129, "bf16", 2)) and rows.shape[1] % 4 == 2
    out = dp.unpack(dp.compute_shard(Block(), [0, 1], 2, rows, 129, "bf16", "bf16", torch.device("cpu")), 129, "bf16")
    assert torch.allclose(out.float(), torch.full((1, 129), 0.5 * 2))


def test_shard_in_sizes_a_probed_message_by_its_bytes():
    from mpi4py import MPI

    from emu.mpi_transport import MPITransport

    tr = MPITransport(MPI.COMM_SELF)
    slot_TK = np.array([[0, 2], [3, 1]])  # 2 slots per rank: slots 2 and 3 are rank 1's
    plan = dp.plan_dispatch(0, slot_TK, np.ones((2, 2), dtype=bool), torch.ones(2, 2), 2, 2)
    ex = dp.Exchange(0, plan, 8, "bf16", "bf16")
    ex.shards_missing.update({1, 2, 3})
    assert not dp.shard_in(tr, ex, 1, torch.empty(0, dtype=torch.uint8))  # an empty shard: nothing to compute
    with pytest.raises(RuntimeError, match="not whole 32-byte rows"):
        dp.shard_in(tr, ex, 2, torch.empty(50, dtype=torch.uint8))
    rows = dp.pack_rows(torch.zeros(2, 8), plan, "bf16")[plan.rows_to(0)]  # the rows rank 0 gets
    assert dp.shard_in(tr, ex, 3, rows.reshape(-1)) and ex.shard_bufs[3].shape == (2, 32)
    assert ex.shards_missing == set()
    assert dp.slot_rows(tr, ex, [3], 2).tolist() == [1, 1]  # rank 0 keeps slot 0 of token 0, 1 of token 1


def test_tags_stay_below_the_collective_tags():
    assert dp.tag(dp.MAX_KEY, dp.KIND_RESULT) < 32000
    with pytest.raises(ValueError, match="too many layers"):
        dp.tag(dp.MAX_KEY + 1, 0)


def test_poll_until_times_out_naming_the_rank_and_what():
    with pytest.raises(WaitTimeout, match="rank 3: timed out after 0.05 s waiting for shards from rank 1"):
        poll_until(lambda: None, 0.05, "shards from rank 1", 3, spin_s=0.01)
    assert poll_until(lambda: 7, 1.0, "x", 0) == 7


def test_buffer_pool_reuses_released_buffers():
    from mpi4py import MPI

    from emu.mpi_transport import MPITransport

    tr = MPITransport(MPI.COMM_SELF)
    a = tr.take_buffer(5000)
    assert a.numel() == 5000 and a.dtype == torch.uint8
    tr.give_buffer(a.view(torch.int32))  # any view of it
    b = tr.take_buffer(7000)  # same power-of-two capacity (8192)
    assert b.data_ptr() == a.data_ptr()
    assert tr.take_buffer(7000).data_ptr() != a.data_ptr()  # b is still taken


def test_host_array_is_the_same_memory():
    """host_array: a pooled buffer's leading part sliced from the pool's NumPy array, anything else through
    Tensor.numpy(); non-contiguous or non-byte buffers are refused."""
    from mpi4py import MPI

    from emu.mpi_transport import MPITransport

    tr = MPITransport(MPI.COMM_SELF)
    pooled = tr.take_buffer(5000)
    rows = pooled.view(50, 100)  # a 2-D view: the array is still flat, all of its bytes
    for buf in (pooled, rows, torch.zeros(30, 10, dtype=torch.uint8)):
        arr = tr.host_array(buf)
        assert arr.shape == (buf.numel(),)  # flat, so that a byte range is a slice
        arr[:3] = (7, 8, 9)
        assert buf.reshape(-1)[:3].tolist() == [7, 8, 9]
    assert tr.host_array(pooled).size == 5000 and tr.host_array(pooled[:10]).size == 10
    with pytest.raises(ValueError, match="contiguous uint8"):
        tr.host_array(rows[:, :10])  # starts at the pooled address, but is not contiguous
    with pytest.raises(ValueError, match="contiguous uint8"):
        tr.host_array(pooled.view(torch.int32))


def test_launcher_detects_mpiexec_environments(monkeypatch):
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_UNIVERSE_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert launched_size() is None
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "8")
    assert launched_size() == 8


def test_child_spec_is_self_contained(tmp_path):
    """A profile named by a relative path is replaced by explicit values the child can load anywhere."""
    from moe.profile import write_profile
    from moe.spec.loader import load_preset

    write_profile(tmp_path / "prof.yaml", {**load_preset("cluster", "cpu-host"), "gpus_per_node": 2,
                                           "nvlink_GBps": 3.5})
    (tmp_path / "s.yaml").write_text("model: {preset: tiny}\ncluster: {preset: prof.yaml}\n"
                                     "placement: {strategy: contiguous}\nworkload: {tokens_per_gpu: 16}\n")
    s = load_scenario(tmp_path / "s.yaml")
    child = load_scenario(spec_for_child(s))
    assert child.cluster.nvlink_GBps == 3.5 and child.cluster.gpus == 2
    assert child.model == s.model and child.workload == s.workload
