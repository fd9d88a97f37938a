"""Exact selection as weighted set partitioning, solved with HiGHS (``scipy.optimize.milp``).

Choosing at most ``b`` networks and serving every task by its best chosen network
(Fifty et al., NeurIPS 2021, Sec. 3.2) has the same optimum as partitioning the tasks into
at most ``b`` *served sets* ``X`` and giving each set its best network ``G >= X``: a
network's served tasks form such a set, and conversely the best networks of a partition
serve every task at least as well. So with ``w(X) = max_{G >= X} sum_{t in X} score(G, t)``
(:func:`tag_tf.selection.scoring.block_values`) the problem is the MILP

    maximise   sum_X w(X) z_X
    subject to sum_{X containing t} z_X = 1   for every task t,
               sum_X z_X <= b,                z_X in {0, 1}.

HiGHS proves optimality (its dual bound equals the incumbent); the bound is reported with
the selection. The ``3^n`` block values limit this solver to about 17 tasks.

Tie-breaking: HiGHS is deterministic, so equal inputs give equal selections; when several
selections are optimal the one HiGHS finds is returned (it may differ from the exhaustive
oracle's first optimum), put in the canonical form of :mod:`tag_tf.selection.problem` with
each served set given its best network (ties: smaller network, then lower bitmask).
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import numpy as np
from scipy import optimize, sparse

from tag_tf.selection import problem as problem_lib
from tag_tf.selection import result as result_lib
from tag_tf.selection import scoring

MAX_MILP_TASKS = 18


def solve_milp(affinity: Any, budget: int, *, tasks: Sequence[str] | None = None,
               minimize: bool = False, singletons: problem_lib.Singletons = None,
               time_limit: float | None = None) -> result_lib.Selection:
    """Finds a proven-optimal selection of at most ``budget`` networks.

    References:
      Fifty et al., "Efficiently Identifying Task Groupings for Multi-Task Learning",
      NeurIPS 2021, Sec. 3.2.

    Args:
      affinity: square ``[source, target]`` matrix.
      budget: maximum number of networks, ``1 <= budget <= n``.
      tasks: task names.
      minimize: minimise (errors, losses) instead of maximise (affinities).
      singletons: single-task network scores (see :func:`make_problem`).
      time_limit: seconds for HiGHS; on timeout the best selection found and the dual
        bound are returned with ``optimal=False``.

    Returns:
      A :class:`Selection` carrying the bound HiGHS closed.

    Example:
      >>> sel = solve_milp([[0., 1., -1.], [1., 0., -1.], [-1., -1., 0.]], 2)
      >>> round(sel.objective, 6), sel.optimal
      (0.333333, True)
    """
    problem = problem_lib.make_problem(affinity, tasks=tasks, minimize=minimize,
                                       singletons=singletons)
    return solve_problem_milp(problem, budget, time_limit=time_limit)


def solve_problem_milp(problem: problem_lib.SelectionProblem, budget: int, *,
                       time_limit: float | None = None,
                       values: np.ndarray | None = None) -> result_lib.Selection:
    """Like :func:`solve_milp` for a validated problem; ``values`` reuses block values."""
    budget = problem_lib.check_budget(budget, problem.n)
    n = problem.n
    if n > MAX_MILP_TASKS:
        raise ValueError(
            f"The exact MILP enumerates 3^n (network, served set) pairs and is limited to "
            f"{MAX_MILP_TASKS} tasks; use solve_large. Received: n={n}")
    start = time.perf_counter()
    pairs = None
    if values is None:
        values, pairs = scoring.block_values(problem)
    scored = time.perf_counter() - start
    columns = np.nonzero(np.isfinite(values))[0].astype(np.int64)
    weights = values[columns]
    members = scoring.membership(columns, n)  # [columns, tasks]
    rows, cols = np.nonzero(members.T)
    cover = sparse.csc_matrix((np.ones(rows.size), (rows, cols)), shape=(n, columns.size))
    count = sparse.csc_matrix(np.ones((1, columns.size)))
    constraints = [
        optimize.LinearConstraint(cover, lb=1.0, ub=1.0),
        optimize.LinearConstraint(count, lb=0.0, ub=float(budget)),
    ]
    options: dict[str, Any] = {"mip_rel_gap": 0.0, "presolve": False}
    if time_limit is not None:
        options["time_limit"] = float(time_limit)
    solution = optimize.milp(-weights, constraints=constraints,
                             integrality=np.ones(columns.size),
                             bounds=optimize.Bounds(0.0, 1.0), options=options)
    if solution.x is None:
        raise RuntimeError(f"HiGHS found no selection: {solution.message}")
    chosen = columns[np.nonzero(solution.x > 0.5)[0]]
    networks = [scoring.best_network_for(problem, int(x)) for x in chosen]
    dual = getattr(solution, "mip_dual_bound", None)
    bound_total = -float(dual) if dual is not None and math.isfinite(dual) else None
    proven = solution.status == 0
    if proven:
        # Optimal up to HiGHS' feasibility tolerance: the incumbent closes the bound.
        bound_total = float(values[chosen].sum()) if bound_total is None else bound_total
    seconds = time.perf_counter() - start
    details = {
        "columns": int(columns.size), "pairs_scored": pairs, "scoring_seconds": scored,
        "highs_status": int(solution.status), "highs_message": str(solution.message),
        "nodes": int(getattr(solution, "mip_node_count", 0) or 0),
    }
    return problem_lib.build_selection(
        problem, networks, budget=budget, method="milp", seconds=seconds,
        bound_total=bound_total, details=details, optimal=proven)
