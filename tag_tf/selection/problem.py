"""Validated selection problems and the canonical form every solver returns.

Internally every solver *maximises* a gain matrix ``gain[source, target]``: the affinity
itself, or its negation when the input is an error/loss to be minimised. The score of a
network ``G`` (``|G| >= 2``) onto a member ``t`` is the mean over the other members ``s`` of
``gain[s, t]`` (Fifty et al., NeurIPS 2021, Sec. 3.2); a single-task network scores its
task with a user-supplied single-task value, and is not allowed when none is given (the
original notebook gives it -1e6, which is equivalent).

Canonical form and tie-breaking (shared by all solvers, so results are deterministic):
  * each task is served by the chosen network that scores it best; among equal scores the
    smaller network wins, then the one with the smaller bitmask (bit ``i`` = task ``i``);
  * networks that serve no task are dropped, duplicates are merged;
  * networks are listed in lexicographic order of their member indices.
Which of several equally good *selections* a solver returns is documented in its module.
"""

from __future__ import annotations

import math
import types
from typing import Any, Mapping, NamedTuple, Sequence, Union

import numpy as np

from tag_tf.io import affinity_io
from tag_tf.selection import result as result_lib

# Relative gap below which a bound proves optimality (LP/MILP tolerances are ~1e-9).
OPTIMALITY_TOLERANCE = 1e-7

Singletons = Union[None, str, Sequence[float], Mapping[str, float], np.ndarray]


class SelectionProblem(NamedTuple):
    """A validated problem in gain (maximisation) form.

    Attributes:
      tasks: task names.
      gain: ``[source, target]`` matrix to maximise (negated input when minimising), with a
        zero diagonal (the diagonal is never part of a group score).
      single_gain: gain of each single-task network, or ``None`` when they are not allowed.
      minimize: whether the original objective is minimised.
    """

    tasks: tuple[str, ...]
    gain: np.ndarray
    single_gain: np.ndarray | None
    minimize: bool

    @property
    def n(self) -> int:
        return len(self.tasks)

    @property
    def sign(self) -> float:
        return -1.0 if self.minimize else 1.0


def make_problem(affinity: Any, *, tasks: Sequence[str] | None = None,
                 minimize: bool = False, singletons: Singletons = None) -> SelectionProblem:
    """Validates a ``[source, target]`` matrix and builds a :class:`SelectionProblem`.

    Args:
      affinity: square ``[source, target]`` matrix; the diagonal is ignored unless
        ``singletons="diagonal"``.
      tasks: task names (default ``task_0, task_1, ...``).
      minimize: minimise the objective (errors, losses) instead of maximising it.
      singletons: single-task network scores: ``None`` (not allowed), ``"diagonal"`` (use
        ``affinity[t, t]``), a sequence in task order, or a mapping from task name.

    Returns:
      A :class:`SelectionProblem`.
    """
    array = np.asarray(affinity, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise ValueError(f"The affinity matrix must be square. Received shape {array.shape}.")
    if tasks is None:
        tasks = [f"task_{i}" for i in range(array.shape[0])]
    tasks = affinity_io.validate_tasks(tasks)
    array = affinity_io.validate_matrix(array, tasks, allow_nan=True)
    n = len(tasks)
    off_diagonal = ~np.eye(n, dtype=bool)
    bad = off_diagonal & ~np.isfinite(array)
    if bad.any():
        where = [(tasks[i], tasks[j]) for i, j in zip(*np.nonzero(bad))][:5]
        raise ValueError(
            f"The affinity matrix has non-finite off-diagonal entries at (source, target) "
            f"{where}. Every pair of tasks needs a finite value to score a group; only the "
            "diagonal may be missing (null/NaN).")
    single = _single_scores(singletons, array, tasks)
    if single is None and n < 2:
        raise ValueError(
            "Without single-task networks at least 2 tasks are needed. Received: "
            f"tasks={tasks}")
    sign = -1.0 if minimize else 1.0
    gain = np.where(off_diagonal, sign * array, 0.0)
    gain.setflags(write=False)
    single_gain = None if single is None else sign * single
    if single_gain is not None:
        single_gain.setflags(write=False)
    return SelectionProblem(tuple(tasks), gain, single_gain, bool(minimize))


def _single_scores(singletons: Singletons, array: np.ndarray,
                   tasks: list[str]) -> np.ndarray | None:
    if singletons is None:
        return None
    n = len(tasks)
    if isinstance(singletons, str):
        if singletons != "diagonal":
            raise ValueError(
                f"singletons must be None, 'diagonal', a sequence or a mapping. "
                f"Received: singletons={singletons!r}")
        values = np.diag(array).copy()
    elif isinstance(singletons, Mapping):
        missing = [t for t in tasks if t not in singletons]
        unknown = sorted(set(singletons) - set(tasks))
        if missing or unknown:
            raise ValueError(
                f"Single-task scores must name every task exactly. Missing: {missing}, "
                f"unknown: {unknown}.")
        values = np.array([singletons[t] for t in tasks], dtype=np.float64)
    else:
        values = np.asarray(singletons, dtype=np.float64).reshape(-1)
        if values.shape != (n,):
            raise ValueError(
                f"Expected {n} single-task scores (one per task). Received: "
                f"{values.shape[0]} values.")
    if not np.isfinite(values).all():
        bad = [t for t, v in zip(tasks, values) if not math.isfinite(v)]
        raise ValueError(f"Single-task scores must be finite. Non-finite for tasks {bad}.")
    return values


def check_budget(budget: int, n: int) -> int:
    """Returns ``budget`` as an int, raising unless ``1 <= budget <= n``."""
    if isinstance(budget, bool) or int(budget) != budget:
        raise ValueError(f"The budget must be an integer. Received: budget={budget!r}")
    budget = int(budget)
    if budget < 1:
        raise ValueError(f"The budget must be at least 1 network. Received: budget={budget}")
    if budget > n:
        raise ValueError(
            f"The budget cannot exceed the number of tasks ({n}). Received: budget={budget}. "
            f"Use budgets from 1 to {n}.")
    return budget


def mask_members(mask: int, n: int) -> tuple[int, ...]:
    """Indices of the tasks in bitmask ``mask`` (bit ``i`` = task ``i``)."""
    return tuple(i for i in range(n) if (mask >> i) & 1)


def network_gains(problem: SelectionProblem, mask: int) -> np.ndarray:
    """Gain of network ``mask`` onto every task (``-inf`` for non-members / disallowed)."""
    members = mask_members(mask, problem.n)
    out = np.full(problem.n, -np.inf)
    if len(members) == 1:
        if problem.single_gain is not None:
            out[members[0]] = problem.single_gain[members[0]]
        return out
    idx = np.array(members)
    sums = problem.gain[np.ix_(idx, idx)].sum(axis=0)
    out[idx] = sums / (len(members) - 1)
    return out


def canonicalize(problem: SelectionProblem, masks: Sequence[int]) -> tuple[
        tuple[int, ...], np.ndarray, np.ndarray]:
    """Applies the module's canonical form to a list of network bitmasks.

    Returns:
      ``(masks, served_by, gains)``: kept networks in canonical order, the index of the
      network serving each task, and each task's serving gain.

    Raises:
      ValueError: if the networks do not cover every task (with an allowed score).
    """
    n = problem.n
    unique = sorted({int(m) for m in masks}, key=lambda m: (bin(m).count("1"), m))
    if not unique:
        raise ValueError("No networks were given.")
    table = np.stack([network_gains(problem, m) for m in unique])  # [networks, tasks]
    # argmax returns the first maximum: rows are ordered by (size, mask), which is the
    # documented tie-break.
    best = np.argmax(table, axis=0)
    gains = table[best, np.arange(n)]
    if not np.isfinite(gains).all():
        missing = [problem.tasks[t] for t in range(n) if not math.isfinite(gains[t])]
        raise ValueError(f"The networks do not serve tasks {missing}.")
    kept = sorted({unique[i] for i in best}, key=lambda m: mask_members(m, n))
    position = {m: k for k, m in enumerate(kept)}
    served_by = np.array([position[unique[i]] for i in best], dtype=np.int64)
    return tuple(kept), served_by, gains


def build_selection(problem: SelectionProblem, masks: Sequence[int], *, budget: int,
                    method: str, seconds: float, bound_total: float | None,
                    details: Mapping[str, Any] | None = None,
                    optimal: bool | None = None) -> result_lib.Selection:
    """Builds a canonical :class:`Selection` from network bitmasks.

    Args:
      problem: the problem solved.
      masks: bitmasks of the chosen networks (redundant ones are dropped).
      budget: the budget that was allowed.
      method: solver name.
      seconds: solver wall time.
      bound_total: proven upper bound on the *total* gain (sum over tasks), or ``None``.
      details: solver statistics.
      optimal: force the optimality flag; by default it is derived from the bound.

    Returns:
      A :class:`Selection` in the input's units.
    """
    kept, served_by, gains = canonicalize(problem, masks)
    if len(kept) > budget:
        raise AssertionError(f"{len(kept)} networks exceed the budget {budget}.")
    n = problem.n
    sign = problem.sign
    total = float(gains.sum())
    networks = []
    for k, mask in enumerate(kept):
        members = mask_members(mask, n)
        serves = [t for t in members if served_by[t] == k]
        networks.append(result_lib.Network(
            tasks=tuple(problem.tasks[t] for t in members),
            serves=tuple(problem.tasks[t] for t in serves),
            helpers=tuple(problem.tasks[t] for t in members if served_by[t] != k),
            scores=tuple(float(sign * gains[t]) for t in serves)))
    if bound_total is None or not math.isfinite(bound_total):
        bound, gap = math.nan, math.nan
    else:
        bound_total = max(float(bound_total), total)
        bound = sign * bound_total / n
        gap = (bound_total - total) / max(abs(total), 1e-12)
    if optimal is None:
        optimal = bool(gap <= OPTIMALITY_TOLERANCE) if not math.isnan(gap) else False
    if optimal:
        gap = 0.0 if math.isnan(gap) else gap
    return result_lib.Selection(
        tasks=problem.tasks, budget=budget, networks=tuple(networks),
        served_by=tuple(int(i) for i in served_by),
        task_scores=tuple(float(sign * g) for g in gains),
        objective=sign * total / n, bound=bound, gap=gap, optimal=bool(optimal),
        minimize=problem.minimize, method=method, seconds=float(seconds),
        details=types.MappingProxyType(dict(details or {})))
