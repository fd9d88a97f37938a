"""Batch-means standard errors: calibrated on i.i.d. and AR(1) steps, streaming == offline."""

import numpy as np
import pytest

from tag_tf.stats import uncertainty

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


# ------------------------------------------------------------ affinity files and pooling
from tag_tf.io import affinity_io  # noqa: E402


def _record(rng, tasks, **kwargs):
    n = len(tasks)
    return affinity_io.AffinityRecord(list(tasks), rng.normal(size=(n, n)),
                                      counts=rng.integers(1, 9, size=(n, n)), **kwargs)


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_stderr_and_blocks_round_trip(tmp_path, suffix):
    rng = np.random.default_rng(3)
    tasks = ["a", "b", "c"]
    stderr = np.abs(rng.normal(size=(3, 3)))
    stderr[1, 1] = np.nan
    record = _record(rng, tasks, stderr=stderr, stderr_blocks=np.full((3, 3), 5),
                     stderr_method="batch-means over epochs",
                     block_means=rng.normal(size=(5, 3, 3)),
                     block_counts=rng.integers(0, 4, size=(5, 3, 3)))
    path = str(tmp_path / f"affinity{suffix}")
    save = affinity_io.save_affinity_json if suffix == ".json" else affinity_io.save_affinity_npz
    save(path, record)
    loaded = affinity_io.load_affinity(path)
    for key in ("affinity", "stderr", "stderr_blocks", "block_means", "block_counts"):
        np.testing.assert_array_equal(getattr(loaded, key), getattr(record, key))
    assert loaded.stderr_method == "batch-means over epochs"


def test_old_files_without_stderr_still_load(tmp_path):
    path = tmp_path / "old.json"
    path.write_text('{"format": "tag_tf.affinity/v1", "tasks": ["a", "b"], '
                    '"affinity": [[null, 1.0], [2.0, null]], "counts": [[0, 3], [3, 0]], '
                    '"skipped": [[0, 0], [0, 0]], "epochs": [], "config": {}}')
    record = affinity_io.load_affinity(str(path))
    assert record.stderr is None and record.block_means is None
    assert record.stderr_method is None and record.affinity[1, 0] == 2.0


def test_bad_stderr_shape_is_rejected(tmp_path):
    record = affinity_io.AffinityRecord(["a", "b"], np.zeros((2, 2)), stderr=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="stderr matrix is 3x3"):
        affinity_io.save_affinity_json(str(tmp_path / "x.json"), record)
    record = affinity_io.AffinityRecord(["a", "b"], np.zeros((2, 2)),
                                        block_means=np.zeros((4, 3, 3)))
    with pytest.raises(ValueError, match=r"block_means must be \[blocks, 2, 2\]"):
        affinity_io.save_affinity_json(str(tmp_path / "x.json"), record)


def test_pool_records_mean_and_between_run_stderr():
    rng = np.random.default_rng(4)
    tasks = ["a", "b", "c"]
    records = [_record(rng, tasks) for _ in range(4)]
    records[2].affinity[0, 2] = np.nan  # a cell missing in one run
    pooled = affinity_io.pool_records(records)
    stack = np.stack([r.affinity for r in records])
    np.testing.assert_allclose(pooled.affinity, np.nanmean(stack, axis=0))
    expected = np.nanstd(stack, axis=0, ddof=1) / np.sqrt(np.isfinite(stack).sum(axis=0))
    np.testing.assert_allclose(pooled.stderr, expected)
    assert pooled.stderr_blocks[0, 2] == 3 and pooled.stderr_blocks[1, 2] == 4
    np.testing.assert_array_equal(pooled.counts, sum(r.counts for r in records))
    assert pooled.block_means.shape == (4, 3, 3) and pooled.config["pooled_runs"] == 4
    assert "sqrt(K)" in pooled.stderr_method


def test_pooling_does_not_depend_on_file_order():
    rng = np.random.default_rng(5)
    tasks = ["a", "b", "c", "d"]
    records = [_record(rng, tasks) for _ in range(5)]
    # One run lists its tasks in another order: reordered by name.
    order = [3, 1, 0, 2]
    records[1] = records[1]._replace(
        tasks=[tasks[i] for i in order],
        affinity=records[1].affinity[np.ix_(order, order)],
        counts=records[1].counts[np.ix_(order, order)])
    reference = affinity_io.pool_records(records)
    assert reference.tasks == sorted(tasks)
    for seed in range(6):
        perm = np.random.default_rng(seed).permutation(len(records))
        pooled = affinity_io.pool_records([records[i] for i in perm])
        assert pooled.tasks == reference.tasks
        for key in ("affinity", "stderr", "counts", "block_means"):
            assert getattr(pooled, key).tobytes() == getattr(reference, key).tobytes()
    # Same order everywhere: the order is kept.
    same = affinity_io.pool_records([_record(rng, ["z", "y"]) for _ in range(2)])
    assert same.tasks == ["z", "y"]


def test_pooling_rejects_mismatched_tasks_and_single_runs():
    rng = np.random.default_rng(6)
    with pytest.raises(ValueError, match=r"missing: \['c'\], extra: \['d'\]"):
        affinity_io.pool_records([_record(rng, ["a", "b", "c"]), _record(rng, ["a", "b", "d"])])
    with pytest.raises(ValueError, match="at least 2"):
        affinity_io.pool_records([_record(rng, ["a", "b"])])


def test_with_epoch_stderr_fills_the_record(tmp_path):
    epochs = [{"epoch": e, "affinity": [[None, float(e)], [1.0, None]],
               "counts": [[0, 5], [5, 0]]} for e in range(4)]
    record = affinity_io.AffinityRecord(["a", "b"], np.array([[np.nan, 1.5], [1.0, np.nan]]),
                                        epochs=epochs)
    filled = uncertainty.with_epoch_stderr(record)
    # Epoch means 0, 1, 2, 3 with equal counts: SE = std([0..3], ddof=1) / sqrt(4).
    assert filled.stderr[0, 1] == pytest.approx(np.std([0, 1, 2, 3], ddof=1) / 2)
    assert filled.stderr[1, 0] == 0.0 and np.isnan(filled.stderr[0, 0])
    assert filled.stderr_blocks[0, 1] == 4 and filled.block_means.shape == (4, 2, 2)
    path = str(tmp_path / "a.json")
    affinity_io.save_affinity_json(path, filled)
    assert affinity_io.load_affinity(path).stderr_method == "batch means, one block per epoch"


def _traced(rng, tasks, epochs, *, config=None):
    """One run with an epochs trace (unequal counts) and a mean over its epochs."""
    n = len(tasks)
    trace = [{"epoch": e, "affinity": rng.normal(size=(n, n)).tolist(),
              "counts": rng.integers(1, 6, size=(n, n)).tolist()} for e in range(epochs)]
    return affinity_io.AffinityRecord(list(tasks), rng.normal(size=(n, n)), epochs=trace,
                                      config=config or {})


def test_pooling_records_runs_and_keeps_each_runs_blocks_in_pool_order():
    rng = np.random.default_rng(7)
    tasks = ["a", "b", "c"]
    records = [_traced(rng, tasks, 4), _traced(rng, tasks, 3),
               _traced(rng, tasks, 5, config={"epochs_used": [0, 1]})]
    # One run carries recorded blocks: they win over its trace; another lists tasks
    # in another order: its blocks are reordered with its matrix.
    blocks = rng.normal(size=(6, 3, 3))
    records[1] = records[1]._replace(block_means=blocks, block_counts=np.ones((6, 3, 3)))
    order = [2, 0, 1]
    moved = records[0]._replace(tasks=[tasks[i] for i in order],
                                affinity=records[0].affinity[np.ix_(order, order)],
                                epochs=[{**e, "affinity": np.asarray(e["affinity"])[
                                    np.ix_(order, order)].tolist(), "counts": np.asarray(
                                        e["counts"])[np.ix_(order, order)].tolist()}
                                        for e in records[0].epochs])
    pooled = affinity_io.pool_records([moved, records[1], records[2]])
    assert pooled.runs == 3 and pooled.config["pooled_runs"] == 3
    assert len(pooled.run_blocks) == 3
    for run_mean, (means, counts) in zip(pooled.block_means, pooled.run_blocks):
        k = next(i for i, r in enumerate(records)
                 if np.array_equal(r.affinity, run_mean))  # same pool order as block_means
        expected = affinity_io.within_run_blocks(records[k])
        np.testing.assert_array_equal(means, expected[0])
        np.testing.assert_array_equal(counts, expected[1])
    # epochs_used restricts a trace to the epochs its mean is over.
    assert len(affinity_io.within_run_blocks(records[2])[0]) == 2
    # A run without 2 blocks: no two-stage information, the pool still works.
    bare = affinity_io.pool_records([records[0], records[0]._replace(epochs=None)])
    assert bare.run_blocks is None and bare.runs == 2
    # A pooled record is not one run: it has no within-run blocks.
    assert affinity_io.within_run_blocks(pooled) is None


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_runs_and_run_blocks_round_trip(tmp_path, suffix):
    rng = np.random.default_rng(8)
    tasks = ["a", "b", "c"]
    pooled = affinity_io.pool_records([_traced(rng, tasks, e) for e in (2, 4, 3)])
    path = str(tmp_path / f"pooled{suffix}")
    save = affinity_io.save_affinity_json if suffix == ".json" else affinity_io.save_affinity_npz
    save(path, pooled)
    loaded = affinity_io.load_affinity(path)
    assert loaded.runs == 3 and len(loaded.run_blocks) == 3
    for (means, counts), (want_means, want_counts) in zip(loaded.run_blocks, pooled.run_blocks):
        np.testing.assert_array_equal(means, want_means)
        np.testing.assert_array_equal(counts, want_counts)
    one = _traced(rng, tasks, 2)
    save(path, one)
    assert affinity_io.load_affinity(path).runs == 1


def test_old_pooled_files_keep_their_run_count(tmp_path):
    """Files pooled before ``runs`` existed say it in config["pooled_runs"]."""
    path = tmp_path / "old_pooled.json"
    path.write_text('{"format": "tag_tf.affinity/v1", "tasks": ["a", "b"], '
                    '"affinity": [[null, 1.0], [2.0, null]], "epochs": [], '
                    '"config": {"pooled_runs": 3}, "block_means": [[[0, 1], [2, 0]], '
                    '[[0, 1], [2, 0]], [[0, 1], [2, 0]]]}')
    assert affinity_io.load_affinity(str(path)).runs == 3
    path.write_text('{"tasks": ["a", "b"], "affinity": [[0, 1], [2, 0]], "runs": 0}')
    with pytest.raises(ValueError, match="runs .* must be an integer >= 1. Received: runs=0"):
        affinity_io.load_affinity(str(path))


def test_old_pooled_npz_files_keep_their_run_count(tmp_path):
    """NPZs hold no config: an old pooled one is known by its between-run method."""
    rng = np.random.default_rng(9)
    pooled = affinity_io.pool_records([_record(rng, ["a", "b"]) for _ in range(3)])
    path = str(tmp_path / "pooled.npz")
    affinity_io.save_affinity_npz(path, pooled)
    with np.load(path) as data:
        old = {k: data[k] for k in data.files if k != "runs"}
    np.savez(path, **old)
    assert affinity_io.load_affinity(path).runs == 3
