"""Is a chosen grouping real or noise? A bootstrap over the affinities' uncertainty.

Each resample is a plausible affinity matrix, drawn in one of two ways (:class:`Uncertainty`):

* **block bootstrap**: the recorded blocks (epochs, blocks of K recorded steps, or pooled
  runs) are drawn with replacement and averaged with their counts as weights. Whole block
  matrices are drawn, so correlations between cells are kept; blocks are treated as
  independent (batch means, see :mod:`tag_tf.stats.uncertainty`).
* **normal draws**: when only the mean and its standard error are known, every
  off-diagonal cell is drawn independently from ``N(mean, stderr^2)`` (ignores the
  correlation between cells).

Every resample is solved exactly (subset DP) for every budget. Per budget we report:

* ``stability``: fraction of resamples whose optimal selection equals the point estimate's;
* a percentile confidence interval of the chosen selection's objective over resamples;
* the best alternative: the most frequent other optimal selection over resamples, or, when
  no resample chose another one, the runner-up on the point estimate (exact: the best
  selection whose served-set partition differs, found by re-solving with each chosen served
  set forbidden);
* its ``margin``: the point-estimate difference of objectives (chosen minus alternative,
  positive = chosen better) divided by the bootstrap standard deviation of that difference;
* a verdict: ``"robust"`` when ``stability >= ROBUST_STABILITY`` (0.8) and
  ``margin >= ROBUST_MARGIN`` (2 SE); ``"forced"`` when the budget allows only one
  selection (b = 1: one network holding every task); otherwise ``"within noise"``.

Thresholds: 2 SE is the usual ~95 % two-sided level for "this difference is not noise";
80 % stability asks that a re-run would most likely pick the same grouping.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
from typing import Any, Sequence

import numpy as np

from tag_tf.io import affinity_io
from tag_tf.selection import problem as problem_lib
from tag_tf.selection import result as result_lib
from tag_tf.selection import scoring
from tag_tf.selection import subset_dp

ROBUST_STABILITY = 0.8
ROBUST_MARGIN = 2.0
# Below this many blocks a block bootstrap is coarse; from_record then prefers normal draws.
MIN_BOOTSTRAP_BLOCKS = 5
# Largest n the bootstrap accepts (it solves every resample with the exact DP).
MAX_BOOTSTRAP_TASKS = 14

ROBUST, WITHIN_NOISE, FORCED = "robust", "within noise", "forced"


@dataclasses.dataclass(frozen=True)
class Uncertainty:
    """What is known about the affinities' noise, and how many resamples to draw.

    Give either ``block_means`` (``[B, n, n]``, B >= 2; optional ``block_counts`` as
    weights, default equal) for a block bootstrap, or ``mean`` and ``stderr`` (``[n, n]``)
    for normal draws.

    Attributes:
      block_means, block_counts: per-block mean matrices and their value counts.
      mean, stderr: point estimate and its standard error.
      n_resamples: number of resamples (each solved exactly for every budget).
      seed: seed of ``numpy.random.default_rng``; same seed, same result.
      confidence: level of the objective's confidence interval.
      label: where the uncertainty came from (reported).
    """

    block_means: np.ndarray | None = None
    block_counts: np.ndarray | None = None
    mean: np.ndarray | None = None
    stderr: np.ndarray | None = None
    n_resamples: int = 200
    seed: int = 0
    confidence: float = 0.95
    label: str = ""

    def __post_init__(self):
        if (self.block_means is None) == (self.stderr is None):
            raise ValueError("Uncertainty needs either block_means (block bootstrap) or "
                             "mean and stderr (normal draws), not both or neither.")
        if isinstance(self.n_resamples, bool) or int(self.n_resamples) < 2:
            raise ValueError(f"n_resamples must be at least 2. Received: {self.n_resamples!r}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1). Received: {self.confidence!r}")
        if self.block_means is not None:
            means = np.asarray(self.block_means, dtype=np.float64)
            if means.ndim != 3 or means.shape[1] != means.shape[2] or means.shape[0] < 2:
                raise ValueError("block_means must be [blocks, n, n] with at least 2 blocks. "
                                 f"Received shape {means.shape}.")
            if self.block_counts is not None and np.shape(self.block_counts) != means.shape:
                raise ValueError(f"block_counts must match block_means {means.shape}. "
                                 f"Received shape {np.shape(self.block_counts)}.")
        elif self.mean is None or np.shape(self.mean) != np.shape(self.stderr):
            raise ValueError("Normal draws need mean and stderr of the same shape. Received "
                             f"{np.shape(self.mean)} and {np.shape(self.stderr)}.")
        else:
            unknown = _unknown_stderr(self.mean, self.stderr)
            if unknown:
                raise ValueError(
                    f"stderr is unknown (NaN or infinite) for {len(unknown)} off-diagonal "
                    f"cell(s) with a finite mean, e.g. [source, target] = {unknown[:3]}; a "
                    "missing error is not an exact value. Record at least 2 blocks (epochs, "
                    "or AffinityConfig(stderr_block=K)) or pool runs.")

    @property
    def n(self) -> int:
        return int(np.shape(self.block_means if self.block_means is not None else self.mean)[-1])

    @property
    def source(self) -> str:
        if self.block_means is not None:
            kind = f"block bootstrap over {np.shape(self.block_means)[0]} blocks"
        else:
            kind = "normal draws from mean and stderr"
        return f"{kind} ({self.label})" if self.label else kind

    @classmethod
    def from_record(cls, record: affinity_io.AffinityRecord, *, n_resamples: int = 200,
                    seed: int = 0, confidence: float = 0.95) -> "Uncertainty":
        """Picks the best information in an affinity record.

        In order: its ``block_means`` (pooled runs or recorded blocks) when there are at
        least ``MIN_BOOTSTRAP_BLOCKS``; else its per-epoch trace (one block per epoch) under
        the same condition; else normal draws from its ``stderr``; else whichever blocks
        it has (at least 2).

        Raises:
          ValueError: when the record has no blocks, no epochs trace of 2+ epochs and no
            standard errors.
        """
        options = []
        if record.block_means is not None and len(record.block_means) >= 2:
            options.append((len(record.block_means), dict(
                block_means=np.asarray(record.block_means, dtype=np.float64),
                block_counts=record.block_counts, label=record.stderr_method or "blocks")))
        epochs = record.epochs or []
        if len(epochs) >= 2:
            means = np.stack([_matrix(e["affinity"]) for e in epochs])
            counts = (np.stack([_matrix(e["counts"]) for e in epochs])
                      if all(e.get("counts") is not None for e in epochs) else None)
            options.append((len(epochs), dict(block_means=means, block_counts=counts,
                                              label="one block per epoch")))
        common = dict(n_resamples=n_resamples, seed=seed, confidence=confidence)
        for blocks, kwargs in options:
            if blocks >= MIN_BOOTSTRAP_BLOCKS:
                return cls(**kwargs, **common)
        if record.stderr is not None and not _unknown_stderr(record.affinity, record.stderr):
            return cls(mean=np.asarray(record.affinity, dtype=np.float64),
                       stderr=np.asarray(record.stderr, dtype=np.float64),
                       label=record.stderr_method or "stderr", **common)
        if options:
            return cls(**options[0][1], **common)
        raise ValueError(
            "No uncertainty information in the affinity record: it has no block means, no "
            "epochs trace with at least 2 epochs and no stderr matrix known for every "
            "off-diagonal cell. Record more epochs (or blocks), or pool runs from several "
            "seeds.")

    def resamples(self, point: np.ndarray) -> list[np.ndarray]:
        """The resampled matrices, deterministic given ``seed`` (NaN cells take ``point``)."""
        rng = np.random.default_rng(self.seed)
        point = np.asarray(point, dtype=np.float64)
        out = []
        if self.block_means is not None:
            means = np.asarray(self.block_means, dtype=np.float64)
            counts = (np.isfinite(means).astype(np.float64) if self.block_counts is None
                      else np.asarray(self.block_counts, dtype=np.float64))
            weights = np.where(np.isfinite(means) & (counts > 0), counts, 0.0)
            weighted = np.where(weights > 0, means, 0.0) * weights
            blocks = means.shape[0]
            for _ in range(int(self.n_resamples)):
                draws = np.bincount(rng.integers(0, blocks, size=blocks), minlength=blocks)
                total = np.tensordot(draws, weights, axes=1)
                with np.errstate(invalid="ignore", divide="ignore"):
                    matrix = np.tensordot(draws, weighted, axes=1) / total
                out.append(np.where(total > 0, matrix, point))
        else:
            stderr = np.asarray(self.stderr, dtype=np.float64)
            for _ in range(int(self.n_resamples)):
                noise = rng.standard_normal(point.shape)
                out.append(np.where(np.isfinite(stderr), point + stderr * noise, point))
        return out


def _unknown_stderr(mean: Any, stderr: Any) -> list[tuple[int, int]]:
    """Off-diagonal cells with a finite mean but no finite standard error."""
    mean = np.asarray(mean, dtype=np.float64)
    stderr = np.asarray(stderr, dtype=np.float64)
    bad = np.isfinite(mean) & ~np.isfinite(stderr)
    np.fill_diagonal(bad, False)
    return [(int(i), int(j)) for i, j in zip(*np.nonzero(bad))]


def _matrix(rows: Any) -> np.ndarray:
    return affinity_io.decode_matrix(rows)


def _masks(selection: result_lib.Selection) -> tuple[int, ...]:
    index = {t: i for i, t in enumerate(selection.tasks)}
    return tuple(sorted((sum(1 << index[t] for t in net.tasks) for net in selection.networks),
                        key=lambda m: problem_lib.mask_members(m, len(selection.tasks))))


def _total(problem: problem_lib.SelectionProblem, masks: Sequence[int]) -> float:
    """Total gain (maximised form) of a set of networks, each task served by its best."""
    return float(problem_lib.canonicalize(problem, masks)[2].sum())


@functools.lru_cache(maxsize=4)
def _structure(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-``n`` tables reused by every resample: all groups, and the DP's ``(X, R)`` pairs."""
    pairs = list(subset_dp.pair_chunks(n))
    x = np.concatenate([p[0] for p in pairs]) if pairs else np.zeros(0, np.int64)
    r = np.concatenate([p[1] for p in pairs]) if pairs else np.zeros(0, np.int64)
    return scoring.group_masks(n), x, r


def _solve_all(problem: problem_lib.SelectionProblem,
               budgets: Sequence[int]) -> dict[int, tuple[int, ...]]:
    """Optimal network masks (canonical) for every budget, sharing the DP tables.

    The same recursion and tie-breaking as :mod:`subset_dp` (whose top-level walk is
    reused), with the pair tables computed once per ``n``.
    """
    n = problem.n
    groups, x, r = _structure(n)
    values, _ = scoring.block_values(problem)
    levels = [values.copy()]
    for _ in range(2, max(budgets)):
        current = levels[-1].copy()
        np.maximum.at(current, x | r, values[x] + levels[-1][r])
        levels.append(current)
    _, gains = scoring.gain_table(problem, groups)
    full = (1 << n) - 1
    out = {}
    for b in budgets:
        _, served_sets = subset_dp.best_served_sets(values, levels, full, b)
        masks = []
        for served in served_sets:
            rows = np.nonzero((groups & served) == served)[0]
            totals = gains[np.ix_(rows, problem_lib.mask_members(served, n))].sum(axis=1)
            masks.append(int(groups[rows[int(np.argmax(totals))]]))  # ties: smaller, lower
        out[b] = problem_lib.canonicalize(problem, masks)[0]
    return out


def _runner_up(problem: problem_lib.SelectionProblem,
               selection: result_lib.Selection) -> tuple[int, ...] | None:
    """Best selection (on ``problem``) other than ``selection``; ``None`` if there is none.

    Another selection either serves the tasks in another partition into served sets (then
    it lacks at least one chosen served set ``X_i``: the best of "re-solve with ``X_i``
    forbidden" covers it), or in the same partition with at least one network swapped
    (the best of those swaps one served set to its second-best network). The better of
    the two kinds is the exact runner-up (up to ties).
    """
    n = problem.n
    chosen = _masks(selection)
    served_sets = [sum(1 << t for t in range(n) if selection.served_by[t] == k)
                   for k in range(len(selection.networks))]
    candidates = []
    values, _ = scoring.block_values(problem)
    for x in served_sets:
        forbidden = values.copy()
        forbidden[x] = -np.inf
        try:
            other = subset_dp.solve_problem_subset_dp(problem, selection.budget,
                                                      values=forbidden)
        except ValueError:  # no other partition is feasible under this budget
            continue
        candidates.append(_masks(other))
    groups, _, _ = _structure(n)
    _, gains = scoring.gain_table(problem, groups)
    for k, x in enumerate(served_sets):
        rows = np.nonzero((groups & x) == x)[0]
        totals = gains[np.ix_(rows, problem_lib.mask_members(x, n))].sum(axis=1)
        for pos in np.argsort(-totals, kind="stable"):  # best first; ties: smaller, lower
            mask = int(groups[rows[pos]])
            if not np.isfinite(totals[pos]):
                break
            if mask != chosen[k]:
                swapped = list(chosen[:k]) + [mask] + list(chosen[k + 1:])
                candidates.append(problem_lib.canonicalize(problem, swapped)[0])
                break
    best, best_key = None, None
    for masks in candidates:
        if masks == chosen:
            continue
        key = (_total(problem, masks), [-m for m in masks])
        if best_key is None or key > best_key:
            best, best_key = masks, key
    return best


def assess(affinity: Any, selections: Sequence[result_lib.Selection],
           uncertainty: Uncertainty, *, tasks: Sequence[str] | None = None,
           minimize: bool = False,
           singletons: problem_lib.Singletons = None) -> list[result_lib.Selection]:
    """Adds a :class:`Robustness` to every selection (see the module docstring).

    Args:
      affinity: the point-estimate ``[source, target]`` matrix the selections were solved on.
      selections: one per budget (any solver; compared by their networks).
      uncertainty: how to resample the affinities.
      tasks, minimize, singletons: as for :func:`select_networks`. With
        ``singletons="diagonal"`` the diagonal is resampled too; given scores stay fixed.

    Returns:
      The selections with ``robustness`` set, in the same order.
    """
    problem = problem_lib.make_problem(affinity, tasks=tasks, minimize=minimize,
                                       singletons=singletons)
    n = problem.n
    if uncertainty.n != n:
        raise ValueError(f"The uncertainty is for {uncertainty.n} tasks but the affinity "
                         f"matrix has {n}.")
    if n > MAX_BOOTSTRAP_TASKS:
        raise ValueError(f"The bootstrap solves every resample exactly and is limited to "
                         f"{MAX_BOOTSTRAP_TASKS} tasks. Received: n={n}")
    budgets = sorted({s.budget for s in selections})
    problems, choices = [], collections.defaultdict(list)
    for matrix in uncertainty.resamples(np.asarray(affinity, dtype=np.float64)):
        resample = problem_lib.make_problem(matrix, tasks=problem.tasks, minimize=minimize,
                                            singletons=singletons)
        problems.append(resample)
        for b, masks in _solve_all(resample, budgets).items():
            choices[b].append(masks)
    return [_assess_one(problem, s, problems, choices[s.budget], uncertainty)
            for s in selections]


def _assess_one(problem, selection, problems, choices, uncertainty) -> result_lib.Selection:
    n, sign = problem.n, problem.sign
    chosen = _masks(selection)
    frequency = collections.Counter(choices)
    stability = frequency[chosen] / len(choices)
    others = [(count, _total(problem, masks), masks) for masks, count in frequency.items()
              if masks != chosen]
    if others:
        count, _, alternative = max(others, key=lambda o: (o[0], o[1], [-m for m in o[2]]))
        alt_source, alt_frequency = "most frequent other selection", count / len(choices)
    else:
        alternative = _runner_up(problem, selection)
        alt_source, alt_frequency = "runner-up on the point estimate", 0.0
    objectives = np.array([sign * _total(p, chosen) / n for p in problems])
    alpha = 1.0 - uncertainty.confidence
    low, high = np.quantile(objectives, [alpha / 2, 1 - alpha / 2])
    objective_se = float(np.std(objectives, ddof=1))
    if alternative is None:
        alt_names, alt_objective = None, math.nan
        difference = difference_se = margin = math.nan
        verdict = FORCED
        advice = "Only one selection is feasible under this budget; noise cannot change it."
    else:
        alt_names = tuple(tuple(problem.tasks[t] for t in problem_lib.mask_members(m, n))
                          for m in alternative)
        alt_objective = sign * _total(problem, alternative) / n
        difference = (_total(problem, chosen) - _total(problem, alternative)) / n
        diffs = np.array([(_total(p, chosen) - _total(p, alternative)) / n for p in problems])
        difference_se = float(np.std(diffs, ddof=1))
        if difference_se > 0:
            margin = difference / difference_se
        else:
            margin = math.inf if difference > 0 else (0.0 if difference == 0 else -math.inf)
        robust = stability >= ROBUST_STABILITY and margin >= ROBUST_MARGIN
        verdict = ROBUST if robust else WITHIN_NOISE
        advice = _advice(verdict, stability, margin, uncertainty)
    robustness = result_lib.Robustness(
        resamples=len(problems), seed=int(uncertainty.seed), source=uncertainty.source,
        stability=float(stability), confidence=float(uncertainty.confidence),
        objective_ci=(float(low), float(high)), objective_se=objective_se,
        alternative=alt_names, alternative_source=alt_source,
        alternative_frequency=float(alt_frequency), alternative_objective=float(alt_objective),
        difference=float(difference), difference_se=float(difference_se), margin=float(margin),
        verdict=verdict, advice=advice)
    return selection._replace(robustness=robustness)


def _advice(verdict: str, stability: float, margin: float, uncertainty: Uncertainty) -> str:
    if verdict == ROBUST:
        return (f"The grouping stands out from the noise (chosen in {stability:.0%} of "
                f"resamples, {margin:.1f} SE ahead of the alternative).")
    pooled = "run" in uncertainty.label
    more = "pool more seeds" if pooled else "record more steps or pool runs from other seeds"
    if margin > 0.5 and math.isfinite(margin):
        factor = (ROBUST_MARGIN / margin) ** 2
        return (f"Not yet distinguishable from the alternative: {more}. If the difference "
                f"is real, about {factor:.1f}x the data would make it {ROBUST_MARGIN:g} SE "
                "(the SE shrinks like 1/sqrt(data)).")
    return (f"The alternative is about as good ({margin:.1f} SE): the choice between them is "
            f"noise. Either is defensible; to decide, {more}.")
