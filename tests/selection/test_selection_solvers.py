"""Exact solvers against the exhaustive oracles, plus hand-checked cases."""

import itertools

import numpy as np
import pytest

from tag_tf import selection
from tag_tf.selection import exhaustive, large, milp, problem, scoring, subset_dp

CASES = [(n, seed) for n in range(2, 9) for seed in range(3)]


def _random(n, seed):
    return np.random.default_rng(seed).normal(size=(n, n))


def _networks(sel):
    return [net.tasks for net in sel.networks]


@pytest.mark.parametrize("n,seed", CASES)
def test_dp_and_milp_match_partition_oracle(n, seed):
    matrix = _random(n, seed)
    for budget, minimize, singletons in itertools.product(
            range(1, n + 1), [False, True], [None, "diagonal"]):
        oracle = exhaustive.solve_exhaustive(matrix, budget, minimize=minimize,
                                             singletons=singletons, mode="partitions")
        for solver in (subset_dp.solve_subset_dp, milp.solve_milp):
            sel = solver(matrix, budget, minimize=minimize, singletons=singletons)
            assert sel.objective == pytest.approx(oracle.objective, rel=1e-9, abs=1e-12)
            assert sel.optimal
            # Continuous random matrices have a unique optimum: same networks too.
            assert _networks(sel) == _networks(oracle), (solver, budget, minimize, singletons)
            assert len(sel.networks) <= budget


@pytest.mark.parametrize("n,max_budget", [(3, 3), (4, 4), (5, 5), (6, 3), (7, 2)])
@pytest.mark.parametrize("seed", [0, 1])
def test_network_oracle_matches_partition_oracle(n, max_budget, seed):
    matrix = _random(n, seed + 10)
    for budget, minimize, singletons in itertools.product(
            range(1, max_budget + 1), [False, True], [None, "diagonal"]):
        a = exhaustive.solve_exhaustive(matrix, budget, minimize=minimize,
                                        singletons=singletons, mode="networks")
        b = exhaustive.solve_exhaustive(matrix, budget, minimize=minimize,
                                        singletons=singletons, mode="partitions")
        assert a.objective == pytest.approx(b.objective, rel=1e-12)
        assert _networks(a) == _networks(b)


def test_objective_is_monotone_in_budget():
    matrix = _random(8, 3)
    values = [s.objective for s in selection.select_networks(matrix, range(1, 9))]
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))


def test_group_scores_by_hand():
    # A[source, target]; group {0, 1, 2} onto 0 = mean(A[1, 0], A[2, 0]) = (3 + 5) / 2.
    a = np.array([[0., 1., 2.], [3., 0., 4.], [5., 6., 0.]])
    table = scoring.group_scores(a)
    full = table.scores[table.masks.tolist().index(0b111)]
    np.testing.assert_allclose(full, [4.0, 3.5, 3.0])
    pair = table.scores[table.masks.tolist().index(0b011)]
    np.testing.assert_allclose(pair[:2], [3.0, 1.0])
    assert np.isnan(pair[2])
    single = table.scores[table.masks.tolist().index(0b001)]
    assert np.isnan(single).all()


def test_hand_checked_selection_with_helper():
    # Task 2 is helped a lot by 0 (A[0, 2] = 10) but hurts 0 and 1; with two networks the
    # best is {0, 1} serving 0 and 1 and {0, 2} serving 2 with 0 as a helper.
    a = np.array([[0., 1., 10.], [1., 0., 0.], [-5., -5., 0.]])
    sel = subset_dp.solve_subset_dp(a, 2, tasks=["a", "b", "c"])
    assert _networks(sel) == [("a", "b"), ("a", "c")]
    assert sel.networks[0].serves == ("a", "b")
    assert sel.networks[1].serves == ("c",) and sel.networks[1].helpers == ("a",)
    assert sel.objective == pytest.approx((1 + 1 + 10) / 3)
    assert sel.served_by == (0, 0, 1)
    # With one network all three train together: onto a = (1 - 5)/2, b = (1 - 5)/2,
    # c = (10 + 0)/2.
    one = subset_dp.solve_subset_dp(a, 1, tasks=["a", "b", "c"])
    assert one.objective == pytest.approx((-2 - 2 + 5) / 3)


def test_minimise_errors_with_single_task_networks():
    # Errors [partner, task]; singles on the diagonal. Task 2 is best alone (1.0).
    err = np.array([[5., 2., 9.], [2., 5., 9.], [9., 9., 1.]])
    sel = subset_dp.solve_subset_dp(err, 2, minimize=True, singletons="diagonal")
    assert _networks(sel) == [("task_0", "task_1"), ("task_2",)]
    assert sel.objective == pytest.approx((2 + 2 + 1) / 3)
    assert sel.minimize and sel.bound == pytest.approx(sel.objective)


def test_tie_breaking_is_documented_and_deterministic():
    # All-zero matrix: every selection ties; fewest networks wins, and the full group is
    # the canonical single network.
    zeros = np.zeros((4, 4))
    for solver in (subset_dp.solve_subset_dp,
                   lambda m, b: exhaustive.solve_exhaustive(m, b, mode="networks"),
                   lambda m, b: exhaustive.solve_exhaustive(m, b, mode="partitions")):
        sel = solver(zeros, 3)
        assert len(sel.networks) == 1
    # Serving ties go to the smaller network.
    masks, served_by, _ = problem.canonicalize(problem.make_problem(zeros), [0b1111, 0b0011])
    assert masks == (0b0011, 0b1111) and served_by.tolist() == [0, 0, 1, 1]


def test_redundant_networks_are_dropped():
    prob = problem.make_problem(_random(5, 0))
    sel = problem.build_selection(prob, [0b11111, 0b00011, 0b00011], budget=3,
                                  method="test", seconds=0.0, bound_total=None)
    assert all(net.serves for net in sel.networks)
    assert len(sel.networks) == len({net.tasks for net in sel.networks})


@pytest.mark.parametrize("seed", [0, 1])
def test_large_solver_certifies_small_problems(seed):
    matrix = _random(9, seed + 20)
    for budget in (2, 4):
        exact = subset_dp.solve_subset_dp(matrix, budget)
        sel = large.solve_large(matrix, budget, time_limit=20.0, seed=seed)
        assert sel.objective <= exact.objective + 1e-9
        # The bound is valid (the LP relaxation may leave a small integrality gap).
        assert sel.bound >= exact.objective - 1e-7
        assert sel.objective == pytest.approx(exact.objective, rel=1e-6)
        assert 0.0 <= sel.gap < 0.05
        assert sel.optimal == (sel.gap <= problem.OPTIMALITY_TOLERANCE)


def test_select_networks_methods_agree():
    matrix = _random(6, 5)
    results = {m: selection.select_networks(matrix, [1, 2, 3], method=m)
               for m in ("dp", "milp", "exhaustive")}
    for a, b, c in zip(*results.values()):
        assert a.objective == pytest.approx(b.objective) == pytest.approx(c.objective)


def test_nine_tasks_all_budgets_use_the_exact_dp():
    """At 9 tasks every budget goes to the subset DP (milliseconds; timed in
    benchmarks/selection.py, never asserted here) and is proven optimal."""
    matrix = _random(9, 0)
    sels = selection.select_networks(matrix, range(1, 9))
    assert {s.method for s in sels} == {"subset-dp"}
    assert all(s.optimal for s in sels)
