"""Batch-means standard errors: calibrated on i.i.d. and AR(1) steps, streaming == offline."""

import numpy as np
import pytest

from tag_tf import uncertainty

# 16 x 16 cells = 256 independent replications of one sequence per call.
CELLS = 16


def _ar1(rng, steps, phi, sigma_innovation=1.0):
    """Stationary AR(1) sequences, one per cell: x_t = phi x_{t-1} + e_t."""
    x = np.empty((steps, CELLS, CELLS))
    x[0] = rng.normal(size=(CELLS, CELLS)) * sigma_innovation / np.sqrt(1 - phi ** 2)
    for t in range(1, steps):
        x[t] = phi * x[t - 1] + sigma_innovation * rng.normal(size=(CELLS, CELLS))
    return x


def _true_stderr_ar1(steps, phi, sigma_innovation=1.0):
    """Exact SE of the mean of ``steps`` stationary AR(1) values."""
    variance = sigma_innovation ** 2 / (1 - phi ** 2)
    k = np.arange(1, steps)
    factor = 1 + 2 * np.sum((1 - k / steps) * phi ** k)
    return np.sqrt(variance * factor / steps)


def _check_calibrated(values, truth, estimate):
    rms = np.sqrt(np.mean(estimate.stderr ** 2))
    assert rms == pytest.approx(truth, rel=0.15)
    assert np.mean(estimate.stderr) == pytest.approx(truth, rel=0.15)
    # Monte Carlo truth: spread of the means over the independent replications.
    assert np.std(values.mean(axis=0), ddof=1) == pytest.approx(truth, rel=0.15)


def test_iid_steps_calibrated():
    rng = np.random.default_rng(0)
    steps, sigma = 2000, 0.3
    values = 1.5 + sigma * rng.normal(size=(steps, CELLS, CELLS))
    estimate = uncertainty.from_series(values, block_size=100)
    _check_calibrated(values, sigma / np.sqrt(steps), estimate)
    assert (estimate.blocks == 20).all() and (estimate.counts == steps).all()
    np.testing.assert_allclose(estimate.mean, values.mean(axis=0))


def test_ar1_steps_calibrated_where_naive_fails():
    rng = np.random.default_rng(1)
    steps, phi = 4000, 0.8
    values = _ar1(rng, steps, phi)
    truth = _true_stderr_ar1(steps, phi)
    estimate = uncertainty.from_series(values, block_size=200)
    _check_calibrated(values, truth, estimate)
    # The i.i.d. formula is about 3x too small here: the test case can tell them apart.
    naive = np.mean(uncertainty.naive_stderr(values))
    assert naive < 0.5 * truth


def test_streaming_matches_block_means_with_unequal_blocks_and_missing_cells():
    rng = np.random.default_rng(2)
    steps = [rng.normal(size=(3, 3)) for _ in range(23)]
    for s in steps[5:9]:
        s[0, 1] = np.nan  # skipped entries, e.g. a zero loss
    sizes = [7, 4, 9, 3]  # the last block is partial
    state = uncertainty.init_state(3)
    means, counts, start = [], [], 0
    for size in sizes:
        block = np.stack(steps[start:start + size])
        start += size
        for s in block:
            state = uncertainty.add_values(state, s)
        if size != sizes[-1]:
            state = uncertainty.end_block(state)
        means.append(np.nanmean(block, axis=0))
        counts.append(np.isfinite(block).sum(axis=0))
    streamed = uncertainty.estimate(state)
    offline = uncertainty.from_block_means(means, counts)
    all_steps = np.stack(steps)
    np.testing.assert_allclose(streamed.mean, np.nanmean(all_steps, axis=0))
    for field in uncertainty.Estimate._fields:
        np.testing.assert_allclose(getattr(streamed, field), getattr(offline, field))
    # Direct formula for one cell: sqrt(sum n_b (m_b - m)^2 / (B - 1) / N).
    m_b = np.array([m[0, 1] for m in means])
    n_b = np.array([c[0, 1] for c in counts], dtype=float)
    m = np.sum(n_b * m_b) / n_b.sum()
    direct = np.sqrt(np.sum(n_b * (m_b - m) ** 2) / (len(sizes) - 1) / n_b.sum())
    assert streamed.stderr[0, 1] == pytest.approx(direct)
    assert streamed.counts[0, 1] == 19 and streamed.blocks[0, 1] == 4


def test_fewer_than_two_blocks_give_nan_not_zero():
    state = uncertainty.init_state(2)
    for _ in range(5):
        state = uncertainty.add_values(state, np.ones((2, 2)))
    one_block = uncertainty.estimate(state)
    assert np.isnan(one_block.stderr).all()
    np.testing.assert_allclose(one_block.mean, 1.0)
    empty = uncertainty.estimate(uncertainty.init_state(2))
    assert np.isnan(empty.mean).all() and np.isnan(empty.stderr).all()
    assert (empty.counts == 0).all()
    # A cell that only has values in one of two blocks has no SE either.
    means = np.array([[[1.0, 2.0], [3.0, np.nan]], [[2.0, 4.0], [5.0, 6.0]]])
    est = uncertainty.from_block_means(means)
    assert np.isnan(est.stderr[1, 1]) and est.mean[1, 1] == 6.0 and est.blocks[1, 1] == 1
    assert est.stderr[0, 0] == pytest.approx(0.5)  # std([1, 2]) / sqrt(2)


def test_from_epochs_trace_and_bad_input():
    epochs = [{"epoch": 0, "affinity": [[None, 1.0], [2.0, None]], "counts": [[0, 4], [4, 0]]},
              {"epoch": 1, "affinity": [[None, 3.0], [2.0, None]], "counts": [[0, 12], [4, 0]]}]
    est = uncertainty.from_epochs(epochs)
    assert est.mean[0, 1] == pytest.approx(2.5)
    assert est.stderr[1, 0] == 0.0 and np.isnan(est.stderr[0, 0])
    with pytest.raises(ValueError, match="empty"):
        uncertainty.from_epochs([])
    with pytest.raises(ValueError, match="blocks, n, n"):
        uncertainty.from_block_means(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="counts must match"):
        uncertainty.from_block_means(np.zeros((2, 2, 2)), np.ones((3, 2, 2)))
    with pytest.raises(ValueError, match=r"\(2, 2\) matrix"):
        uncertainty.add_values(uncertainty.init_state(2), np.zeros((3, 3)))
