"""real/symm.py and the nvshmem mode's CPU-checkable parts (the transfers themselves need GPUs with NVSHMEM:
`pytest -m gpu tests/test_real_correctness.py -k nvshmem`)."""

from __future__ import annotations

import pytest
import torch

from moe.errors import RunFailure
from real import symm


@pytest.mark.parametrize(("ranks", "want"), [(1, 16), (2, 16), (4, 16), (8, 8), (12, 4), (32, 2), (64, 1),
                                             (128, 1)])
def test_blocks_per_peer_respect_the_caps(ranks, want):
    assert symm.blocks_per_peer(ranks) == want


@pytest.mark.parametrize("row_bytes", [7408, 7456, 14336, 2128, 4240, 1, 255, 256, 7169])
@pytest.mark.parametrize("bpp", [1, 2, 8, 16])
def test_padded_rows_give_every_block_a_whole_aligned_chunk_for_any_row_count(row_bytes, bpp):
    w = symm.width(row_bytes, bpp)
    assert row_bytes <= w < row_bytes + symm.ALIGN_BYTES * bpp
    for rows in (1, 7, 463, 1025, 4097):  # the op gives each of a peer's bpp blocks rows x stride / bpp bytes
        chunk, rest = divmod(rows * w, bpp)
        assert rest == 0 and chunk % symm.ALIGN_BYTES == 0
    assert symm.width(7408, 16) == 7424  # the measured case: 16 x 463 bytes, padded to 16 x 464


def test_phase_views_share_the_slot_memory_and_rows_drop_the_padding():
    flat = symm._Flat([torch.zeros(100, dtype=torch.uint8) for _ in range(2)],
                      [torch.zeros(400, dtype=torch.uint8) for _ in range(2)],
                      [torch.zeros(4, dtype=torch.int64) for _ in range(2)],
                      [torch.zeros(2, 4, dtype=torch.int64) for _ in range(2)])
    assert flat.fits(2, 100, 400) and not flat.fits(3, 100, 400) and not flat.fits(1, 101, 400)
    ph = flat.phase(1, 4, 16, 18, 20, "g")
    assert len(ph.inp) == 1 and ph.inp[0].shape == (4, 20) and ph.out[0].shape == (16, 20)
    ph.out[0][1, 0] = 7
    assert flat.out[0][20] == 7  # a view: the op writes where the transport reads
    rows = ph.rows(ph.out[0], 3)
    assert rows.shape == (3, 18) and rows.stride(0) == 20 and rows[1, 0] == 7
    assert ph.rows(ph.out[0]).shape == (16, 18)


def test_nvshmem_mode_on_cpus_is_refused_with_a_clear_error():
    from real.transport import RealTransport

    with pytest.raises(RunFailure, match="real.transport=nvshmem needs CUDA GPUs"):
        RealTransport(None, "nvshmem", torch.device("cpu"), 10.0)


@pytest.mark.parametrize(("row_bytes", "width", "offset"), [(7408, 7424, 0), (18, 20, 0), (18, 20, 2), (7, 16, 0),
                                                           (16, 16, 0), (12, 24, 4), (8, 16, 1)])
def test_copy_rows_moves_the_bytes_into_and_out_of_a_padded_stride(row_bytes, width, offset):
    g = torch.Generator().manual_seed(row_bytes)
    src = torch.randint(0, 255, (5, row_bytes), dtype=torch.uint8, generator=g)
    padded = torch.zeros(offset + 6 * width, dtype=torch.uint8)[offset:].view(6, width)
    symm.copy_rows(padded[:5, :row_bytes], src)
    assert torch.equal(padded[:5, :row_bytes], src)
    assert not padded[:5, row_bytes:].any() and not padded[5].any()  # the padding and the rest untouched
    back = torch.empty(5 * row_bytes, dtype=torch.uint8).view(5, row_bytes)
    symm.copy_rows(back, padded[:5, :row_bytes])
    assert torch.equal(back, src)
