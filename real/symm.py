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
  dispatch  [max_rows, row_bytes]     [R x max_rows, row_bytes]       (every source may send max_rows)
  combine   [R x max_rows, res_bytes] [max_rows, res_bytes]

The op has no exit barrier: a rank may overwrite its input only once every peer has read it. A slot's
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
    """Per slot [rows, row_bytes] (a view of the slot's flat symmetric buffer)."""
    inp_B: list[torch.Tensor]
    """The same memory flat (uint8 [rows x row_bytes]), where the transport copies a group's buffer."""
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

    def phase(self, slots: int, in_rows: int, out_rows: int, width: int, group: str) -> Phase:
        return Phase([t[:in_rows * width].view(in_rows, width) for t in self.inp[:slots]],
                     [t[:in_rows * width] for t in self.inp[:slots]],
                     [t[:out_rows * width].view(out_rows, width) for t in self.out[:slots]],
                     self.splits[:slots], self.out_so[:slots], group, width)


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
    per_slot = max_rows * row_bytes * (1 + ranks) + max_rows * result_row_bytes * (ranks + 1)
    os.environ.setdefault("NVSHMEM_SYMMETRIC_SIZE", str(max(HEAP_MIN_BYTES, 2 * slots * per_slot)))
    bpp = blocks_per_peer(ranks, row_bytes, result_row_bytes)
    os.environ.setdefault("TORCH_SYMMMEM_NBLOCKS", str(ranks * bpp))
    set_bpp = int(os.environ["TORCH_SYMMMEM_NBLOCKS"]) // ranks
    if set_bpp and (row_bytes % set_bpp or result_row_bytes % set_bpp):
        raise RunFailure(f"TORCH_SYMMMEM_NBLOCKS={os.environ['TORCH_SYMMMEM_NBLOCKS']}: {set_bpp} blocks per peer do "
                         f"not divide the {row_bytes}- and {result_row_bytes}-byte rows (it is read once a process)")
    try:
        if symm.get_backend(device) != "NVSHMEM":
            symm.set_backend("NVSHMEM")
        d = _flat(dispatch_group, device, slots, max_rows * row_bytes, ranks * max_rows * row_bytes)
        c = _flat(combine_group, device, slots, ranks * max_rows * result_row_bytes, max_rows * result_row_bytes)
    except RuntimeError as err:
        raise RunFailure(f"real.transport=nvshmem: NVSHMEM symmetric buffers of {slots} x {per_slot / 2**20:.0f} MiB "
                         f"could not be made ({err}); NVSHMEM_SYMMETRIC_SIZE="
                         f"{os.environ.get('NVSHMEM_SYMMETRIC_SIZE')}") from err
    return Buffers(slots, d.phase(slots, max_rows, ranks * max_rows, row_bytes, dispatch_group.group_name),
                   c.phase(slots, ranks * max_rows, max_rows, result_row_bytes, combine_group.group_name))
