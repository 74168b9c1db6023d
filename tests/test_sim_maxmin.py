"""The flow-level solver: max-min fair rates and flows over time, by hand and against brute force."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.maxmin import flow_of_entries, maxmin_rates, simulate_flows


def csr(routes):
    """CSR (indptr, links) of a list of link lists."""
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in routes])])
    return indptr, np.array([link for r in routes for link in r], dtype=np.int64)


def test_one_link_two_flows_each_get_half():
    indptr, links = csr([[0], [0]])
    assert maxmin_rates(np.array([10.0]), indptr, links).tolist() == [5.0, 5.0]
    sol = simulate_flows(np.array([10.0]), indptr, links, np.array([20.0, 20.0]))
    assert sol.finish_F.tolist() == [4.0, 4.0]  # 20 bytes each at 5 B/s
    assert sol.link_bytes_L.tolist() == [40.0]


def test_three_flows_over_two_links_get_the_maxmin_shares():
    # f0 on link 0, f1 on links 0 and 1, f2 on link 1; capacities 1 and 2:
    # link 0 saturates first at 1/2 each (f0, f1); f2 then takes the rest of link 1: 2 - 1/2 = 3/2
    indptr, links = csr([[0], [0, 1], [1]])
    assert maxmin_rates(np.array([1.0, 2.0]), indptr, links).tolist() == pytest.approx([0.5, 0.5, 1.5])
    # with equal capacities everybody gets 1/2
    assert maxmin_rates(np.array([1.0, 1.0]), indptr, links).tolist() == pytest.approx([0.5, 0.5, 0.5])


def test_rates_are_recomputed_when_flows_finish_and_start():
    indptr, links = csr([[0], [0]])
    # unequal sizes: both at 1/2 until the small one is done at t=2, then the big one alone at 1
    sol = simulate_flows(np.array([1.0]), indptr, links, np.array([1.0, 2.0]), record_segments=True)
    assert sol.finish_F.tolist() == pytest.approx([2.0, 3.0])
    assert sol.t_S1.tolist() == pytest.approx([0.0, 2.0, 3.0])
    assert sol.link_bytes_SL[:, 0].tolist() == pytest.approx([2.0, 1.0])
    # a late start: alone at 1 until t=0.5, then both at 1/2
    sol = simulate_flows(np.array([1.0]), indptr, links, np.array([1.0, 1.0]), start_F=np.array([0.0, 0.5]))
    assert sol.finish_F.tolist() == pytest.approx([1.5, 2.0])


def test_weighted_maxmin_shares_in_proportion():
    indptr, links = csr([[0], [0, 1], [1]])
    rates = maxmin_rates(np.array([1.0, 2.0]), indptr, links, weight_F=np.array([1.0, 2.0, 1.0]))
    assert rates.tolist() == pytest.approx([1 / 3, 2 / 3, 4 / 3])
    # remaining-bytes weights: flows through one link finish together
    sol = simulate_flows(np.array([3.0]), *csr([[0], [0]]), np.array([1.0, 2.0]), weight_F="remaining")
    assert sol.finish_F.tolist() == pytest.approx([1.0, 1.0])


def test_a_link_crossed_twice_carries_twice_the_rate():
    indptr, links = csr([[0, 0], [0]])
    assert maxmin_rates(np.array([3.0]), indptr, links).tolist() == pytest.approx([1.0, 1.0])


def test_flows_without_links_finish_at_their_start():
    indptr, links = csr([[], [0]])
    sol = simulate_flows(np.array([2.0]), indptr, links, np.array([5.0, 4.0]), start_F=np.array([1.0, 0.0]))
    assert sol.finish_F.tolist() == pytest.approx([1.0, 2.0])


def brute_force(cap, indptr, links, w):
    """Progressive filling in its textbook form: raise every unfrozen flow, freeze at saturated links."""
    flow_x = flow_of_entries(indptr)
    rate, remaining, level = np.zeros(len(w)), cap.astype(float).copy(), 0.0
    unfrozen = np.ones(len(w), dtype=bool)
    while unfrozen.any():
        live = unfrozen[flow_x]
        load = np.bincount(links[live], weights=w[flow_x[live]], minlength=len(cap))
        used = load > 0
        step = (remaining[used] / load[used]).min()
        level += step
        remaining -= step * load
        sat = used & (remaining <= 1e-9 * cap)
        frozen = np.zeros(len(w), dtype=bool)
        frozen[flow_x[live & sat[links]]] = True
        rate[frozen] = level * w[frozen]
        unfrozen &= ~frozen
    return rate


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_incremental_filling_matches_brute_force_and_is_feasible(data):
    n_links = data.draw(st.integers(1, 6))
    n_flows = data.draw(st.integers(1, 12))
    routes = [data.draw(st.lists(st.integers(0, n_links - 1), min_size=1, max_size=4)) for _ in range(n_flows)]
    cap = np.array(data.draw(st.lists(st.floats(0.5, 5.0), min_size=n_links, max_size=n_links)))
    w = np.array(data.draw(st.lists(st.floats(0.2, 3.0), min_size=n_flows, max_size=n_flows)))
    indptr, links = csr(routes)
    rate = maxmin_rates(cap, indptr, links, weight_F=w)
    assert rate == pytest.approx(brute_force(cap, indptr, links, w), rel=1e-9)
    load = np.bincount(links, weights=rate[flow_of_entries(indptr)], minlength=n_links)
    assert np.all(load <= cap * (1 + 1e-9))
    # every flow is bottlenecked: one of its links is saturated
    full = load >= cap * (1 - 1e-9)
    assert all(full[r].any() for r in routes)


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_batched_solution_conserves_bytes_and_stays_close_to_exact(data):
    n_links = data.draw(st.integers(1, 5))
    n_flows = data.draw(st.integers(1, 20))
    routes = [data.draw(st.lists(st.integers(0, n_links - 1), min_size=1, max_size=3)) for _ in range(n_flows)]
    sizes = np.array(data.draw(st.lists(st.floats(0.1, 10.0), min_size=n_flows, max_size=n_flows)))
    cap = np.ones(n_links)
    indptr, links = csr(routes)
    exact = simulate_flows(cap, indptr, links, sizes)
    approx = simulate_flows(cap, indptr, links, sizes, batch_rtol=0.05, rate_rtol=0.01, record_segments=True)
    expect = np.bincount(links, weights=sizes[flow_of_entries(indptr)], minlength=n_links)
    assert approx.link_bytes_L == pytest.approx(expect)
    assert approx.link_bytes_SL.sum(axis=0) == pytest.approx(expect)
    # batching holds bandwidth a little longer and rate_rtol leaves links a little below capacity
    assert exact.finish_F.max() * 0.95 <= approx.finish_F.max() <= exact.finish_F.max() * 1.1
