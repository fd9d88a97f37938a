"""Bad input gives errors that name the problem."""

import numpy as np
import pytest

from tag_tf import selection
from tag_tf.selection import baselines, problem


def test_non_square():
    with pytest.raises(ValueError, match="square"):
        selection.select_networks(np.zeros((2, 3)), 1)


def test_non_finite():
    a = np.zeros((3, 3))
    a[0, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        selection.select_networks(a, 1, tasks=["a", "b", "c"])
    a[0, 1] = np.inf
    with pytest.raises(ValueError, match=r"\('a', 'b'\)"):
        selection.select_networks(a, 1, tasks=["a", "b", "c"])


def test_nan_diagonal_is_fine_without_singletons_but_not_with():
    a = np.ones((3, 3))
    np.fill_diagonal(a, np.nan)
    assert selection.select_networks(a, 1)[0].objective == pytest.approx(1.0)
    with pytest.raises(ValueError, match="Single-task scores must be finite"):
        selection.select_networks(a, 1, singletons="diagonal")


def test_task_list_length_mismatch():
    with pytest.raises(ValueError, match="3 tasks"):
        selection.select_networks(np.zeros((2, 2)), 1, tasks=["a", "b", "c"])


def test_duplicate_names():
    with pytest.raises(ValueError, match="Duplicate task names"):
        selection.select_networks(np.zeros((2, 2)), 1, tasks=["a", "a"])


@pytest.mark.parametrize("budget", [0, -1])
def test_budget_too_small(budget):
    with pytest.raises(ValueError, match=f"Received: budget={budget}"):
        selection.select_networks(np.zeros((3, 3)), budget)


def test_budget_too_large():
    with pytest.raises(ValueError, match="cannot exceed.*Received: budget=4"):
        selection.solve_subset_dp(np.zeros((3, 3)), 4)
    with pytest.raises(ValueError, match="integer"):
        problem.check_budget(1.5, 3)


def test_singletons_validation():
    with pytest.raises(ValueError, match="Expected 3 single-task scores"):
        selection.select_networks(np.zeros((3, 3)), 1, singletons=[1.0, 2.0])
    with pytest.raises(ValueError, match="Missing: \\['c'\\]"):
        selection.select_networks(np.zeros((3, 3)), 1, tasks=["a", "b", "c"],
                                  singletons={"a": 1.0, "b": 1.0})
    with pytest.raises(ValueError, match="singletons='bogus'"):
        selection.select_networks(np.zeros((3, 3)), 1, singletons="bogus")


def test_single_task_without_singletons():
    with pytest.raises(ValueError, match="at least 2 tasks"):
        selection.select_networks(np.zeros((1, 1)), 1)


def test_unknown_method():
    with pytest.raises(ValueError, match="method='fast'"):
        selection.select_networks(np.zeros((3, 3)), 1, method="fast")


def test_hoa_table_missing_pair():
    table = {"a": {"a": 1.0, "b": 2.0, "c": 3.0},
             "b": {"a": 2.0, "b": 1.0, "c": 3.0},
             "c": {"a": 2.0, "b": 1.0}}  # (c, c) single missing
    with pytest.raises(ValueError, match=r"\('c', 'c'\)"):
        baselines.hoa_matrix(table)
    flat = {("a", "b"): 1.0, ("b", "a"): 1.0, ("a", "c"): 1.0, ("c", "a"): 1.0,
            ("b", "c"): 1.0}  # (c, b) missing
    with pytest.raises(ValueError, match=r"\('c', 'b'\)"):
        baselines.hoa_matrix(flat, single_results={"a": 1.0, "b": 1.0, "c": 1.0})
    with pytest.raises(ValueError, match="miss tasks \\['c'\\]"):
        baselines.hoa_matrix(flat, single_results={"a": 1.0, "b": 1.0})


def test_too_many_tasks_for_exact_solvers():
    with pytest.raises(ValueError, match="Received: n=19"):
        selection.solve_subset_dp(np.zeros((19, 19)), 2)
