"""Expected load: what a placement strategy knows about routing before it places experts.

Shape letters: B source GPUs (all of them), T sample tokens per GPU, K = top_k, E experts.

The expected routing is a sample of the workload itself (every GPU, `sample_tokens` tokens each, from
moe.routing.expert_ids), so it carries the per-expert popularity, the co-activation between experts
and any per-source differences of a trace. Per-expert loads are the sample's counts scaled to the full
batch (tokens_per_gpu).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from moe.routing.workload import expert_ids, expert_requests
from moe.spec.schema import Scenario

SAMPLE_TOTAL_TOKENS = 65536
"""Default sample size over all GPUs (at least 16 tokens per GPU, at most the whole batch)."""


@dataclass(frozen=True, eq=False)
class ExpectedLoad:
    ids_BTK: np.ndarray
    """Sample routing: expert ids of tokens `tokens_T` of every GPU."""
    tokens_T: np.ndarray
    tokens_per_gpu: int
    experts: int

    @property
    def scale(self) -> float:
        """Full batch tokens per sample token."""
        return self.tokens_per_gpu / len(self.tokens_T)

    @property
    def expert_requests_E(self) -> np.ndarray:
        """Expected (token, expert) requests per expert per step over all GPUs (float)."""
        return expert_requests(self.ids_BTK, self.experts) * self.scale


def default_sample_tokens(scenario: Scenario) -> int:
    t, g = scenario.workload.tokens_per_gpu, scenario.cluster.gpus
    return min(t, max(16, math.ceil(SAMPLE_TOTAL_TOKENS / g)))


def expected_load(scenario: Scenario, layer: int = 0, step: int = 0, sample_tokens: int | None = None,
                  bias_E: np.ndarray | None = None) -> ExpectedLoad:
    """The expected routing of one MoE layer: a sample of its real workload (module docstring)."""
    n = default_sample_tokens(scenario) if sample_tokens is None else min(sample_tokens,
                                                                         scenario.workload.tokens_per_gpu)
    tokens_T = np.arange(n)
    ids = expert_ids(scenario, layer, step, tokens=tokens_T, bias_E=bias_E)
    return ExpectedLoad(ids_BTK=ids, tokens_T=tokens_T, tokens_per_gpu=scenario.workload.tokens_per_gpu,
                        experts=scenario.model.experts)


def load_from_ids(ids_BTK: np.ndarray, experts: int, tokens_per_gpu: int | None = None) -> ExpectedLoad:
    """An ExpectedLoad from any routing of every GPU (a measured trace, a previous step)."""
    ids_BTK = np.asarray(ids_BTK)
    t = ids_BTK.shape[1]
    return ExpectedLoad(ids_BTK=ids_BTK, tokens_T=np.arange(t), tokens_per_gpu=tokens_per_gpu or t,
                        experts=experts)
