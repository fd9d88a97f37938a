"""Reference (oracle) solvers that search exhaustively.

Two independent searches over the same problem (Fifty et al., NeurIPS 2021, Sec. 3.2):

* ``"networks"`` — what the original notebook does: every combination of at most ``b``
  candidate networks (all groups of size >= 2, plus single-task networks when allowed) is
  scored, each task taking its best network. Vectorised over the last two networks of a
  combination; the number of combinations grows like ``(2^n)^b``, so it is for small cases
  (``n = 9``, ``b <= 3`` takes about a second).
* ``"partitions"`` — every partition of the tasks into at most ``b`` served sets, each set
  given its best network by brute force over its supersets. Bell(n) partitions, fine for
  ``n <= 10``.

Tie-breaking: the first optimum in enumeration order wins (later ones must be strictly
better). ``"networks"`` enumerates by number of networks, then lexicographically over
candidates ordered by (size, bitmask); ``"partitions"`` enumerates restricted-growth strings
lexicographically. The result is then put in the canonical form of
:mod:`tag_tf.selection.problem`.
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Any, Iterator, Literal, Sequence

import numpy as np

from tag_tf.selection import problem as problem_lib
from tag_tf.selection import result as result_lib
from tag_tf.selection import scoring

DEFAULT_MAX_COMBINATIONS = 300_000_000


def solve_exhaustive(affinity: Any, budget: int, *, tasks: Sequence[str] | None = None,
                     minimize: bool = False, singletons: problem_lib.Singletons = None,
                     mode: Literal["networks", "partitions"] = "networks",
                     max_combinations: int = DEFAULT_MAX_COMBINATIONS,
                     ) -> result_lib.Selection:
    """Finds the best selection of at most ``budget`` networks by exhaustive search.

    References:
      Fifty et al., "Efficiently Identifying Task Groupings for Multi-Task Learning",
      NeurIPS 2021, Sec. 3.2 (network selection).

    Args:
      affinity: square ``[source, target]`` matrix (affinities, or errors with
        ``minimize=True``).
      budget: maximum number of networks, ``1 <= budget <= n``.
      tasks: task names.
      minimize: minimise instead of maximise.
      singletons: single-task network scores (see :func:`make_problem`).
      mode: ``"networks"`` (combinations of networks, as the original notebook) or
        ``"partitions"`` (partitions of the tasks into served sets).
      max_combinations: refuse ``"networks"`` searches larger than this.

    Returns:
      A proven-optimal :class:`Selection`.

    Example:
      >>> sel = solve_exhaustive([[0., 1., -1.], [1., 0., -1.], [-1., -1., 0.]], 2)
      >>> [net.tasks for net in sel.networks]
      [('task_0', 'task_1'), ('task_0', 'task_2')]
    """
    problem = problem_lib.make_problem(affinity, tasks=tasks, minimize=minimize,
                                       singletons=singletons)
    return solve_problem_exhaustive(problem, budget, mode=mode,
                                    max_combinations=max_combinations)


def solve_problem_exhaustive(problem: problem_lib.SelectionProblem, budget: int, *,
                             mode: Literal["networks", "partitions"] = "networks",
                             max_combinations: int = DEFAULT_MAX_COMBINATIONS,
                             ) -> result_lib.Selection:
    """Like :func:`solve_exhaustive` for an already validated problem."""
    budget = problem_lib.check_budget(budget, problem.n)
    start = time.perf_counter()
    if mode == "networks":
        masks, total, visited = _search_networks(problem, budget, max_combinations)
    elif mode == "partitions":
        masks, total, visited = _search_partitions(problem, budget)
    else:
        raise ValueError(f"mode must be 'networks' or 'partitions'. Received: mode={mode!r}")
    seconds = time.perf_counter() - start
    return problem_lib.build_selection(
        problem, masks, budget=budget, method=f"exhaustive-{mode}", seconds=seconds,
        bound_total=total, optimal=True, details={"visited": visited})


def _candidates(problem: problem_lib.SelectionProblem) -> tuple[np.ndarray, np.ndarray]:
    min_size = 1 if problem.single_gain is not None else 2
    masks = scoring.group_masks(problem.n, min_size=min_size)
    _, gains = scoring.gain_table(problem, masks)
    return masks, gains


def _search_networks(problem: problem_lib.SelectionProblem, budget: int,
                     max_combinations: int) -> tuple[list[int], float, int]:
    masks, gains = _candidates(problem)
    count = scoring.combinations_count(masks.size, budget)
    if count > max_combinations:
        raise ValueError(
            f"Exhaustive search over {count:.3g} network combinations exceeds "
            f"max_combinations={max_combinations}. Received: n={problem.n}, budget={budget}")
    best_total, best_combo, visited = -math.inf, None, 0

    def consider(totals: np.ndarray, combos: Iterator[tuple[int, ...]] | Any) -> None:
        nonlocal best_total, best_combo
        if totals.size == 0:
            return
        k = int(np.argmax(totals))
        if totals[k] > best_total:
            best_total, best_combo = float(totals[k]), combos(k)

    g = masks.size
    # One network.
    consider(gains.sum(axis=1), lambda k: (k,))
    visited += g
    if budget >= 2 and g >= 2:
        first, second = np.triu_indices(g, k=1)  # lexicographic pairs
        pair_best = np.maximum(gains[first], gains[second])  # [pairs, tasks]
        consider(pair_best.sum(axis=1), lambda k: (int(first[k]), int(second[k])))
        visited += first.size
        # Pairs whose first index is > i form a suffix of the lexicographic pair list.
        suffix_start = np.searchsorted(first, np.arange(g + 1))
        for k_networks in range(3, budget + 1):
            for prefix in itertools.combinations(range(g), k_networks - 2):
                rows = slice(suffix_start[prefix[-1] + 1], first.size)
                if rows.start >= rows.stop:
                    continue
                prefix_best = gains[list(prefix)].max(axis=0)
                totals = np.maximum(pair_best[rows], prefix_best).sum(axis=1)
                offset = rows.start
                consider(totals, lambda k, p=prefix, o=offset: p + (int(first[o + k]),
                                                                     int(second[o + k])))
                visited += totals.size
    if best_combo is None or not math.isfinite(best_total):
        raise ValueError("No selection covers every task.")
    return [int(masks[i]) for i in best_combo], best_total, visited


def _partitions(n: int, max_blocks: int) -> Iterator[list[int]]:
    """Restricted-growth strings of length ``n`` with at most ``max_blocks`` blocks."""
    labels = [0] * n

    def extend(i: int, used: int) -> Iterator[list[int]]:
        if i == n:
            yield labels
            return
        for label in range(min(used + 1, max_blocks)):
            labels[i] = label
            yield from extend(i + 1, max(used, label + 1))

    yield from extend(1, 1) if n > 0 else iter(())


def _search_partitions(problem: problem_lib.SelectionProblem,
                       budget: int) -> tuple[list[int], float, int]:
    n = problem.n
    masks, gains = _candidates(problem)
    value, network = {}, {}

    def served_value(x: int) -> float:
        if x not in value:
            # Brute force over every allowed network containing x (ties: first in
            # (size, bitmask) order).
            rows = np.nonzero((masks & x) == x)[0]
            idx = list(problem_lib.mask_members(x, n))
            totals = gains[np.ix_(rows, idx)].sum(axis=1)
            if totals.size == 0:
                value[x], network[x] = -math.inf, None
            else:
                k = int(np.argmax(totals))
                value[x], network[x] = float(totals[k]), int(masks[rows[k]])
        return value[x]

    best_total, best_blocks, visited = -math.inf, None, 0
    for labels in _partitions(n, budget):
        blocks = [0] * (max(labels) + 1)
        for task, label in enumerate(labels):
            blocks[label] |= 1 << task
        total = sum(served_value(x) for x in blocks)
        visited += 1
        if total > best_total:
            best_total, best_blocks = total, list(blocks)
    if best_blocks is None or not math.isfinite(best_total):
        raise ValueError("No selection covers every task.")
    return [network[x] for x in best_blocks], best_total, visited
