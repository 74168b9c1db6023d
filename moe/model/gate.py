"""The router: scores, group-limited top-k with a selection-only bias, and routing weights.

Shape letters: T tokens, D hidden, E routed experts, G expert groups, K experts per token (top_k).

Following DeepSeek-V3 (technical report 2.1.2 and inference/model.py `Gate`):
  scores_TE   = softmax or sigmoid of the logits x W^T (float32)
  selection   = scores + bias, the bias used for choosing experts only (auxiliary-loss-free balancing:
                the load balancer in moe.routing moves it; it never changes a weight)
  groups      with G > 1, each group is rated (sigmoid: sum of its two best selection scores, as V3;
                softmax: its best, as V2), the best `topk_groups` groups are kept and the top-K experts are
                chosen among them
  weights_TK  = the *scores* (not the biased selection) of the chosen experts, divided by their sum for
                sigmoid scores, times route_scale
Given ids (synthetic or trace routing from moe.routing) replace the selection only: their weights still come
from this gate's scores by the same formula, so a forward pass with any routing is well defined.
"""

from __future__ import annotations

import numpy as np
import torch

from moe.model import init
from moe.spec.schema import Model


class Gate(torch.nn.Module):
    def __init__(self, model: Model, seed: int, layer: int, device: torch.device | str):
        super().__init__()
        self.experts, self.top_k, self.score = model.experts, model.top_k, model.score
        self.groups, self.topk_groups, self.route_scale = model.groups, model.topk_groups, model.route_scale
        w = init.weight(model.experts, model.hidden, [init.piece_key(seed, layer, "gate", -1, "weight")], device)
        self.register_buffer("weight", w[0].to(torch.bfloat16))
        self.register_buffer("bias", torch.zeros(model.experts, dtype=torch.float32, device=device))

    def set_bias(self, bias_E) -> None:
        """Replace the selection-only bias (the load balancer's state; numpy or torch, E values)."""
        b = torch.as_tensor(np.asarray(bias_E, dtype=np.float32) if not torch.is_tensor(bias_E) else bias_E)
        if b.shape != (self.experts,):
            raise ValueError(f"gate bias must have shape ({self.experts},), got {tuple(b.shape)}")
        self.bias.copy_(b.to(self.bias.device, torch.float32))

    def scores(self, x_TD: torch.Tensor) -> torch.Tensor:
        logits_TE = x_TD.float() @ self.weight.float().t()
        return logits_TE.softmax(dim=-1) if self.score == "softmax" else logits_TE.sigmoid()

    def select(self, scores_TE: torch.Tensor) -> torch.Tensor:
        """Top-K expert ids [T, K] (int64) by biased score, limited to the best `topk_groups` groups."""
        sel_TE = scores_TE + self.bias
        if self.groups > 1:
            t = sel_TE.shape[0]
            sel_TGe = sel_TE.view(t, self.groups, -1)
            if self.score == "sigmoid":
                rating_TG = sel_TGe.topk(min(2, sel_TGe.shape[-1]), dim=-1).values.sum(-1)
            else:
                rating_TG = sel_TGe.amax(dim=-1)
            keep = rating_TG.topk(self.topk_groups, dim=-1).indices
            mask_TG = torch.ones_like(rating_TG, dtype=torch.bool).scatter_(1, keep, False)
            sel_TE = sel_TGe.masked_fill(mask_TG[..., None], float("-inf")).view(t, -1)
        return sel_TE.topk(self.top_k, dim=-1).indices

    def weights(self, scores_TE: torch.Tensor, ids_TK: torch.Tensor) -> torch.Tensor:
        """Routing weights [T, K] float32 of the given experts, from the (unbiased) scores."""
        w_TK = scores_TE.gather(1, ids_TK)
        if self.score == "sigmoid":
            w_TK = w_TK / w_TK.sum(dim=-1, keepdim=True)
        return w_TK * self.route_scale

    def forward(self, x_TD: torch.Tensor, ids_TK=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids_TK int64, weights_TK float32). `ids_TK` (numpy or torch, [T, K]) overrides the selection."""
        scores_TE = self.scores(x_TD)
        if ids_TK is None:
            ids_TK = self.select(scores_TE)
        else:
            ids_TK = torch.as_tensor(np.asarray(ids_TK) if not torch.is_tensor(ids_TK) else ids_TK)
            ids_TK = ids_TK.to(device=x_TD.device, dtype=torch.int64)
            if ids_TK.dim() != 2 or ids_TK.shape[0] != x_TD.shape[0]:
                raise ValueError(f"routing ids must be [T={x_TD.shape[0]}, K], got {tuple(ids_TK.shape)}")
            if ids_TK.numel() and (int(ids_TK.min()) < 0 or int(ids_TK.max()) >= self.experts):
                raise ValueError(f"routing ids must lie in [0, {self.experts}), got "
                                 f"[{int(ids_TK.min())}, {int(ids_TK.max())}]")
        return ids_TK, self.weights(scores_TE, ids_TK)
