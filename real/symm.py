"""NVSHMEM symmetric buffers of the `nvshmem` shard transport (`real.transport`, mode "nvshmem").

PyTorch's `torch.ops.symm_mem.all_to_all_vdev(input, out, in_splits, out_splits_offsets, group)` moves rows
between ranks with the splits on the device: each rank pulls its rows from the peers' `input` (NVSHMEM
gets, after a device-side exchange of the splits), writes them to `out` in source order, and fills
`out_splits_offsets` ([2, R]: rows per source, their offsets). No host round trip comes before the data
moves. Every buffer it touches must be symmetric memory of the same size on every rank, so they are
allocated here once per job (a collective), sized for the largest exchange to come, one set per exchange
that can be in flight at once ("slot" = key % slots: the runtime holds one exchange per micro-batch):

  phase     input                     output
  dispatch  [max_rows, row_bytes]     [R x max_rows, row_bytes]       (every source may send max_rows)
  combine   [R x max_rows, res_bytes] [max_rows, res_bytes]

The op has no exit barrier: a rank may overwrite its input only once every peer has pulled it. A slot's
next use is the same micro-batch's next layer, whose dispatch is issued after the compute stream has
consumed this layer's results, which came after every peer's pull (`real.transport`'s notes).
Constraints of the op's kernel (torch 2.11): it splits each peer's bytes evenly over the blocks it gives
that peer and asserts that they divide (a device assert ends the process), so the block count is set
(`TORCH_SYMMMEM_NBLOCKS`) to R times the largest power of two, at most 64 / R, that divides both row sizes.
Measured on 4 x H100 (`benchmarks/a2a_floor.py`): 91-97% of NCCL `all_to_all_single`'s time at the same bytes.
"""

from __future__ import annotations

import math
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


def blocks_per_peer(ranks: int, *row_bytes: int) -> int:
    """Largest power of two that divides every row size, at most 64 / ranks (the kernel's block cap)."""
    g = math.gcd(*row_bytes)
    twos = g & -g
    return max(1, min(twos, 64 // ranks))


@dataclass
class Phase:
    inp: list[torch.Tensor]
    out: list[torch.Tensor]
    splits: list[torch.Tensor]
    """[R] int64 rows to each peer (the op's in_splits)."""
    out_so: list[torch.Tensor]
    """[2, R] int64 (the op's out_splits_offsets)."""
    group: str
    row_bytes: int


@dataclass
class Buffers:
    slots: int
    max_rows: int
    dispatch: Phase
    combine: Phase

    def fits(self, slots: int, max_rows: int, row_bytes: int, result_row_bytes: int) -> bool:
        return (slots <= self.slots and max_rows <= self.max_rows and row_bytes == self.dispatch.row_bytes
                and result_row_bytes == self.combine.row_bytes)


_BUFFERS: dict[tuple[str, str], Buffers] = {}


def buffers(dispatch_group, combine_group, device: torch.device, slots: int, max_rows: int, row_bytes: int,
            result_row_bytes: int) -> Buffers:
    """This job's symmetric buffers (collective: every rank calls it with the same arguments, in one order);
    reused while a later job of the process fits in them."""
    from torch.distributed import _symmetric_memory as symm

    names = (dispatch_group.group_name, combine_group.group_name)
    have = _BUFFERS.get(names)
    if have is not None and have.fits(slots, max_rows, row_bytes, result_row_bytes):
        return have
    ranks = dist.get_world_size(dispatch_group)
    per_slot = max_rows * row_bytes * (1 + ranks) + max_rows * result_row_bytes * (ranks + 1)
    os.environ.setdefault("NVSHMEM_SYMMETRIC_SIZE", str(max(HEAP_MIN_BYTES, 2 * slots * per_slot)))
    bpp = blocks_per_peer(ranks, row_bytes, result_row_bytes)
    os.environ.setdefault("TORCH_SYMMMEM_NBLOCKS", str(ranks * bpp))
    set_blocks = int(os.environ["TORCH_SYMMMEM_NBLOCKS"])
    if (set_blocks // ranks) and (row_bytes % (set_blocks // ranks) or result_row_bytes % (set_blocks // ranks)):
        raise RunFailure(f"TORCH_SYMMMEM_NBLOCKS={set_blocks}: {set_blocks // ranks} blocks per peer do not divide "
                         f"the {row_bytes}- and {result_row_bytes}-byte rows (use {ranks * bpp})")
    try:
        if symm.get_backend(device) != "NVSHMEM":
            symm.set_backend("NVSHMEM")

        def phase(group, in_rows: int, out_rows: int, width: int) -> Phase:
            def empty(shape, dtype=torch.uint8):
                t = symm.empty(shape, dtype=dtype, device=device)
                symm.rendezvous(t, group=group.group_name)
                return t

            return Phase([empty((in_rows, width)) for _ in range(slots)],
                         [empty((out_rows, width)) for _ in range(slots)],
                         [empty(ranks, torch.int64) for _ in range(slots)],
                         [empty((2, ranks), torch.int64) for _ in range(slots)], group.group_name, width)

        made = Buffers(slots, max_rows, phase(dispatch_group, max_rows, ranks * max_rows, row_bytes),
                       phase(combine_group, ranks * max_rows, max_rows, result_row_bytes))
    except RuntimeError as err:
        raise RunFailure(f"real.transport=nvshmem: NVSHMEM symmetric buffers of {slots} x {per_slot / 2**20:.0f} MiB "
                         f"could not be made ({err}); NVSHMEM_SYMMETRIC_SIZE="
                         f"{os.environ.get('NVSHMEM_SYMMETRIC_SIZE')}") from err
    _BUFFERS[names] = made
    return made
