"""NVSHMEM symmetric buffers of the `nvshmem` shard transport (`real.transport`, mode "nvshmem").

PyTorch's `torch.ops.symm_mem.all_to_all_vdev(input, out, in_splits, out_splits_offsets, group)` moves rows
between ranks with the splits on the device: after a device-side exchange of the splits (a barrier of the
group), each rank's rows land in the peers' `out` in source order (in the PyTorch source read for this, the
receivers pull them with NVSHMEM gets), and `out_splits_offsets` ([2, R]: rows per source, their offsets)
is filled. No host round trip comes before the data moves. Every buffer it touches must be symmetric
memory of the same size on every rank, so they are allocated here (a collective), sized for the largest
exchange to come, one set per exchange that can be in flight at once ("slot" = key % slots: the runtime
holds one exchange per micro-batch). They live as long as the process (later jobs reuse them, or outgrow
them into new ones) because freeing symmetric memory is collective too, and ranks let go of their last
views at different times:

  phase     input                     output
  dispatch  [max_rows, width]         [R x max_rows, width]           (every source may send max_rows)
  combine   [R x max_rows, res_width] [max_rows, res_width]

The op has no exit barrier: a rank may overwrite its input only once every peer has read it. A slot's
next use is the same micro-batch's next layer, whose dispatch is issued after the compute stream has
consumed this layer's results, which came after every peer's pull (`real.transport`'s notes).
Constraints of the op's kernel (torch 2.11): it splits each peer's bytes evenly over the blocks it gives
that peer (`TORCH_SYMMMEM_NBLOCKS` / R of them), asserts that they divide (a device assert ends the
process), and copies each block's chunk with one NVSHMEM block get, which is fast only on 16-byte aligned
chunks. A chunk is rows x stride / blocks, so a row's stride here (`width`) is its bytes padded to a multiple
of 16 x blocks per peer: every chunk is whole and aligned whatever the row count. Unpadded 7408-byte rows
(16 x 463): two dispatches of 4096 rows took 2.29 ms when a peer's rows were not a multiple of 16 and 0.25 ms
when they were; padded to 7424 bytes, 0.26 ms with the same odd counts (4 x H100, 64 blocks,
`benchmarks/measured/h100x4-2026-11-27j/align_probe.*`). Routed row counts are arbitrary: before the
padding, the transport's dispatch kernel took 0.98-1.08 ms inside the exchange for this reason, 0.09 ms
since (CUPTI traces, `trace_*` there). The padding costs at most 16 x blocks - 1 bytes a row (16 bytes of a
7408-byte row at 4 ranks); the receives are [rows, row bytes] views of the padded buffer, which the
protocol reads as they are (`emu.dispatch.cat_rows`, `unpack`).
Measured on 4 x H100 (`benchmarks/a2a_floor.py`): 91-97% of NCCL `all_to_all_single`'s time at the same bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from moe.errors import RunFailure

HEAP_MIN_BYTES = 4 << 30
"""NVSHMEM's symmetric heap (NVSHMEM_SYMMETRIC_SIZE) when the environment does not set it: at least this,
at least twice the first job's buffers (later jobs in the process may need more)."""


def available() -> bool:
    """NVSHMEM's library is loadable (PyTorch's own check) and a GPU is visible."""
    if not torch.cuda.is_available():
        return False
    try:
        from torch.distributed import _symmetric_memory as symm

        return bool(symm.is_nvshmem_available())
    except (ImportError, AttributeError, RuntimeError):
        return False


ALIGN_BYTES = 16
"""The alignment a block's chunk needs for the op's copies to run at full width (see above)."""
MAX_BLOCKS_PER_PEER = 16
"""Blocks per peer at most: 64 blocks at 4 ranks, the op's own cap within a node (torch 2.11). At fewer ranks
more blocks per peer would pad rows more (32 x 16 bytes at 2 ranks); whether they would move rows faster
was not measured."""


def blocks_per_peer(ranks: int) -> int:
    """Blocks the op gives each peer: a power of two, at most 64 / ranks and MAX_BLOCKS_PER_PEER, at least 1."""
    cap = max(1, min(MAX_BLOCKS_PER_PEER, 64 // ranks))
    return 1 << (cap.bit_length() - 1)


def width(row_bytes: int, bpp: int) -> int:
    """A row's stride in the symmetric buffers: its bytes padded to a multiple of ALIGN_BYTES x bpp, so that
    each of a peer's bpp chunks (rows x stride / bpp bytes) is whole and aligned for any row count."""
    unit = ALIGN_BYTES * bpp
    return -(-row_bytes // unit) * unit


@dataclass
class Phase:
    inp: list[torch.Tensor]
    """Per slot [rows, width] (a view of the slot's flat symmetric buffer); a row's bytes are [:, :row_bytes]."""
    out: list[torch.Tensor]
    """Per slot [rows, width], sources in rank order."""
    splits: list[torch.Tensor]
    """[R] int64 rows to each peer (the op's in_splits)."""
    out_so: list[torch.Tensor]
    """[2, R] int64 (the op's out_splits_offsets)."""
    group: str
    row_bytes: int
    """A row's bytes; its stride in `inp` and `out` is `width()` of them, more where they are padded."""

    def rows(self, t: torch.Tensor, n: int | None = None) -> torch.Tensor:
        """The first n rows' bytes of a slot's buffer (all its rows if n is None), without the padding."""
        return t[:n, :self.row_bytes]


def copy_rows(dst: torch.Tensor, src: torch.Tensor) -> None:
    """dst[:] = src for [rows, bytes] uint8 views, either of them padded (strided): as the widest integers
    both allow, since a strided copy is an elementwise kernel whose time goes with its element count (4 x
    H100, 4096 rows of 7408 bytes between a 7424-byte stride and flat rows: 70 us as bytes, 23-30 us as
    8-byte integers; `benchmarks/measured/h100x4-2026-11-27j/padded*/`)."""
    for dtype in (torch.int64, torch.int32, torch.int16):
        k = dtype.itemsize
        if all(t.shape[1] % k == 0 and t.stride(0) % k == 0 and t.storage_offset() % k == 0 for t in (dst, src)):
            dst.view(dtype).copy_(src.view(dtype))
            return
    dst.copy_(src)


@dataclass
class Buffers:
    slots: int
    dispatch: Phase
    combine: Phase

    def of(self, phase: str) -> Phase:
        return self.dispatch if phase == "dispatch" else self.combine


@dataclass
class _Flat:
    """One phase's symmetric memory: per slot a flat input and output buffer, the splits and offsets."""

    inp: list[torch.Tensor]
    out: list[torch.Tensor]
    splits: list[torch.Tensor]
    out_so: list[torch.Tensor]

    def fits(self, slots: int, in_bytes: int, out_bytes: int) -> bool:
        return slots <= len(self.inp) and in_bytes <= self.inp[0].numel() and out_bytes <= self.out[0].numel()

    def phase(self, slots: int, in_rows: int, out_rows: int, row_bytes: int, width: int, group: str) -> Phase:
        return Phase([t[:in_rows * width].view(in_rows, width) for t in self.inp[:slots]],
                     [t[:out_rows * width].view(out_rows, width) for t in self.out[:slots]],
                     self.splits[:slots], self.out_so[:slots], group, row_bytes)


_FLAT: dict[str, _Flat] = {}
_RETIRED: list[_Flat] = []
"""Outgrown buffers, never freed: freeing symmetric memory is collective, and the ranks drop their last
references at different times."""


def _flat(group, device: torch.device, slots: int, in_bytes: int, out_bytes: int) -> _Flat:
    from torch.distributed import _symmetric_memory as symm

    have = _FLAT.get(group.group_name)
    if have is not None and have.fits(slots, in_bytes, out_bytes):
        return have
    if have is not None:
        _RETIRED.append(have)
        slots, in_bytes, out_bytes = (max(slots, len(have.inp)), max(in_bytes, have.inp[0].numel()),
                                      max(out_bytes, have.out[0].numel()))
    ranks = dist.get_world_size(group)

    def empty(shape, dtype=torch.uint8):
        t = symm.empty(shape, dtype=dtype, device=device)
        symm.rendezvous(t, group=group.group_name)
        return t

    made = _Flat([empty(max(1, in_bytes)) for _ in range(slots)], [empty(max(1, out_bytes)) for _ in range(slots)],
                 [empty(ranks, torch.int64) for _ in range(slots)],
                 [empty((2, ranks), torch.int64) for _ in range(slots)])
    _FLAT[group.group_name] = made
    return made


def buffers(dispatch_group, combine_group, device: torch.device, slots: int, max_rows: int, row_bytes: int,
            result_row_bytes: int) -> Buffers:
    """This job's symmetric buffers (collective: every rank calls it with the same arguments, in one order),
    views of memory kept for the process and grown when a later job needs more."""
    from torch.distributed import _symmetric_memory as symm

    ranks = dist.get_world_size(dispatch_group)
    os.environ.setdefault("TORCH_SYMMMEM_NBLOCKS", str(ranks * blocks_per_peer(ranks)))
    blocks = os.environ["TORCH_SYMMMEM_NBLOCKS"]
    if not blocks.isdigit() or int(blocks) < ranks or int(blocks) % ranks:
        raise RunFailure(f"TORCH_SYMMMEM_NBLOCKS={blocks}: the nvshmem transport needs a positive multiple of the "
                         f"{ranks} ranks (it is read once a process)")
    bpp = int(blocks) // ranks
    w, v = width(row_bytes, bpp), width(result_row_bytes, bpp)
    per_slot = max_rows * w * (1 + ranks) + max_rows * v * (ranks + 1)
    os.environ.setdefault("NVSHMEM_SYMMETRIC_SIZE", str(max(HEAP_MIN_BYTES, 2 * slots * per_slot)))
    try:
        if symm.get_backend(device) != "NVSHMEM":
            symm.set_backend("NVSHMEM")
        d = _flat(dispatch_group, device, slots, max_rows * w, ranks * max_rows * w)
        c = _flat(combine_group, device, slots, ranks * max_rows * v, max_rows * v)
    except RuntimeError as err:
        raise RunFailure(f"real.transport=nvshmem: NVSHMEM symmetric buffers of {slots} x {per_slot / 2**20:.0f} MiB "
                         f"could not be made ({err}); NVSHMEM_SYMMETRIC_SIZE="
                         f"{os.environ.get('NVSHMEM_SYMMETRIC_SIZE')}") from err
    return Buffers(slots, d.phase(slots, max_rows, ranks * max_rows, row_bytes, w, dispatch_group.group_name),
                   c.phase(slots, ranks * max_rows, max_rows, result_row_bytes, v, combine_group.group_name))
