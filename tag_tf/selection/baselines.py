"""Baselines on the same selection machinery: CS, HOA and random groupings (RG).

* CS (Fifty et al., NeurIPS 2021, Sec. 4): a gradient cosine-similarity matrix takes the
  place of the affinities; selection is unchanged (maximised, no single-task networks).
* HOA (Standley et al., ICML 2020, "Which Tasks Should Be Learned Together in Multi-task
  Learning?"): a group's estimated result for task ``t`` is the mean of ``t``'s results in
  the pairs ``{t, s}`` inside the group; a single-task network uses ``t``'s single-task
  result; the objective (error or loss) is minimised. With ``H[s, t]`` = result of ``t``
  trained with ``s`` this is exactly the group score used for TAG, so HOA is the same
  selection with ``singletons`` = single-task results and ``minimize=True``.
* RG: random groupings under the same budget, scored with the same objective; reported as
  mean and spread over seeded samples.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from tag_tf.io import affinity_io
from tag_tf.selection import problem as problem_lib
from tag_tf.selection import published
from tag_tf.selection import result as result_lib
from tag_tf.selection import solvers


def select_cs(similarity: Any, budgets: int | Sequence[int], *,
              tasks: Sequence[str] | None = None, method: solvers.Method = "auto",
              time_limit: float = 60.0) -> list[result_lib.Selection]:
    """CS baseline: the usual selection on a cosine-similarity matrix (maximised).

    Args:
      similarity: square matrix of summed gradient cosine similarities (diagonal unused).
      budgets: budget(s).
      tasks: task names.
      method: solver (see :func:`select_networks`).
      time_limit: seconds per budget for the large-scale solver.

    Returns:
      One :class:`Selection` per budget.
    """
    return solvers.select_networks(similarity, budgets, tasks=tasks, minimize=False,
                               singletons=None, method=method, time_limit=time_limit)


def hoa_matrix(pair_results: Mapping[Any, Any], *, tasks: Sequence[str] | None = None,
               single_results: Mapping[str, float] | None = None,
               ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Builds the HOA ``[partner, task]`` matrix and single-task results.

    Args:
      pair_results: either nested ``{task: {partner: result}}`` (result of ``task`` when
        trained with ``partner``; ``{task: {task: single}}`` gives the single-task result),
        or flat ``{(task, partner): result}``.
      tasks: task order (default: the order the tasks first appear).
      single_results: single-task results (default: the table's diagonal).

    Returns:
      ``(tasks, matrix, singles)`` with ``matrix[s, t]`` = result of ``t`` trained with
      ``s`` and ``singles[t]`` its single-task result.

    Raises:
      ValueError: naming every missing pair or single-task result.
    """
    if pair_results and all(isinstance(k, tuple) for k in pair_results):
        nested: dict[str, dict[str, float]] = {}
        for (task, partner), value in pair_results.items():
            nested.setdefault(task, {})[partner] = value
            nested.setdefault(partner, {})
    else:
        nested = {k: dict(v) for k, v in pair_results.items()}
    if tasks is None:
        tasks = list(dict.fromkeys(list(nested) + [p for row in nested.values() for p in row]))
    tasks = affinity_io.validate_tasks(tasks)
    if single_results is not None:
        missing = [t for t in tasks if t not in single_results]
        if missing:
            raise ValueError(f"The HOA single-task results miss tasks {missing}.")
        for t in tasks:
            nested.setdefault(t, {})[t] = single_results[t]
    for t in tasks:
        nested.setdefault(t, {})
    names, matrix = published.nested_to_matrix(nested, tasks, name="HOA pair table")
    return names, matrix, np.diag(matrix).copy()


def select_hoa(pair_results: Mapping[Any, Any], budgets: int | Sequence[int], *,
               tasks: Sequence[str] | None = None,
               single_results: Mapping[str, float] | None = None, minimize: bool = True,
               method: solvers.Method = "auto",
               time_limit: float = 60.0) -> list[result_lib.Selection]:
    """HOA baseline (Standley et al., 2020): select networks from pairwise results.

    Args:
      pair_results: pair table (see :func:`hoa_matrix`); errors or losses by default.
      budgets: budget(s).
      tasks: task order.
      single_results: single-task results (default: the table's diagonal).
      minimize: ``True`` for errors/losses; ``False`` for accuracies.
      method: solver (see :func:`select_networks`).
      time_limit: seconds per budget for the large-scale solver.

    Returns:
      One :class:`Selection` per budget.
    """
    names, matrix, singles = hoa_matrix(pair_results, tasks=tasks,
                                        single_results=single_results)
    return solvers.select_networks(matrix, budgets, tasks=names, minimize=minimize,
                               singletons=singles, method=method, time_limit=time_limit)


class RandomGroupings(NamedTuple):
    """Objectives of random groupings under one budget.

    Attributes:
      budget: the budget.
      networks: number of networks per random grouping.
      mean, std, min, max: statistics of the objective over ``objectives``.
      objectives: the objective of each sample.
      seed: the seed used.
    """

    budget: int
    networks: int
    mean: float
    std: float
    min: float
    max: float
    objectives: tuple[float, ...]
    seed: int


def random_groupings(affinity: Any, budget: int, *, tasks: Sequence[str] | None = None,
                     minimize: bool = False, singletons: problem_lib.Singletons = None,
                     samples: int = 1000, seed: int = 0) -> RandomGroupings:
    """RG baseline: expected objective and spread of random groupings under a budget.

    Each sample splits the tasks uniformly at random into ``k = min(b, n // s)`` disjoint
    networks of at least ``s`` tasks (``s = 2`` without single-task scores, else 1): tasks
    are shuffled, ``s`` go to each network, the rest to uniformly random networks. Each task
    is served by its network, scored as in the selection.

    Args:
      affinity: square ``[source, target]`` matrix.
      budget: number of networks.
      tasks: task names.
      minimize: whether lower is better (only recorded; scores are in input units).
      singletons: single-task scores (see :func:`make_problem`).
      samples: number of random groupings.
      seed: seed of ``numpy.random.default_rng``.

    Returns:
      A :class:`RandomGroupings`.
    """
    problem = problem_lib.make_problem(affinity, tasks=tasks, minimize=minimize,
                                       singletons=singletons)
    budget = problem_lib.check_budget(budget, problem.n)
    if samples < 1:
        raise ValueError(f"samples must be at least 1. Received: samples={samples}")
    n = problem.n
    min_size = 1 if problem.single_gain is not None else 2
    k = max(1, min(budget, n // min_size))
    rng = np.random.default_rng(seed)
    objectives = []
    for _ in range(samples):
        order = rng.permutation(n)
        labels = np.empty(n, dtype=np.int64)
        labels[order[:k * min_size]] = np.arange(k * min_size) % k
        labels[order[k * min_size:]] = rng.integers(0, k, n - k * min_size)
        masks = [sum(1 << int(t) for t in np.nonzero(labels == j)[0]) for j in range(k)]
        total = 0.0
        for mask in masks:
            gains = problem_lib.network_gains(problem, mask)
            total += float(gains[np.isfinite(gains)].sum())
        objectives.append(problem.sign * total / n)
    values = np.array(objectives)
    return RandomGroupings(budget, k, float(values.mean()), float(values.std()),
                           float(values.min()), float(values.max()), tuple(objectives), seed)
