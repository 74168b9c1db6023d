"""The MoE gate in numpy: scores -> (optional group limit) -> top-k experts and their routing weights.

Shape letters: T tokens, E experts, K = top_k, H expert groups, J = E / H experts per group.

Semantics of DeepSeek-V3's Gate (inference/model.py), which moe/model's torch gate follows as well:
    scores = softmax(logits) or sigmoid(logits);  original = scores
    scores = scores + bias                        (selection-only bias, if any)
    if groups > 1:  group score = max of the group's scores (no bias) or the sum of its top-2 (bias);
                    keep the topk_groups best groups, mask the other experts out
    ids = top-k of scores (descending);  weights = original[ids]
    sigmoid: weights /= sum(weights);    weights *= route_scale
Ties break towards the lower expert id.
"""

from __future__ import annotations

import numpy as np


def _softmax(x_TE: np.ndarray) -> np.ndarray:
    z = np.exp(x_TE - x_TE.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _sigmoid(x_TE: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x_TE))


def _top(x_TE: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest entries per row, largest first, ties to the lower index."""
    # stable sort of the negated scores keeps the lower index first among equals
    return np.argsort(-x_TE, axis=1, kind="stable")[:, :k]


def gate(logits_TE: np.ndarray, *, score: str, top_k: int, groups: int = 1, topk_groups: int = 1,
         bias_E: np.ndarray | None = None, route_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(ids_TK, weights_TK) of the gate on router logits (module docstring)."""
    logits_TE = np.asarray(logits_TE, dtype=np.float64)
    t, e = logits_TE.shape
    if score == "softmax":
        original_TE = _softmax(logits_TE)
    elif score == "sigmoid":
        original_TE = _sigmoid(logits_TE)
    else:
        raise ValueError(f"unknown score function {score!r}")
    scores_TE = original_TE if bias_E is None else original_TE + bias_E[None, :]
    if groups > 1:
        scores_THJ = scores_TE.reshape(t, groups, e // groups)
        if bias_E is None:
            group_TH = scores_THJ.max(axis=2)
        else:
            group_TH = -np.sort(-scores_THJ, axis=2)[:, :, :2].sum(axis=2)
        keep_TH = np.zeros((t, groups), dtype=bool)
        np.put_along_axis(keep_TH, _top(group_TH, topk_groups), True, axis=1)
        scores_TE = np.where(np.repeat(keep_TH, e // groups, axis=1), scores_TE, -np.inf)
    ids_TK = _top(scores_TE, top_k)
    weights_TK = np.take_along_axis(original_TE, ids_TK, axis=1)
    if score == "sigmoid":
        weights_TK = weights_TK / weights_TK.sum(axis=1, keepdims=True)
    return ids_TK, weights_TK * route_scale
