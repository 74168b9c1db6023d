"""Deterministic random weights, reproducible per piece and identical on every device.

Every weight tensor has a key derived from (seed, layer, piece, expert, tensor name) by BLAKE2b, so a rank
builds exactly the pieces it holds (attention, gate and shared experts everywhere, only its own routed
experts) and expert e's weights are the same whichever rank, process or device builds them.

Element i of a tensor is a counter-based hash of i and the key (no sequential RNG state): two rounds of
the 32-bit "lowbias32" integer hash (C. Wellons, "Prospecting for Hash Functions", 2018), evaluated with
int64 torch ops whose intermediate products stay below 2^63, so CPU and CUDA give bit-identical integers;
the top 24 bits become a float32 uniform in [-1, 1) exactly. Weights are uniform with standard deviation
1/sqrt(fan_in) (bound sqrt(3 / fan_in)), which keeps activations at unit scale through a layer.
Generation runs on the target device in chunks of CHUNK elements, with no Python loop over elements.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch

CHUNK = 1 << 24
"""Elements hashed per step: bounds the int64 temporaries to a few hundred MB on any device."""
_MASK32 = 0xFFFFFFFF
_HASH_MULTIPLIERS = (0x7FEB352D, 0x846CA68B)  # lowbias32 constants


def piece_key(seed: int, layer: int, piece: str, expert: int = -1, tensor: str = "") -> int:
    """64-bit key of one weight tensor: BLAKE2b of its identity (stable across processes and Python
    versions, unlike hash())."""
    text = f"moetb/{seed}/{layer}/{piece}/{expert}/{tensor}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def _mul32_(x: torch.Tensor, c: int) -> torch.Tensor:
    """x <- (x * c) mod 2^32, in place, for 0 <= x < 2^32. A multiplier >= 2^31 is split into 16-bit
    halves so that no int64 product overflows."""
    if c < 1 << 31:
        return x.mul_(c).bitwise_and_(_MASK32)
    high = (x * (c >> 16)).bitwise_and_(0xFFFF).bitwise_left_shift_(16)
    return x.mul_(c & 0xFFFF).add_(high).bitwise_and_(_MASK32)


def _lowbias32(x: torch.Tensor) -> torch.Tensor:
    """The lowbias32 hash of every element (0 <= x < 2^32, int64), in place."""
    x.bitwise_xor_(x >> 16)
    _mul32_(x, _HASH_MULTIPLIERS[0])
    x.bitwise_xor_(x >> 15)
    _mul32_(x, _HASH_MULTIPLIERS[1])
    return x.bitwise_xor_(x >> 16)


def uniform(shape: Sequence[int], keys: Sequence[int], device: torch.device | str = "cpu",
            bound: float = 1.0) -> torch.Tensor:
    """float32 [len(keys), *shape], row e uniform in [-bound, bound) from key keys[e]. Deterministic and
    device-independent. On the "meta" device returns an empty tensor of the right shape (no data)."""
    device = torch.device(device)
    numel = math.prod(shape)
    if numel >= 1 << 32:
        raise ValueError(f"uniform: {numel} elements exceed the 32-bit counter")
    out = torch.empty(len(keys), numel, dtype=torch.float32, device=device)
    if device.type == "meta" or out.numel() == 0:
        return out.view(len(keys), *shape)
    key_lo = torch.tensor([k & _MASK32 for k in keys], dtype=torch.int64, device=device)
    key_hi = torch.tensor([k >> 32 for k in keys], dtype=torch.int64, device=device)
    flat = out.view(-1)
    for start in range(0, flat.numel(), CHUNK):
        stop = min(start + CHUNK, flat.numel())
        h = torch.arange(start, stop, dtype=torch.int64, device=device)
        if len(keys) == 1:
            _lowbias32(h.bitwise_xor_(keys[0] & _MASK32))
            _lowbias32(h.bitwise_xor_(keys[0] >> 32))
        else:
            row = h // numel
            _lowbias32(h.sub_(row * numel).bitwise_xor_(key_lo[row]))
            _lowbias32(h.bitwise_xor_(key_hi[row]))
        # top 24 bits -> [0, 2^24) exactly in float32; map to [-1, 1) with exact operations
        u = h.bitwise_right_shift_(8).to(torch.float32).mul_(2.0 / (1 << 24)).sub_(1.0)
        flat[start:stop] = u.mul_(bound)
    return out.view(len(keys), *shape)


def weight(out_features: int, in_features: int, keys: Sequence[int],
           device: torch.device | str = "cpu") -> torch.Tensor:
    """float32 [len(keys), out, in] with std 1/sqrt(in_features) (uniform, bound sqrt(3 / in))."""
    return uniform((out_features, in_features), keys, device, math.sqrt(3.0 / in_features))
