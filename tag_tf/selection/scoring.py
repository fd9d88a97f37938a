"""Vectorised scores of every candidate network (all ``2^n - 1`` task groups).

Implements the group score of Fifty et al. (NeurIPS 2021), Sec. 3.2: for a group ``G`` with
``|G| >= 2`` the score onto member ``t`` is ``mean_{s in G, s != t} A[s, t]``, with
``A[source, target]`` the inter-task affinity (paper Eq. 1/2, averaged over training). All
groups are scored at once as ``members @ A`` divided by ``|G| - 1``.

Groups are bitmasks (bit ``i`` = task ``i``), listed in order of size, then bitmask value.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import numpy as np

from tag_tf.selection import problem as problem_lib

# Above this many tasks the 2^n table does not fit comfortably in memory.
MAX_ENUMERATED_TASKS = 22


class GroupScores(NamedTuple):
    """Scores of candidate networks.

    Attributes:
      masks: ``[groups]`` int64 bitmasks, ordered by size, then value.
      members: ``[groups, tasks]`` bool membership.
      scores: ``[groups, tasks]`` score of each group onto each member; ``nan`` for
        non-members and for single-task groups without a single-task score.
    """

    masks: np.ndarray
    members: np.ndarray
    scores: np.ndarray


def group_masks(n: int, *, min_size: int = 1, max_size: int | None = None) -> np.ndarray:
    """All bitmasks over ``n`` tasks with ``min_size <= size <= max_size``, by size then value."""
    if n > MAX_ENUMERATED_TASKS:
        raise ValueError(
            f"Enumerating all groups is limited to {MAX_ENUMERATED_TASKS} tasks. "
            f"Received: n={n}")
    max_size = n if max_size is None else min(max_size, n)
    masks = np.arange(1, 1 << n, dtype=np.int64)
    sizes = popcount(masks)
    keep = (sizes >= min_size) & (sizes <= max_size)
    masks, sizes = masks[keep], sizes[keep]
    return masks[np.lexsort((masks, sizes))]


def popcount(masks: np.ndarray) -> np.ndarray:
    """Number of set bits of each int64 bitmask."""
    masks = np.asarray(masks, dtype=np.int64)
    count = np.zeros(masks.shape, dtype=np.int64)
    for i in range(63):
        count += (masks >> i) & 1
    return count


def membership(masks: np.ndarray, n: int) -> np.ndarray:
    """``[groups, n]`` bool membership of each bitmask."""
    return ((np.asarray(masks, dtype=np.int64)[:, None] >> np.arange(n)) & 1).astype(bool)


def gain_table(problem: problem_lib.SelectionProblem,
               masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gains of each group onto each task for a problem (``-inf`` where not allowed).

    Returns:
      ``(members, gains)``, both ``[groups, tasks]``.
    """
    n = problem.n
    members = membership(masks, n)
    sizes = members.sum(axis=1)
    sums = members.astype(np.float64) @ problem.gain  # diagonal of gain is zero
    with np.errstate(divide="ignore", invalid="ignore"):
        gains = sums / np.maximum(sizes - 1, 1)[:, None]
    gains = np.where(members, gains, -np.inf)
    single = sizes == 1
    if single.any():
        rows = np.nonzero(single)[0]
        cols = np.argmax(members[rows], axis=1)
        if problem.single_gain is None:
            gains[rows, cols] = -np.inf
        else:
            gains[rows, cols] = problem.single_gain[cols]
    return members, gains


def group_scores(affinity: Any, *, tasks: Sequence[str] | None = None,
                 singletons: problem_lib.Singletons = None) -> GroupScores:
    """Scores every candidate network of a ``[source, target]`` matrix.

    References:
      Fifty et al., "Efficiently Identifying Task Groupings for Multi-Task Learning",
      NeurIPS 2021, Sec. 3.2.

    Args:
      affinity: square ``[source, target]`` matrix.
      tasks: task names (only used for validation messages).
      singletons: single-task scores (see :func:`make_problem`); ``None`` leaves them ``nan``.

    Returns:
      A :class:`GroupScores` over all ``2^n - 1`` groups, in the input's units.

    Example:
      >>> table = group_scores([[0., 1.], [3., 0.]])
      >>> table.scores[-1].tolist()  # group {0, 1}: onto 0 from 1 is 3, onto 1 from 0 is 1
      [3.0, 1.0]
    """
    problem = problem_lib.make_problem(affinity, tasks=tasks, singletons=singletons)
    masks = group_masks(problem.n)
    members, gains = gain_table(problem, masks)
    scores = np.where(np.isfinite(gains), gains, np.nan)
    return GroupScores(masks, members, scores)


def block_values(problem: problem_lib.SelectionProblem) -> tuple[np.ndarray, int]:
    """Best total gain of every *served set* ``X``: ``max_{G >= X} sum_{t in X} gain(G, t)``.

    Choosing at most ``b`` networks and serving each task by its best one is equivalent to
    partitioning the tasks into at most ``b`` served sets ``X`` and giving each the best
    network containing it, so these values turn selection into weighted set partitioning.
    Every ``(G, X subset of G)`` pair is visited once (``3^n`` pairs), vectorised per size.

    Returns:
      ``(values, pairs)``: ``values[X]`` indexed by bitmask (``-inf`` when no allowed
      network serves ``X``; index 0 unused) and the number of pairs visited.
    """
    n = problem.n
    values = np.full(1 << n, -np.inf)
    pairs = 0
    min_size = 1 if problem.single_gain is not None else 2
    for size in range(min_size, n + 1):
        masks = group_masks(n, min_size=size, max_size=size)
        # Process in chunks of groups to bound memory (chunk * 2^size entries).
        chunk = max(1, (1 << 22) >> size)
        for start in range(0, masks.size, chunk):
            part = masks[start:start + chunk]
            members, gains = gain_table(problem, part)
            index = np.nonzero(members)[1].reshape(part.size, size)
            local = np.take_along_axis(gains, index, axis=1)  # [chunk, size]
            bits = np.left_shift(np.int64(1), index)
            sub_sum = np.zeros((part.size, 1))
            sub_mask = np.zeros((part.size, 1), dtype=np.int64)
            for j in range(size):
                sub_sum = np.concatenate([sub_sum, sub_sum + local[:, j:j + 1]], axis=1)
                sub_mask = np.concatenate([sub_mask, sub_mask | bits[:, j:j + 1]], axis=1)
            np.maximum.at(values, sub_mask[:, 1:].ravel(), sub_sum[:, 1:].ravel())
            pairs += sub_sum.size - part.size
    return values, pairs


def best_network_for(problem: problem_lib.SelectionProblem, served: int) -> int:
    """The network that best serves the set ``served`` (ties: smaller, then lower bitmask)."""
    n = problem.n
    if n > MAX_ENUMERATED_TASKS:
        raise ValueError(f"best_network_for enumerates groups; n={n} is too large.")
    masks = group_masks(n)
    masks = masks[(masks & served) == served]
    _, gains = gain_table(problem, masks)
    idx = np.array(problem_lib.mask_members(served, n))
    totals = gains[:, idx].sum(axis=1)
    return int(masks[int(np.argmax(totals))])


def combinations_count(groups: int, budget: int) -> int:
    """Number of ways to pick between 1 and ``budget`` of ``groups`` candidates."""
    total = 0
    for k in range(1, budget + 1):
        total += math.comb(groups, k) if k <= groups else 0
    return total
