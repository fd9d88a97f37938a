"""Is a chosen grouping real or noise? A bootstrap over the affinities' uncertainty.

A verdict names its evidence. One training run (one seed) only shows how the affinities
vary from batch to batch *within that run*; it cannot show how a re-run with another seed
(initialisation, data order) would differ, and on real data that seed-to-seed spread is
usually the larger one. So:

* from **one run** the best verdict is ``"stable within this run"``;
* ``"robust"`` (a re-run with another seed would most likely pick the same grouping) needs
  **at least 2 independent runs** pooled (:func:`tag_tf.io.affinity_io.pool_records`:
  ``--seeds=K`` on the pipelines and the demo, or several files to
  ``python -m tag_tf.select --affinity=a.json,b.json,c.json``).

Every :class:`~tag_tf.selection.result.Robustness` records its evidence explicitly:
``runs`` (independent trainings behind the resampling) and ``evidence``
(:data:`WITHIN_RUN` or :data:`ACROSS_RUNS`).

Each resample is a plausible affinity matrix, drawn in one of these ways
(:class:`Uncertainty`):

* **block bootstrap** (one run): the recorded blocks (epochs, or blocks of K recorded
  steps) are drawn with replacement and averaged with their counts as weights. Whole block
  matrices are drawn, so correlations between cells are kept; blocks are treated as
  independent (batch means, see :mod:`tag_tf.stats.uncertainty`).
* **normal draws**: when only the mean and its standard error are known, every
  off-diagonal cell is drawn independently from ``N(mean, stderr^2)`` (ignores the
  correlation between cells). With ``runs = K >= 2`` (a between-run standard error) the
  draws are Student-t with ``K - 1`` degrees of freedom (one shared scale
  ``sqrt((K - 1) / chi2_{K-1})`` per resample).
* **between runs** (``K >= 2`` pooled runs, their run means): with ``K >= 5`` the runs
  are drawn with replacement; with few runs (``2 <= K <= 4``, :data:`MAX_T_RUNS`) a
  bootstrap of runs is too narrow (2 runs give 3 distinct resamples), so each resample is
  ``mean + T * D`` where ``D = sum_k g_k (run_k - mean) / sqrt(K (K - 1))`` (``g_k``
  standard normal: the covariance of ``D`` is the runs' sample covariance of the mean, so
  cells keep their correlation) and ``T = sqrt((K - 1) / chi2_{K-1})``: a multivariate
  Student-t with ``K - 1`` degrees of freedom. Any linear function of the matrix (an
  objective difference for fixed networks) is then drawn exactly as its Student-t
  interval from the K runs.
* **two-stage** (pooled runs that also carry their own blocks, ``run_blocks``): the
  between-run draw above, then, for every run in the resample (every drawn copy with
  ``K >= 5``), a bootstrap of that run's blocks adds its within-run deviation. Both noise
  sources are then in the interval and the margin; the within-run part is also inside the
  spread of the run means, so two-stage is slightly conservative (Davison & Hinkley 1997,
  Sec. 3.8).

Every resample is solved exactly (subset DP) for every budget. Per budget we report:

* ``stability``: fraction of resamples whose optimal selection equals the point estimate's;
* a percentile confidence interval of the chosen selection's objective over resamples;
* the best alternative: the most frequent other optimal selection over resamples, or, when
  no resample chose another one, the runner-up on the point estimate (exact: the best
  selection whose served-set partition differs, found by re-solving with each chosen served
  set forbidden);
* its ``margin``: the point-estimate difference of objectives (chosen minus alternative,
  positive = chosen better) divided by the resampled standard deviation of that difference
  (with Student-t draws: of the same resamples with ``T = 1``, whose spread is finite);
* a verdict:

  - ``"forced"`` when the budget allows only one selection (b = 1: one network of every
    task);
  - else, when ``stability >= ROBUST_STABILITY`` (0.8) and ``margin >=``
    :func:`required_margin`: ``"robust"`` from ``runs >= 2``, ``"stable within this
    run"`` from one run;
  - otherwise ``"within noise"``.

Thresholds: 2 SE is the usual ~95 % two-sided level for "this difference is not noise";
from K runs the standard error itself rests on ``K - 1`` degrees of freedom, so the margin
must reach the Student-t quantile at the same level (97.7 % one-sided): 13.97, 4.53, 3.31,
2.87 SE for 2, 3, 4, 5 runs, tending to 2. 80 % stability asks that most resamples pick the
same grouping.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
from typing import Any, Sequence

import numpy as np
from scipy import stats

from tag_tf.io import affinity_io
from tag_tf.selection import problem as problem_lib
from tag_tf.selection import result as result_lib
from tag_tf.selection import scoring
from tag_tf.selection import subset_dp

ROBUST_STABILITY = 0.8
ROBUST_MARGIN = 2.0
# Below this many blocks a block bootstrap is coarse; from_record then prefers normal draws.
# Below this many runs, between-run draws are Student-t instead of a bootstrap of runs.
MIN_BOOTSTRAP_BLOCKS = 5
MAX_T_RUNS = MIN_BOOTSTRAP_BLOCKS - 1
# Largest n the bootstrap accepts (it solves every resample with the exact DP).
MAX_BOOTSTRAP_TASKS = 14

# Verdicts. "robust" needs >= 2 independent runs; one run's best is STABLE_WITHIN_RUN.
ROBUST, STABLE_WITHIN_RUN, WITHIN_NOISE, FORCED = (
    "robust", "stable within this run", "within noise", "forced")
# Evidence behind a verdict (Robustness.evidence).
WITHIN_RUN, ACROSS_RUNS = "within-run", "across-runs"

SEED_ADVICE = ("One run shows only its own batch noise; the seed-to-seed variance is "
               "unknown. Measure it: train K >= 2 seeds (--seeds=K on the pipelines and the "
               "demo) or pool runs (python -m tag_tf.select "
               "--affinity=a.json,b.json,c.json --bootstrap=200).")


def required_margin(runs: int) -> float:
    """Margin (in SE) a selection needs: 2 from one run; from ``K >= 2`` runs, the
    Student-t quantile with ``K - 1`` degrees of freedom at the level of 2 normal SE."""
    if int(runs) < 2:
        return ROBUST_MARGIN
    return float(stats.t.ppf(stats.norm.cdf(ROBUST_MARGIN), int(runs) - 1))


def evidence_of(runs: int) -> str:
    """:data:`ACROSS_RUNS` for ``runs >= 2``, else :data:`WITHIN_RUN`."""
    return ACROSS_RUNS if int(runs) >= 2 else WITHIN_RUN


def _check_blocks(means: Any, counts: Any, what: str) -> tuple[np.ndarray, np.ndarray | None]:
    means = np.asarray(means, dtype=np.float64)
    if means.ndim != 3 or means.shape[1] != means.shape[2] or means.shape[0] < 2:
        raise ValueError(f"{what} must be [blocks, n, n] with at least 2 blocks. "
                         f"Received shape {means.shape}.")
    if counts is not None and np.shape(counts) != means.shape:
        raise ValueError(f"{what} counts must match its means {means.shape}. "
                         f"Received shape {np.shape(counts)}.")
    return means, None if counts is None else np.asarray(counts, dtype=np.float64)


def _weights(means: np.ndarray, counts: np.ndarray | None) -> np.ndarray:
    """Per-block weights: the counts (default 1) where the mean is finite, else 0."""
    counts = np.isfinite(means).astype(np.float64) if counts is None else counts
    return np.where(np.isfinite(means) & (counts > 0), counts, 0.0)


@dataclasses.dataclass(frozen=True)
class Uncertainty:
    """What is known about the affinities' noise, and how many resamples to draw.

    Give exactly one of:

    * ``block_means`` (``[B, n, n]``, B >= 2; optional ``block_counts`` as weights,
      default equal): a block bootstrap within one run;
    * ``mean`` and ``stderr`` (``[n, n]``): normal draws (Student-t with ``runs - 1``
      degrees of freedom when ``runs >= 2``, i.e. a between-run standard error);
    * ``run_means`` (``[K, n, n]``, K >= 2 independent runs, e.g. ``pool_records``'
      ``block_means``), optionally with ``run_blocks`` (per run ``(means [B_k, n, n],
      counts or None)``, B_k >= 2) for the two-stage bootstrap. ``runs`` is then K.

    Attributes:
      block_means, block_counts: per-block mean matrices and their value counts.
      mean, stderr: point estimate and its standard error.
      run_means, run_blocks: the runs' mean matrices and (optionally) each run's blocks.
      runs: independent trainings (seeds) the uncertainty covers: the evidence. ``None``
        means 1, or K with ``run_means``. A block bootstrap is always one run.
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
    run_means: np.ndarray | None = None
    run_blocks: Sequence[tuple[np.ndarray, np.ndarray | None]] | None = None
    runs: int | None = None

    def __post_init__(self):
        given = [self.block_means is not None, self.stderr is not None or self.mean is not None,
                 self.run_means is not None]
        if sum(given) != 1:
            raise ValueError("Uncertainty needs either block_means (block bootstrap) or "
                             "mean and stderr (normal draws) or run_means (runs), not "
                             "several or none.")
        if isinstance(self.n_resamples, bool) or int(self.n_resamples) < 2:
            raise ValueError(f"n_resamples must be at least 2. Received: {self.n_resamples!r}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1). Received: {self.confidence!r}")
        runs = self.runs
        if runs is not None and (isinstance(runs, bool) or not isinstance(
                runs, (int, np.integer)) or runs < 1):
            raise ValueError(f"runs must be an integer >= 1. Received: runs={runs!r}")
        if self.block_means is not None:
            _check_blocks(self.block_means, self.block_counts, "block_means")
            if runs not in (None, 1):
                raise ValueError(
                    "A block bootstrap covers one run; for several runs give their means as "
                    f"run_means (and their blocks as run_blocks). Received: runs={runs}")
            runs = 1
        elif self.run_means is not None:
            means = np.asarray(self.run_means, dtype=np.float64)
            if means.ndim != 3 or means.shape[1] != means.shape[2] or means.shape[0] < 2:
                raise ValueError("run_means must be [runs, n, n] with at least 2 runs. "
                                 f"Received shape {means.shape}.")
            if runs not in (None, means.shape[0]):
                raise ValueError(f"run_means holds {means.shape[0]} runs. Received: "
                                 f"runs={runs}")
            runs = means.shape[0]
            if self.run_blocks is not None:
                if len(self.run_blocks) != runs:
                    raise ValueError(f"run_blocks must give the blocks of each of the {runs} "
                                     f"runs. Received: {len(self.run_blocks)}")
                for k, (blocks, counts) in enumerate(self.run_blocks):
                    blocks, _ = _check_blocks(blocks, counts, f"run_blocks[{k}]")
                    if blocks.shape[1:] != means.shape[1:]:
                        raise ValueError(f"run_blocks[{k}] is for {blocks.shape[1]} tasks, "
                                         f"run_means for {means.shape[1]}.")
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
        if self.run_means is None and self.run_blocks is not None:
            raise ValueError("run_blocks are the blocks of pooled runs: give run_means too.")
        object.__setattr__(self, "runs", int(runs or 1))

    @property
    def n(self) -> int:
        for array in (self.block_means, self.run_means, self.mean):
            if array is not None:
                return int(np.shape(array)[-1])
        raise AssertionError("unreachable")

    @property
    def evidence(self) -> str:
        """:data:`ACROSS_RUNS` from 2+ independent runs, else :data:`WITHIN_RUN`."""
        return evidence_of(self.runs)

    @property
    def student_t(self) -> bool:
        """Whether between-run draws are Student-t (``runs - 1`` degrees of freedom)."""
        if self.runs < 2:
            return False
        return self.run_means is None or self.runs <= MAX_T_RUNS

    @property
    def source(self) -> str:
        k = self.runs
        if self.block_means is not None:
            kind = f"block bootstrap over {np.shape(self.block_means)[0]} blocks"
        elif self.run_means is not None:
            between = (f"Student-t draws ({k - 1} df) from the spread of {k} runs"
                       if self.student_t else f"bootstrap over {k} runs")
            if self.run_blocks is not None:
                sizes = sorted(len(b) for b, _ in self.run_blocks)
                per_run = (f"{sizes[0]}" if sizes[0] == sizes[-1]
                           else f"{sizes[0]}-{sizes[-1]}")
                kind = (f"two-stage: {between}, then {per_run} blocks within each run")
            else:
                kind = between
        elif k >= 2:
            kind = f"Student-t draws ({k - 1} df) from mean and stderr of {k} runs"
        else:
            kind = "normal draws from mean and stderr"
        return f"{kind} ({self.label})" if self.label else kind

    @classmethod
    def from_record(cls, record: affinity_io.AffinityRecord, *, n_resamples: int = 200,
                    seed: int = 0, confidence: float = 0.95) -> "Uncertainty":
        """Picks the best information in an affinity record.

        A pooled record (``record.runs >= 2``): its run means (``block_means``) with each
        run's blocks (``run_blocks``, two-stage) when it has them, else Student-t draws
        from its between-run ``stderr``. One run, in order: its ``block_means`` (recorded
        blocks) when there are at least ``MIN_BOOTSTRAP_BLOCKS``; else its per-epoch trace
        (one block per epoch) under the same condition; else normal draws from its
        ``stderr``; else whichever blocks it has (at least 2).

        Raises:
          ValueError: when the record has no blocks, no epochs trace of 2+ epochs and no
            standard errors.
        """
        common = dict(n_resamples=n_resamples, seed=seed, confidence=confidence)
        if record.runs >= 2:
            means = record.block_means
            if means is not None and len(means) == record.runs:
                return cls(run_means=np.asarray(means, dtype=np.float64),
                           run_blocks=record.run_blocks, label="between-runs", **common)
            if record.stderr is not None and not _unknown_stderr(record.affinity,
                                                                 record.stderr):
                return cls(mean=np.asarray(record.affinity, dtype=np.float64),
                           stderr=np.asarray(record.stderr, dtype=np.float64),
                           runs=record.runs, label="between-runs", **common)
            raise ValueError(
                f"The pooled affinity record ({record.runs} runs) has neither the runs' "
                "matrices (block_means) nor a between-run stderr known for every "
                "off-diagonal cell. Pool the runs' files again with "
                "tag_tf.io.affinity_io.pool_records.")
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
        return [matrix for matrix, _ in self.draws(point)]

    def draws(self, point: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(resample, finite-spread twin)`` pairs, deterministic given ``seed``.

        The twin is the same draw with the Student-t scale ``T`` set to 1 (a normal draw
        with the same covariance); without Student-t draws it is the resample itself.
        Standard errors are taken over the twins: a t with 1 or 2 degrees of freedom has
        no finite variance.
        """
        rng = np.random.default_rng(self.seed)
        point = np.asarray(point, dtype=np.float64)
        out = []
        if self.block_means is not None:
            means = np.asarray(self.block_means, dtype=np.float64)
            weights = _weights(means, None if self.block_counts is None
                               else np.asarray(self.block_counts, dtype=np.float64))
            for _ in range(int(self.n_resamples)):
                matrix = _block_resample(rng, means, weights, point)
                out.append((matrix, matrix))
        elif self.run_means is not None:
            out = self._run_draws(rng, point)
        else:
            stderr = np.asarray(self.stderr, dtype=np.float64)
            df = self.runs - 1
            for _ in range(int(self.n_resamples)):
                noise = rng.standard_normal(point.shape)
                scale = math.sqrt(df / rng.chisquare(df)) if df >= 1 else 1.0
                known = np.isfinite(stderr)
                out.append((np.where(known, point + scale * stderr * noise, point),
                            np.where(known, point + stderr * noise, point)))
        return out

    def _run_draws(self, rng, point):
        """Between-run (and, with ``run_blocks``, two-stage) draws; see the module doc."""
        means = np.asarray(self.run_means, dtype=np.float64)
        k = means.shape[0]
        finite = np.isfinite(means)
        within = None
        if self.run_blocks is not None:
            within = []
            for blocks, counts in self.run_blocks:
                blocks = np.asarray(blocks, dtype=np.float64)
                weights = _weights(blocks, None if counts is None
                                   else np.asarray(counts, dtype=np.float64))
                within.append((blocks, weights, _weighted_mean(blocks, weights)))

        def deviation(run):  # one bootstrap of run's blocks, minus their full mean
            blocks, weights, full = within[run]
            return np.nan_to_num(_block_resample(rng, blocks, weights, full) - full)

        out = []
        if not self.student_t:  # K >= 5: draw runs with replacement (then their blocks)
            weights = _weights(means, None)
            for _ in range(int(self.n_resamples)):
                if within is None:
                    matrix = _block_resample(rng, means, weights, point)
                else:
                    drawn = rng.integers(0, k, size=k)
                    values = np.stack([means[j] + deviation(j) for j in drawn])
                    matrix = _weighted_mean(values, weights[drawn], fallback=point)
                out.append((matrix, matrix))
            return out
        count = finite.sum(axis=0)
        centre = _weighted_mean(means, finite.astype(np.float64), fallback=point)
        deviations = np.where(finite, means - centre, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = np.where(count >= 2, 1.0 / np.sqrt(count * np.maximum(count - 1, 1)), 0.0)
        for _ in range(int(self.n_resamples)):
            between = np.tensordot(rng.standard_normal(k), deviations, axes=1) * scale
            t_scale = math.sqrt((k - 1) / rng.chisquare(k - 1))
            inner = 0.0
            if within is not None:
                inner = sum(np.where(finite[j], deviation(j), 0.0) for j in range(k))
                inner = np.where(count > 0, inner / np.maximum(count, 1), 0.0)
            out.append((point + t_scale * between + inner, point + between + inner))
        return out


def _weighted_mean(values: np.ndarray, weights: np.ndarray,
                   fallback: np.ndarray | None = None) -> np.ndarray:
    """Per-cell weighted mean of ``values`` ``[B, n, n]``; ``fallback`` (or NaN) where
    every weight is 0."""
    total = weights.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (np.where(weights > 0, values, 0.0) * weights).sum(axis=0) / total
    return np.where(total > 0, mean, np.nan if fallback is None else fallback)


def _block_resample(rng, means: np.ndarray, weights: np.ndarray,
                    point: np.ndarray) -> np.ndarray:
    """One bootstrap of whole blocks, averaged with their weights (``point`` where empty)."""
    blocks = means.shape[0]
    weighted = np.where(weights > 0, means, 0.0) * weights
    draws = np.bincount(rng.integers(0, blocks, size=blocks), minlength=blocks)
    total = np.tensordot(draws, weights, axes=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        matrix = np.tensordot(draws, weighted, axes=1) / total
    return np.where(total > 0, matrix, point)


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
      uncertainty: how to resample the affinities (and how many runs that covers).
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
    problems, twins, choices = [], [], collections.defaultdict(list)
    for matrix, twin in uncertainty.draws(np.asarray(affinity, dtype=np.float64)):
        resample = problem_lib.make_problem(matrix, tasks=problem.tasks, minimize=minimize,
                                            singletons=singletons)
        problems.append(resample)
        twins.append(resample if twin is matrix else problem_lib.make_problem(
            twin, tasks=problem.tasks, minimize=minimize, singletons=singletons))
        for b, masks in _solve_all(resample, budgets).items():
            choices[b].append(masks)
    return [_assess_one(problem, s, problems, twins, choices[s.budget], uncertainty)
            for s in selections]


def _assess_one(problem, selection, problems, twins, choices,
                uncertainty) -> result_lib.Selection:
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
    objective_se = float(np.std([sign * _total(p, chosen) / n for p in twins], ddof=1))
    runs, needed = uncertainty.runs, required_margin(uncertainty.runs)
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
        diffs = np.array([(_total(p, chosen) - _total(p, alternative)) / n for p in twins])
        difference_se = float(np.std(diffs, ddof=1))
        if difference_se > 0:
            margin = difference / difference_se
        else:
            margin = math.inf if difference > 0 else (0.0 if difference == 0 else -math.inf)
        if stability >= ROBUST_STABILITY and margin >= needed:
            verdict = ROBUST if runs >= 2 else STABLE_WITHIN_RUN
        else:
            verdict = WITHIN_NOISE
        advice = _advice(verdict, stability, margin, uncertainty)
    if runs < 2:
        advice = f"{advice} {SEED_ADVICE}"
    robustness = result_lib.Robustness(
        resamples=len(problems), seed=int(uncertainty.seed), source=uncertainty.source,
        stability=float(stability), confidence=float(uncertainty.confidence),
        objective_ci=(float(low), float(high)), objective_se=objective_se,
        alternative=alt_names, alternative_source=alt_source,
        alternative_frequency=float(alt_frequency), alternative_objective=float(alt_objective),
        difference=float(difference), difference_se=float(difference_se), margin=float(margin),
        verdict=verdict, advice=advice, runs=int(runs), evidence=uncertainty.evidence,
        required_margin=float(needed))
    return selection._replace(robustness=robustness)


def _advice(verdict: str, stability: float, margin: float, uncertainty: Uncertainty) -> str:
    runs, needed = uncertainty.runs, required_margin(uncertainty.runs)
    if verdict == ROBUST:
        return (f"Robust across {runs} independent runs: chosen in {stability:.0%} of "
                f"resamples, {margin:.1f} SE ahead of the alternative (needs "
                f"{needed:.3g} SE with {runs} runs).")
    if verdict == STABLE_WITHIN_RUN:
        return (f"Stable against this run's batch noise (chosen in {stability:.0%} of "
                f"resamples, {margin:.1f} SE ahead of the alternative).")
    more = ("pool more seeds" if runs >= 2
            else "record more steps or pool runs from other seeds")
    if margin > 0.5 and math.isfinite(margin):
        if runs >= 2:
            return (f"Not yet distinguishable from the alternative across {runs} runs "
                    f"({margin:.1f} SE; {needed:.3g} SE needed with {runs} runs, fewer with "
                    f"more runs): {more}.")
        factor = (ROBUST_MARGIN / margin) ** 2
        return (f"Not yet distinguishable from the alternative: {more}. If the difference "
                f"is real, about {factor:.1f}x the data would make it {ROBUST_MARGIN:g} SE "
                "(the SE shrinks like 1/sqrt(data)).")
    return (f"The alternative is about as good ({margin:.1f} SE): the choice between them is "
            f"noise. Either is defensible; to decide, {more}.")


def read_robustness(entry: Any, *, runs: int | None = None) -> dict[str, Any] | None:
    """A ``robustness`` dict from a selection file, in the current verdict words.

    Files written before verdicts named their evidence have no ``runs`` / ``evidence``.
    Their run count is then ``runs`` (what the file says explicitly elsewhere, e.g.
    selection.json's ``pooled_runs`` or results.json's ``pooled_seeds``), else 1; an old
    ``"robust"`` from one run reads :data:`STABLE_WITHIN_RUN` (never cross-seed robust),
    and ``relabelled_from`` keeps the word the file used.

    Returns:
      A new dict with ``verdict``, ``runs`` and ``evidence`` set, or ``None``.
    """
    if not entry:
        return None
    out = dict(entry)
    if out.get("runs") is None:
        out["runs"] = int(runs) if runs else 1
        out["evidence"] = evidence_of(out["runs"])
        if out.get("verdict") == ROBUST and out["runs"] < 2:
            out["verdict"], out["relabelled_from"] = STABLE_WITHIN_RUN, ROBUST
    out.setdefault("evidence", evidence_of(out["runs"]))
    return out


def criterion(runs: int) -> str:
    """The verdict's test in words, for the evidence of ``runs`` independent runs."""
    test = f"stability >= {ROBUST_STABILITY} and margin >= {required_margin(runs):.3g} SE"
    if int(runs) >= 2:
        return (f"{ROBUST} (across {runs} runs) if {test} (Student-t quantile, {runs - 1} "
                "df); else within noise")
    return f"{STABLE_WITHIN_RUN} (one run) if {test}; else within noise"


def evidence_text(runs: int) -> str:
    """What a verdict from ``runs`` independent runs can speak for, in one line."""
    if int(runs) >= 2:
        return (f"{runs} independent runs: the between-run part rests on {runs} runs (margin "
                f"needs {required_margin(runs):.3g} SE)")
    return ("one run: this run's batch noise only; a re-run with another seed may differ "
            "(seed-to-seed variance unknown)")
