"""The budget search (compress/budget.py) against brute force over every combination of options."""

import itertools

import numpy as np
import pytest

from sbc_onnx.compress.budget import choose_options


def brute_force(cost, size, budget):
    best = (np.inf, None)
    for picks in itertools.product(*(range(len(c)) for c in cost)):
        s = sum(size[l][o] for l, o in enumerate(picks))
        c = sum(cost[l][o] for l, o in enumerate(picks))
        if s <= budget and c < best[0]:
            best = (c, picks)
    return best


@pytest.mark.parametrize("seed", range(40))
def test_knapsack_is_optimal_on_small_cases(seed):
    rng = np.random.default_rng(seed)
    n_layers = int(rng.integers(1, 5))
    cost = [rng.random(int(rng.integers(1, 6))) for _ in range(n_layers)]
    size = [rng.integers(0, 30, len(c)) for c in cost]
    budget = int(rng.integers(0, 80))
    want_cost, want = brute_force(cost, size, budget)
    if want is None:
        with pytest.raises(ValueError, match="fits the budget"):
            choose_options(cost, size, budget)
        return
    got = choose_options(cost, size, budget)
    assert got.unit == 1
    assert got.cost == pytest.approx(want_cost, abs=1e-12)
    assert got.size <= budget
    assert got.size == sum(size[l][o] for l, o in enumerate(got.picks))


def test_coarse_units_still_fit_the_true_budget():
    rng = np.random.default_rng(7)
    cost = [np.sort(rng.random(8))[::-1] for _ in range(6)]
    size = [np.sort(rng.integers(1_000, 100_000, 8)) for _ in range(6)]
    budget = 250_000
    got = choose_options(cost, size, budget, max_cells=1000)
    assert got.unit > 1 and got.size <= budget
    exact_cost, _ = brute_force(cost, size, budget)
    assert got.cost >= exact_cost - 1e-12
    # the rounding loses at most one unit per layer of capacity
    relaxed_cost, _ = brute_force(cost, size, budget - got.unit * len(cost))
    assert got.cost <= relaxed_cost + 1e-12


def test_unavailable_options_are_never_picked():
    cost = [[np.inf, 1.0], [0.0, np.nan, 5.0]]
    size = [[0, 10], [0, 0, 1]]
    got = choose_options(cost, size, 10)
    assert got.picks == (1, 0)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError):
        choose_options([[1.0, 2.0]], [[1]], 5)
    with pytest.raises(ValueError):
        choose_options([[1.0]], [[-1]], 5)
