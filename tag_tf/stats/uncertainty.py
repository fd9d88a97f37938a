"""Standard errors of mean affinities that respect correlation between recorded steps.

Affinities recorded on nearby steps are correlated (the network changes slowly), so the
naive i.i.d. standard error ``std / sqrt(steps)`` can be several times too small. This
module uses *batch means*: the recorded steps are cut into consecutive blocks (one per
epoch, or every ``K`` recorded steps); block means are nearly independent when a block
is much longer than the correlation time, and their spread gives the standard error.

With blocks ``b = 1..B`` holding ``n_b`` values of one (source, target) pair with mean
``m_b``, ``N = sum n_b`` and overall mean ``m = sum n_b m_b / N`` (exactly the model's
``affinity_sum / affinity_count``), the weighted batch-means estimate is::

    sigma2_long_run = sum_b n_b (m_b - m)^2 / (B - 1)
    stderr          = sqrt(sigma2_long_run / N)

which for equal blocks is the textbook ``std(block means) / sqrt(B)``. Fewer than two
non-empty blocks give ``stderr = NaN`` (no estimate), never zero.

Streaming form (what a model keeps in checkpointed variables, per pair, see
:class:`BatchMeansState`): the current block's ``sum`` and ``count``, and over finished
blocks the number of blocks ``B``, the values ``N`` and the weighted (West/Welford)
running mean and sum of squared deviations ``M2 = sum n_b (m_b - m)^2``.
:func:`end_block` folds the current block in with element-wise ``where``s only, so it
transcribes line by line into TF ops. :func:`estimate` turns the state into mean and SE.
The same estimator serves the cosine measure (keep one state per measure).
:mod:`tag_tf.core.state` keeps this state in ``MultiTaskModel``'s weights during ``fit()``.

:func:`from_block_means` does the same from a list of block-mean matrices, e.g. the
per-epoch matrices of an ``affinity.json`` ``epochs`` trace (:func:`from_epochs`).
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from tag_tf.io import affinity_io

# Fewer blocks than this give no standard error (NaN).
MIN_BLOCKS = 2


class Estimate(NamedTuple):
    """Mean and standard error per (source, target) pair.

    Attributes:
      mean: weighted mean of all values (NaN where none).
      stderr: batch-means standard error of ``mean`` (NaN with fewer than 2 blocks).
      blocks: number of non-empty blocks behind each cell.
      counts: number of values behind each cell.
    """

    mean: np.ndarray
    stderr: np.ndarray
    blocks: np.ndarray
    counts: np.ndarray


class BatchMeansState(NamedTuple):
    """Running batch-means accumulators, per (source, target) pair (all ``[n, n]``).

    Attributes:
      block_sum: float64, sum of the values recorded in the current (unfinished) block.
      block_count: int64, number of values in the current block.
      blocks: int64, number of finished non-empty blocks ``B``.
      weight: int64, number of values in finished blocks ``N``.
      mean: float64, weighted mean of finished block means (0 while ``B = 0``).
      m2: float64, ``sum_b n_b (m_b - mean)^2`` over finished blocks.
    """

    block_sum: np.ndarray
    block_count: np.ndarray
    blocks: np.ndarray
    weight: np.ndarray
    mean: np.ndarray
    m2: np.ndarray


def init_state(n: int) -> BatchMeansState:
    """Zero accumulators for ``n`` tasks."""
    if int(n) < 1:
        raise ValueError(f"The number of tasks must be positive. Received: n={n}")
    shape = (int(n), int(n))
    return BatchMeansState(np.zeros(shape), np.zeros(shape, np.int64), np.zeros(shape, np.int64),
                           np.zeros(shape, np.int64), np.zeros(shape), np.zeros(shape))


def add_values(state: BatchMeansState, values: Any,
               valid: Any | None = None) -> BatchMeansState:
    """Adds one recorded step's ``[n, n]`` values to the current block.

    Args:
      state: the accumulators.
      values: this step's matrix.
      valid: which cells count (default: the finite ones); invalid cells are skipped.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.shape != state.block_sum.shape:
        raise ValueError(f"Expected a {state.block_sum.shape} matrix of values. Received "
                         f"shape {values.shape}.")
    valid = np.isfinite(values) if valid is None else np.asarray(valid, bool) & np.isfinite(values)
    return state._replace(block_sum=state.block_sum + np.where(valid, values, 0.0),
                          block_count=state.block_count + valid.astype(np.int64))


def end_block(state: BatchMeansState) -> BatchMeansState:
    """Folds the current block into the finished-block statistics and starts a new block.

    Cells with an empty current block are unchanged. Weighted Welford (West, 1979)::

      n_b = block_count; m_b = block_sum / n_b; N' = N + n_b
      delta = m_b - mean; mean' = mean + delta * n_b / N'
      M2' = M2 + n_b * delta * (m_b - mean');  B' = B + 1
    """
    has = state.block_count > 0
    n_b = state.block_count.astype(np.float64)
    safe_n = np.where(has, n_b, 1.0)
    m_b = state.block_sum / safe_n
    weight = state.weight + state.block_count
    delta = m_b - state.mean
    mean = np.where(has, state.mean + delta * n_b / np.where(has, weight, 1), state.mean)
    m2 = np.where(has, state.m2 + n_b * delta * (m_b - mean), state.m2)
    return BatchMeansState(np.zeros_like(state.block_sum), np.zeros_like(state.block_count),
                           state.blocks + has.astype(np.int64), weight, mean, m2)


def estimate(state: BatchMeansState, *, include_current: bool = True) -> Estimate:
    """Mean and batch-means standard error from the accumulators.

    Args:
      state: the accumulators.
      include_current: also count the unfinished block (as a block of its own size);
        its weight is its count, so a short last block changes little.

    Returns:
      An :class:`Estimate`; ``stderr`` is NaN where fewer than 2 blocks hold values.
    """
    if include_current:
        state = end_block(state)
    blocks, weight = state.blocks, state.weight
    enough = blocks >= MIN_BLOCKS
    with np.errstate(invalid="ignore", divide="ignore"):
        variance = state.m2 / np.maximum(blocks - 1, 1) / np.maximum(weight, 1)
    stderr = np.where(enough, np.sqrt(np.maximum(variance, 0.0)), np.nan)
    mean = np.where(weight > 0, state.mean, np.nan)
    return Estimate(mean, stderr, blocks.copy(), weight.copy())


def from_block_means(block_means: Any, counts: Any | None = None) -> Estimate:
    """Mean and batch-means standard error from per-block mean matrices.

    Args:
      block_means: ``[B, n, n]`` (or a list of ``[n, n]``) block means; NaN = empty cell.
      counts: matching values per block and cell (default: 1 for every finite mean,
        i.e. equal blocks). Cells with count 0 or a NaN mean are left out.

    Returns:
      An :class:`Estimate` (``stderr`` NaN where fewer than 2 blocks hold values).
    """
    means = np.asarray(block_means, dtype=np.float64)
    if means.ndim != 3 or means.shape[1] != means.shape[2]:
        raise ValueError(f"block_means must be [blocks, n, n]. Received shape {means.shape}.")
    if counts is None:
        counts = np.isfinite(means).astype(np.int64)
    counts = np.asarray(counts, dtype=np.float64)
    if counts.shape != means.shape:
        raise ValueError(f"counts must match block_means {means.shape}. Received shape "
                         f"{counts.shape}.")
    if np.any(counts < 0) or not np.isfinite(counts).all():
        raise ValueError("counts must be finite and non-negative.")
    state = init_state(means.shape[1])
    for mean, count in zip(means, counts):
        use = (count > 0) & np.isfinite(mean)
        count = np.where(use, count, 0.0)
        state = end_block(state._replace(
            block_sum=np.where(use, mean * count, 0.0), block_count=count))
    return estimate(state, include_current=False)


def from_epochs(epochs: Sequence[Mapping[str, Any]]) -> Estimate:
    """:func:`from_block_means` over an ``affinity.json`` ``epochs`` trace (one block per epoch).

    Each entry needs ``"affinity"`` (the epoch mean, null/NaN where empty) and may give
    ``"counts"`` (values behind each cell; default: equal weights).
    """
    if not epochs:
        raise ValueError("The epochs trace is empty: no blocks to estimate a standard error from.")
    means = [affinity_io.decode_matrix(e["affinity"]) for e in epochs]
    if all("counts" in e and e["counts"] is not None for e in epochs):
        counts = [np.asarray(e["counts"], dtype=np.float64) for e in epochs]
    else:
        counts = None
    return from_block_means(np.stack(means), None if counts is None else np.stack(counts))


def from_series(values: Any, block_size: int) -> Estimate:
    """Batch means over a recorded series ``[steps, n, n]`` cut every ``block_size`` steps.

    The last, possibly shorter, block is included with its own weight.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 3:
        raise ValueError(f"values must be [steps, n, n]. Received shape {values.shape}.")
    if int(block_size) < 1:
        raise ValueError(f"block_size must be at least 1. Received: block_size={block_size}")
    state = init_state(values.shape[1])
    for step, matrix in enumerate(values, start=1):
        state = add_values(state, matrix)
        if step % block_size == 0:
            state = end_block(state)
    return estimate(state)


def with_stderr(record: affinity_io.AffinityRecord, result: Estimate,
                method: str) -> affinity_io.AffinityRecord:
    """``record`` with ``stderr``, ``stderr_blocks`` and ``stderr_method`` from ``result``."""
    affinity_io.validate_matrix(result.stderr, record.tasks, name="stderr", allow_nan=True)
    return record._replace(stderr=np.asarray(result.stderr, dtype=np.float64),
                           stderr_blocks=np.asarray(result.blocks, dtype=np.int64),
                           stderr_method=method)


def with_epoch_stderr(record: affinity_io.AffinityRecord) -> affinity_io.AffinityRecord:
    """Adds batch-means standard errors (one block per epoch) from the record's epochs trace.

    Also stores the epoch matrices as ``block_means``/``block_counts`` for the bootstrap.
    With fewer than 2 epochs every standard error is NaN.
    """
    result = from_epochs(record.epochs or [])
    means = np.stack([affinity_io.decode_matrix(e["affinity"]) for e in record.epochs])
    counts = (np.stack([np.asarray(e["counts"], dtype=np.float64) for e in record.epochs])
              if all(e.get("counts") is not None for e in record.epochs) else None)
    return with_stderr(record, result, "batch means, one block per epoch")._replace(
        block_means=means, block_counts=counts)


def naive_stderr(values: Any) -> np.ndarray:
    """The i.i.d. standard error ``std / sqrt(steps)`` per cell (wrong for correlated steps)."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    counts = finite.sum(axis=0)
    safe = np.maximum(counts, 1)
    mean = np.where(finite, values, 0.0).sum(axis=0) / safe
    squares = np.where(finite, (values - mean) ** 2, 0.0).sum(axis=0)
    std = np.sqrt(squares / np.maximum(counts - 1, 1))
    return np.where(counts >= 2, std / np.sqrt(safe), np.nan)
