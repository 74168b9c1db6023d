"""Load balancing over steps: the auxiliary-loss-free bias lowers expert-load imbalance; capacity drops."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import small_spec

from moe.routing import balanced_steps, load_imbalance, update_bias
from moe.spec import load_scenario


def test_update_bias_moves_by_gamma_towards_the_mean():
    out = update_bias(np.zeros(4), np.array([10, 2, 5, 3]), 0.5)
    assert out.tolist() == [-0.5, 0.5, 0.0, 0.5]  # mean 5: the expert at the mean stays
    assert update_bias(np.zeros(3), np.array([1, 2, 3]), 1.0).tolist() == [1.0, 0.0, -1.0]


@pytest.mark.parametrize("distribution,gamma", [("zipf", 0.1), ("gate", 0.02)])
def test_bias_lowers_imbalance_on_a_skewed_workload(distribution, gamma):
    spec = small_spec(model={"experts": 16, "groups": 1, "topk_groups": 1},
                      workload={"tokens_per_gpu": 128, "steps": 30,
                                "routing": {"distribution": distribution, "skew": 1.2},
                                "load_balance": {"method": "bias", "gamma": gamma}})
    steps = list(balanced_steps(load_scenario(spec), layer=0))
    imb = [load_imbalance(st.expert_load_E) for st in steps]
    assert imb[0] > 1.8
    assert np.mean(imb[-5:]) < 0.6 * imb[0]
    assert np.abs(steps[-1].bias_E).max() > 0

    # the same workload without the bias stays as skewed
    spec["workload"]["load_balance"] = {"method": "none"}
    flat = [load_imbalance(st.expert_load_E) for st in balanced_steps(load_scenario(spec), layer=0)]
    assert np.mean(flat[-5:]) > 0.9 * flat[0]
