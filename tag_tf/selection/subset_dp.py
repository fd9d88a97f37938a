"""Exact selection by dynamic programming over subsets of tasks.

Choosing at most ``b`` networks and serving every task by its best chosen network
(Fifty et al., NeurIPS 2021, Sec. 3.2) has the same optimum as partitioning the tasks into at
most ``b`` *served sets* ``X``, each given its best network ``G >= X`` (value
``w(X) = max_{G >= X} sum_{t in X} score(G, t)``, see
:func:`tag_tf.selection.scoring.block_values`). This module solves that partition problem
exactly with the recursion

    F_1(S) = w(S),
    F_k(S) = max(F_{k-1}(S), max_{X subset S, low(S) in X, X != S} w(X) + F_{k-1}(S \\ X)),

where ``low(S)`` is the lowest task index in ``S``. Every level visits the ``(3^n - 1) / 2``
pairs ``(X, S \\ X)`` at once in NumPy (``np.maximum.at``), so 16 tasks take seconds; the
complete recursion is the optimality proof (the bound equals the objective).

Tie-breaking (deterministic): fewer served sets are preferred (``F_k(S) == F_{k-1}(S)``
drops to ``k - 1``); otherwise the served set containing the lowest remaining task is the
one with the smallest bitmask among the maximisers; each served set gets its best network
(ties: smaller network, then lower bitmask), and the result is put in the canonical form of
:mod:`tag_tf.selection.problem`.
"""

from __future__ import annotations

import time
from typing import Any, Iterator, Sequence

import numpy as np

from tag_tf.selection import problem as problem_lib
from tag_tf.selection import result as result_lib
from tag_tf.selection import scoring

MAX_DP_TASKS = 18


def solve_subset_dp(affinity: Any, budget: int, *, tasks: Sequence[str] | None = None,
                    minimize: bool = False,
                    singletons: problem_lib.Singletons = None) -> result_lib.Selection:
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

    Returns:
      An optimal :class:`Selection`.

    Example:
      >>> sel = solve_subset_dp([[0., 1., -1.], [1., 0., -1.], [-1., -1., 0.]], 2)
      >>> [net.serves for net in sel.networks]
      [('task_0', 'task_1'), ('task_2',)]
    """
    problem = problem_lib.make_problem(affinity, tasks=tasks, minimize=minimize,
                                       singletons=singletons)
    return solve_problem_subset_dp(problem, budget)


def solve_problem_subset_dp(problem: problem_lib.SelectionProblem, budget: int, *,
                            values: np.ndarray | None = None) -> result_lib.Selection:
    """Like :func:`solve_subset_dp` for a validated problem; ``values`` reuses ``w``."""
    budget = problem_lib.check_budget(budget, problem.n)
    n = problem.n
    if n > MAX_DP_TASKS:
        raise ValueError(
            f"The subset DP visits 3^n pairs and is limited to {MAX_DP_TASKS} tasks; use "
            f"solve_large. Received: n={n}")
    start = time.perf_counter()
    if values is None:
        values, _ = scoring.block_values(problem)
    levels = solve_levels(values, n, budget - 1)
    full = (1 << n) - 1
    total, blocks = best_served_sets(values, levels, full, budget)
    networks = [scoring.best_network_for(problem, x) for x in blocks]
    seconds = time.perf_counter() - start
    return problem_lib.build_selection(
        problem, networks, budget=budget, method="subset-dp", seconds=seconds,
        bound_total=total, optimal=True,
        details={"served_sets": [list(problem_lib.mask_members(x, n)) for x in blocks]})


def pair_chunks(n: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields ``(X, R)`` bitmask arrays covering every ``X`` and non-empty ``R`` above ``low(X)``.

    ``R`` is disjoint from ``X`` and only uses tasks above ``low(X)``, so ``S = X | R``
    has ``low(S) = low(X)``: each ``(S, X)`` split of the recursion appears exactly once.
    """
    full = (1 << n) - 1
    for low in range(n):
        above = n - 1 - low
        above_bits = full ^ ((1 << (low + 1)) - 1)
        for y in range(above + 1):
            if y == 0:
                ys = np.zeros(1, dtype=np.int64)
            else:
                ys = scoring.group_masks(above, min_size=y, max_size=y) << (low + 1)
            x = ys | (1 << low)
            free = (~ys) & above_bits
            f = above - y
            if f == 0:
                continue
            index = np.nonzero(scoring.membership(free, n))[1].reshape(free.size, f)
            bits = np.left_shift(np.int64(1), index)
            r = np.zeros((free.size, 1), dtype=np.int64)
            for j in range(f):
                r = np.concatenate([r, r | bits[:, j:j + 1]], axis=1)
            r = r[:, 1:]
            yield np.repeat(x, r.shape[1]), r.ravel()


def solve_levels(values: np.ndarray, n: int, max_blocks: int, *,
                 exact: bool = False) -> list[np.ndarray]:
    """Tables ``F_1 .. F_max_blocks`` over all subsets (``F_k[S]``: best with <= k sets;
    ``exact``: with exactly k sets, ``-inf`` where impossible)."""
    levels = [values.copy()]
    for _ in range(2, max_blocks + 1):
        previous = levels[-1]
        current = np.full_like(previous, -np.inf) if exact else previous.copy()
        for x, r in pair_chunks(n):
            np.maximum.at(current, x | r, values[x] + previous[r])
        levels.append(current)
    return levels


def _submasks_with_low(s: int) -> np.ndarray:
    """All ``X subset s`` containing ``low(s)``, in increasing bitmask order."""
    low = s & -s
    rest = s ^ low
    bits = [1 << i for i in range(rest.bit_length()) if (rest >> i) & 1]
    subs = np.zeros(1, dtype=np.int64)
    for bit in bits:
        subs = np.concatenate([subs, subs | bit])
    return np.sort(subs | low)


def best_served_sets(values: np.ndarray, levels: list[np.ndarray], full: int,
                     budget: int, *, exact: bool = False) -> tuple[float, list[int]]:
    """Best total with at most (``exact``: exactly) ``budget`` sets over all tasks, and the
    served sets.

    Walks the tables of :func:`solve_levels` (``levels[k - 1]`` = best with <= k sets, or
    exactly k with ``exact``) from the full task set down; ties keep fewer sets, then the
    lowest split.
    """
    blocks: list[int] = []
    s, k = full, budget
    total = None
    while s:
        # Best value of s with at most k sets, and whether k - 1 sets suffice.
        if k == 1:
            best, choice = float(values[s]), s
        else:
            xs = _submasks_with_low(s)
            rest = s ^ xs
            previous = levels[k - 2]
            with np.errstate(invalid="ignore"):
                candidates = np.where(rest == 0, -np.inf, values[xs] + previous[rest])
            split = int(np.argmax(candidates))
            best_split = float(candidates[split])
            fewer = -np.inf if exact else float(levels[k - 2][s])
            if fewer >= best_split and not exact:
                best, choice = fewer, None
            else:
                best, choice = best_split, int(xs[split])
        if total is None:
            total = best
        if choice is None:
            k -= 1
            continue
        if not np.isfinite(best):
            raise ValueError("No selection covers every task.")
        blocks.append(choice)
        s ^= choice
        k -= 1
    return float(total), blocks
