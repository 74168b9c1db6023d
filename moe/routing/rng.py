"""Counter-based random numbers: every draw is a hash of (key, counter), so a token's draws depend only on
(seed, layer, step, stream, GPU, token, choice, attempt) and never on which other tokens are drawn with it.

Shape letters: N tokens.

`hash32` is the `lowbias32` integer finaliser (C. Wellons, "Prospecting for hash functions", 2018): two
xor-shift-multiply rounds with full 32-bit avalanche. A token's state is hash32(global_token_id ^ key);
its c-th draw is hash32(state + c * 0x9E3779B9) (a Weyl step between draws). Global token ids are taken
mod 2^32, so streams repeat only after 2^32 tokens of one (layer, step).
"""

from __future__ import annotations

import numpy as np

_M1 = np.uint32(0x7FEB352D)
_M2 = np.uint32(0x846CA68B)
_WEYL = 0x9E3779B9
_MASK64 = (1 << 64) - 1


def hash32(x: np.ndarray) -> np.ndarray:
    """lowbias32 of a uint32 array (a new array)."""
    x = x ^ (x >> np.uint32(16))
    x *= _M1
    x ^= x >> np.uint32(15)
    x *= _M2
    x ^= x >> np.uint32(16)
    return x


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def stream_key(*parts: int) -> int:
    """A 32-bit key from integers (seed, layer, step, stream id, ...), order-sensitive."""
    z = 0x6A09E667
    for p in parts:
        z = _splitmix64(z ^ (int(p) & _MASK64))
    return z & 0xFFFFFFFF


def token_state(gid_N: np.ndarray, key: int) -> np.ndarray:
    """Per-token hash state from global token ids."""
    return hash32(gid_N.astype(np.uint32) ^ np.uint32(key))


def draw(state_N: np.ndarray, counter: int) -> np.ndarray:
    """The counter-th uniform uint32 draw of each token."""
    return hash32(state_N + np.uint32((counter * _WEYL) & 0xFFFFFFFF))


def generator(*parts: int) -> np.random.Generator:
    """A numpy Generator for per-(seed, layer, ...) tables such as rankings and drift walks."""
    return np.random.default_rng([int(p) & _MASK64 for p in parts])
