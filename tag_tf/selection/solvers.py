"""``select_networks``: one entry point over the solvers (no reporting, no file I/O).

Picks the subset DP (exact, ``n <= 16`` by default) or the large-scale solver with a
certified gap above that. Kept apart from :mod:`tag_tf.selection.api` so the baselines and
the robustness bootstrap can use it without importing the reporting layer.
"""

from __future__ import annotations

import time
from typing import Any, Literal, Sequence

import numpy as np

from tag_tf.selection import exhaustive
from tag_tf.selection import large
from tag_tf.selection import milp
from tag_tf.selection import problem as problem_lib
from tag_tf.selection import result as result_lib
from tag_tf.selection import robustness
from tag_tf.selection import scoring
from tag_tf.selection import subset_dp

Method = Literal["auto", "dp", "milp", "exhaustive", "large"]
# Largest n for which "auto" uses the exact subset DP (3^16 pairs take ~2 s).
AUTO_EXACT_MAX_TASKS = 16


def select_networks(affinity: Any, budgets: int | Sequence[int], *,
                    tasks: Sequence[str] | None = None, minimize: bool = False,
                    singletons: problem_lib.Singletons = None, method: Method = "auto",
                    time_limit: float = 60.0, seed: int = 0,
                    uncertainty: robustness.Uncertainty | None = None,
                    ) -> list[result_lib.Selection]:
    """Selects at most ``b`` networks for each budget ``b``.

    References:
      Fifty et al., "Efficiently Identifying Task Groupings for Multi-Task Learning",
      NeurIPS 2021, Sec. 3.2.

    Args:
      affinity: square ``[source, target]`` matrix (affinities; errors/losses with
        ``minimize=True``).
      budgets: one budget or a sequence of budgets, each ``1 <= b <= n``.
      tasks: task names.
      minimize: minimise instead of maximise.
      singletons: single-task network scores (see :func:`make_problem`).
      method: ``"auto"`` (exact DP up to 16 tasks, else ``"large"``), ``"dp"``,
        ``"milp"``, ``"exhaustive"`` or ``"large"``.
      time_limit: seconds per budget for ``"large"`` (and ``"milp"``).
      seed: seed for ``"large"``.
      uncertainty: if given, every selection also gets a bootstrap ``robustness``
        (stability, objective interval, best alternative and its margin in standard
        errors, verdict and its evidence; see :mod:`tag_tf.selection.robustness`): from
        one run at best "stable within this run", from 2+ pooled runs "robust". The
        resampling uses ``uncertainty.seed``, not ``seed``.

    Returns:
      One :class:`Selection` per budget, in the given order.

    Example:
      >>> [s.objective for s in select_networks([[0., 2.], [4., 0.]], [1, 2])]
      [3.0, 3.0]
    """
    problem = problem_lib.make_problem(affinity, tasks=tasks, minimize=minimize,
                                       singletons=singletons)
    budgets = [budgets] if isinstance(budgets, (int, np.integer)) else list(budgets)
    if not budgets:
        raise ValueError("At least one budget is needed. Received: budgets=[]")
    budgets = [problem_lib.check_budget(b, problem.n) for b in budgets]
    if uncertainty is not None and problem.n > robustness.MAX_BOOTSTRAP_TASKS:
        raise ValueError(f"The bootstrap solves every resample exactly and is limited to "
                         f"{robustness.MAX_BOOTSTRAP_TASKS} tasks. Received: n={problem.n}")
    if method == "auto":
        method = "dp" if problem.n <= AUTO_EXACT_MAX_TASKS else "large"
    if method == "dp":
        selections = _solve_dp_budgets(problem, budgets)
    elif method == "milp":
        values, _ = scoring.block_values(problem)
        selections = [milp.solve_problem_milp(problem, b, values=values, time_limit=time_limit)
                      for b in budgets]
    elif method == "exhaustive":
        selections = [exhaustive.solve_problem_exhaustive(problem, b) for b in budgets]
    elif method == "large":
        selections = [large.solve_problem_large(problem, b, seed=seed, time_limit=time_limit)
                      for b in budgets]
    else:
        raise ValueError(
            "method must be 'auto', 'dp', 'milp', 'exhaustive' or 'large'. "
            f"Received: method={method!r}")
    if uncertainty is not None:
        selections = robustness.assess(affinity, selections, uncertainty, tasks=problem.tasks,
                                       minimize=minimize, singletons=singletons)
    return selections


def _solve_dp_budgets(problem: problem_lib.SelectionProblem,
                      budgets: list[int]) -> list[result_lib.Selection]:
    """Shares the block values (and their cost) between budgets."""
    start = time.perf_counter()
    values, _ = scoring.block_values(problem)
    shared = time.perf_counter() - start
    out = []
    for b in budgets:
        selection = subset_dp.solve_problem_subset_dp(problem, b, values=values)
        out.append(selection._replace(seconds=selection.seconds + shared / len(budgets)))
    return out
