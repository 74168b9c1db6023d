"""real/symm.py and the nvshmem mode's CPU-checkable parts (the transfers themselves need GPUs with NVSHMEM:
`pytest -m gpu tests/test_real_correctness.py -k nvshmem`)."""

from __future__ import annotations

import pytest
import torch

from moe.errors import RunFailure
from real import symm


@pytest.mark.parametrize(("ranks", "rows", "want"), [(4, (7408, 14336), 16), (2, (7408, 14336), 16),
                                                     (4, (296, 512), 8), (4, (7240, 14336), 8), (8, (7408,), 8),
                                                     (32, (7408,), 2), (4, (7169,), 1)])
def test_blocks_per_peer_divide_every_row_and_respect_the_cap(ranks, rows, want):
    got = symm.blocks_per_peer(ranks, *rows)
    assert got == want
    assert all(r % got == 0 for r in rows) and got * ranks <= 64


def test_phase_views_share_the_slot_memory():
    flat = symm._Flat([torch.zeros(100, dtype=torch.uint8) for _ in range(2)],
                      [torch.zeros(400, dtype=torch.uint8) for _ in range(2)],
                      [torch.zeros(4, dtype=torch.int64) for _ in range(2)],
                      [torch.zeros(2, 4, dtype=torch.int64) for _ in range(2)])
    assert flat.fits(2, 100, 400) and not flat.fits(3, 100, 400) and not flat.fits(1, 101, 400)
    ph = flat.phase(1, 4, 16, 20, "g")
    assert len(ph.inp) == 1 and ph.inp[0].shape == (4, 20) and ph.out[0].shape == (16, 20)
    ph.out[0][1, 0] = 7
    assert flat.out[0][20] == 7  # a view: the op writes where the transport's receive views read


def test_nvshmem_mode_on_cpus_is_refused_with_a_clear_error():
    from real.transport import RealTransport

    with pytest.raises(RunFailure, match="real.transport=nvshmem needs CUDA GPUs"):
        RealTransport(None, "nvshmem", torch.device("cpu"), 10.0)
