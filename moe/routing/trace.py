"""Routing traces: expert ids per token per layer, read from NPZ or CSV and replayed.

Shape letters: L trace layers, M trace tokens, K = top_k, N tokens to replay.

Formats:
- NPZ: an array `ids` of shape (L, M, K), integer expert ids.
- CSV: a header `layer,token,expert_0,...,expert_{K-1}` and one row per (layer, token); every layer has
  the same tokens 0..M-1.
Replay: token t of GPU g at step s of MoE layer l is trace token (s*G*T + g*T + t) mod M of trace layer
l mod L, so a trace shorter than a step repeats and a trace with fewer layers cycles its layers.

`python -m moe.routing.make_trace [OUT.npz|OUT.csv]` regenerates the shipped example (`traces/example_tiny.npz`): the
tiny model's group-limited sigmoid gate on zipf-skewed logits with co-activation (`example_trace`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from moe.errors import SpecError

EXAMPLE_TRACE = Path(__file__).parent / "traces" / "example_tiny.npz"
KEY = "workload.routing.trace"


def _read(path: Path) -> np.ndarray:
    if not path.exists():
        raise SpecError(KEY, str(path), "trace file not found")
    if path.suffix == ".npz":
        try:
            with np.load(path) as data:
                if "ids" not in data:
                    raise SpecError(KEY, str(path), f"NPZ has no array 'ids' (has {sorted(data.files)})")
                return np.asarray(data["ids"])
        except (OSError, ValueError) as err:
            raise SpecError(KEY, str(path), f"unreadable NPZ ({err})") from None
    if path.suffix == ".csv":
        try:
            table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
        except ValueError as err:
            raise SpecError(KEY, str(path), f"malformed CSV ({err})") from None
        if table.shape[1] < 3:
            raise SpecError(KEY, str(path), "CSV needs columns layer,token,expert_0,...")
        layers, tokens = table[:, 0], table[:, 1]
        n_layers, n_tokens = int(layers.max()) + 1, int(tokens.max()) + 1
        if len(table) != n_layers * n_tokens or layers.min() < 0 or tokens.min() < 0:
            raise SpecError(KEY, str(path), f"CSV must hold every (layer, token) once: {len(table)} rows for "
                                            f"{n_layers} layers x {n_tokens} tokens")
        ids = np.full((n_layers, n_tokens, table.shape[1] - 2), -1, dtype=np.int64)
        ids[layers, tokens] = table[:, 2:]
        return ids
    raise SpecError(KEY, str(path), "trace must be .npz or .csv")


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime: float, experts: int, top_k: int) -> np.ndarray:
    ids = _read(Path(path))
    if ids.ndim != 3 or ids.shape[2] != top_k or ids.shape[1] == 0 or ids.shape[0] == 0:
        raise SpecError(KEY, path, f"trace ids have shape {ids.shape}; expected (layers, tokens, top_k={top_k})")
    if not np.issubdtype(ids.dtype, np.integer):
        raise SpecError(KEY, path, f"trace ids must be integers, not {ids.dtype}")
    if ids.min() < 0 or ids.max() >= experts:
        bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
        raise SpecError(KEY, path, f"expert id {bad} out of range [0, {experts})")
    s = np.sort(ids, axis=2)
    if (s[:, :, 1:] == s[:, :, :-1]).any():
        raise SpecError(KEY, path, "a token chooses the same expert twice")
    out = ids.astype(np.int16 if experts < 2**15 else np.int32)
    out.setflags(write=False)
    return out


def load_trace(path: str | Path, experts: int, top_k: int) -> np.ndarray:
    """(L, M, K) validated expert ids of a trace file (cached while the file is unchanged)."""
    p = Path(path)
    if not p.exists():
        raise SpecError(KEY, str(path), "trace file not found")
    return _load_cached(str(p.resolve()), p.stat().st_mtime, experts, top_k)


def replay(trace_LMK: np.ndarray, layer: int, gid_N: np.ndarray) -> np.ndarray:
    """(K, N) expert ids of tokens with global ids gid_N (step offset included) in MoE layer `layer`."""
    m = trace_LMK.shape[1]
    return trace_LMK[layer % trace_LMK.shape[0]][gid_N % m].T.copy()


def write_trace(path: str | Path, ids_LMK: np.ndarray) -> None:
    """Write a trace as NPZ or CSV (by suffix)."""
    path = Path(path)
    ids_LMK = np.asarray(ids_LMK)
    if path.suffix == ".npz":
        np.savez_compressed(path, ids=ids_LMK)
        return
    l, m, k = ids_LMK.shape
    layer, token = np.meshgrid(np.arange(l), np.arange(m), indexing="ij")
    rows = np.column_stack([layer.ravel(), token.ravel(), ids_LMK.reshape(l * m, k)])
    header = ",".join(["layer", "token"] + [f"expert_{i}" for i in range(k)])
    np.savetxt(path, rows, fmt="%d", delimiter=",", header=header, comments="")


def example_trace(layers: int = 2, tokens: int = 1024, seed: int = 0) -> np.ndarray:
    """(layers, tokens, 4) ids from the `tiny` model's gate (16 experts in 4 groups, 2 groups per token,
    top-4, sigmoid) on logits with a zipf(1.2) popularity offset per expert and, for a quarter of the
    tokens, a shared boost of one co-activated group of four experts."""
    from moe.routing.gate import gate

    rng = np.random.default_rng(seed)
    experts, k = 16, 4
    out = np.empty((layers, tokens, k), dtype=np.int16)
    for layer in range(layers):
        offset_E = -1.2 * np.log(1 + rng.permutation(experts))
        logits_TE = offset_E + rng.standard_normal((tokens, experts))
        boosted = rng.random(tokens) < 0.25
        cluster = rng.permutation(experts).reshape(4, 4)[rng.integers(0, 4, tokens)]
        logits_TE[np.flatnonzero(boosted)[:, None], cluster[boosted]] += 3.0
        out[layer] = gate(logits_TE, score="sigmoid", top_k=k, groups=4, topk_groups=2,
                          bias_E=np.zeros(experts))[0]
    return out
