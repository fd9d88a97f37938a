"""The batch-means standard error kept in MultiTaskModel's state (tag_tf.core.state).

It must equal tag_tf.stats.uncertainty's NumPy estimators on the same blocks, be NaN (never 0)
with fewer than 2 blocks, survive save/load, BackupAndRestore and a step-exact resume
after a mid-epoch crash, and be the same under MirroredStrategy as on one device.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tag_tf
from tag_tf.io import affinity_io
from tag_tf.io import heatmap
from tag_tf.training import resume
from tag_tf.stats import uncertainty
from tag_tf.core.config import MEASURES  # every measure: a new one is covered with no extra code
from tests import toys
from tests.toys import TASKS, bn_dropout_model, normal_targets_data


class SeriesRecorder(keras.callbacks.Callback):
    """Each step's recorded values per measure (every_n=1: every step records)."""

    def __init__(self):
        super().__init__()
        self.values = {m: [] for m in MEASURES}
        self._last = None

    def _sums(self):
        return {m: self.model.affinity_state.measure_state(m)[0].numpy().copy() for m in MEASURES}

    def on_train_begin(self, logs=None):
        self._last = self._sums()

    def on_train_batch_end(self, batch, logs=None):
        now = self._sums()
        for m in MEASURES:
            self.values[m].append(now[m] - self._last[m])
        self._last = now


def fit_with_series(config, epochs=3, n=64, **kwargs):
    model = bn_dropout_model(config, **kwargs)
    series, logger = SeriesRecorder(), tag_tf.AffinityLogger()
    x, y = normal_targets_data(n)
    model.fit(x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0,
              callbacks=[series, logger])
    return model, series, logger


def stderr_state(model):
    return {v.name: v.numpy() for v in model.affinity_state.variables
            if v.name.startswith("stderr_")}


def assert_same_stderr(a, b):
    for name, value in stderr_state(a).items():
        np.testing.assert_array_equal(value, stderr_state(b)[name], err_msg=name)
    for measure in a.affinity_config.measures:
        ra, rb = a.affinity_record(measure), b.affinity_record(measure)
        np.testing.assert_array_equal(ra.stderr, rb.stderr, err_msg=measure)
        np.testing.assert_array_equal(ra.stderr_blocks, rb.stderr_blocks, err_msg=measure)


# ----------------------------------------------------------------- calibration
def test_per_epoch_stderr_equals_the_numpy_batch_means_of_the_epoch_trace(eager):
    config = tag_tf.AffinityConfig(every_n=1, measures=MEASURES)
    model, series, logger = fit_with_series(config)
    for measure in MEASURES:
        record = model.affinity_record(measure)
        assert record.stderr_method == "batch means, one block per epoch"
        np.testing.assert_array_equal(record.stderr_blocks, 3)
        off = ~np.eye(len(TASKS), dtype=bool)  # cos(g, g) = 1 exactly: its SE is ~0
        assert np.all(np.isfinite(record.stderr)) and np.all(record.stderr[off] > 0)
        # The AffinityLogger's per-epoch trace through uncertainty.with_epoch_stderr...
        traced = uncertainty.with_epoch_stderr(logger.record(measure))
        np.testing.assert_allclose(record.stderr, traced.stderr, rtol=1e-12, atol=1e-15)
        # ...and the raw per-step values cut into epochs (4 steps each).
        steps = np.stack(series.values[measure])
        blocks = np.stack([steps[k:k + 4].mean(axis=0) for k in (0, 4, 8)])
        direct = uncertainty.from_block_means(blocks, np.full(blocks.shape, 4))
        np.testing.assert_allclose(record.stderr, direct.stderr, rtol=1e-10, atol=1e-15)
        np.testing.assert_allclose(record.affinity, direct.mean, rtol=1e-10, atol=1e-15)
        # By hand: std of the 3 epoch means (ddof 1) / sqrt(3).
        np.testing.assert_allclose(record.stderr, blocks.std(axis=0, ddof=1) / np.sqrt(3),
                                   rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("block", [1, 3, 5])
def test_every_k_recorded_steps_equals_from_series(eager, block):
    """12 records cut every K (the last block shorter for K = 5), across epoch ends."""
    config = tag_tf.AffinityConfig(every_n=1, measures=MEASURES, stderr_block=block)
    model, series, _ = fit_with_series(config)
    for measure in MEASURES:
        record = model.affinity_record(measure)
        expected = uncertainty.from_series(np.stack(series.values[measure]), block)
        assert record.stderr_method == f"batch means, one block per {block} recorded steps"
        np.testing.assert_array_equal(record.stderr_blocks, expected.blocks)
        np.testing.assert_array_equal(record.stderr_blocks, -(-12 // block))
        np.testing.assert_allclose(record.stderr, expected.stderr, rtol=1e-10, atol=1e-15)
    if block == 1:  # one value per block: the i.i.d. standard error
        for measure in MEASURES:
            np.testing.assert_allclose(
                model.affinity_record(measure).stderr,
                uncertainty.naive_stderr(np.stack(series.values[measure])),
                rtol=1e-10, atol=1e-15, err_msg=measure)


def test_every_k_blocks_count_recorded_steps_not_training_steps(eager):
    """every_n=2 over 12 training steps: 6 records, blocks of 2 records -> 3 blocks."""
    model = bn_dropout_model(tag_tf.AffinityConfig(every_n=2, stderr_block=2))
    x, y = normal_targets_data(64)
    model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
    assert int(model.affinity_state.affinity_steps.numpy()) == 6
    np.testing.assert_array_equal(model.affinity_record().stderr_blocks, 3)


def test_one_block_gives_nan_never_zero(eager):
    model = bn_dropout_model(tag_tf.AffinityConfig(every_n=1, measures=MEASURES))
    empty = model.affinity_record()
    assert np.isnan(empty.stderr).all() and (empty.stderr_blocks == 0).all()
    x, y = normal_targets_data(64)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for measure in MEASURES:
        record = model.affinity_record(measure)
        assert np.isnan(record.stderr).all(), measure
        np.testing.assert_array_equal(record.stderr_blocks, 1)
        assert np.isfinite(record.affinity).all()
    # No estimate anywhere: the heatmap marks nothing (and says nothing about it).
    fig = heatmap.record_figure(model.affinity_record())
    assert not [p for p in fig.axes[0].patches if p.get_hatch()]


def test_logger_files_leave_out_an_all_unknown_stderr(tmp_path, eager):
    """One epoch: the files carry no stderr, so the selection bootstrap says "no
    uncertainty information" instead of taking NaN errors for exact values."""
    from tag_tf.selection import robustness  # pylint: disable=g-import-not-at-top
    model = bn_dropout_model(tag_tf.AffinityConfig(every_n=2))
    x, y = normal_targets_data(32)
    out = str(tmp_path / "out")
    logger = tag_tf.AffinityLogger(output_dir=out)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[logger])
    assert np.isnan(model.affinity_record().stderr).all()
    assert logger.record().stderr is None
    record = affinity_io.load_affinity(os.path.join(out, "affinity.json"))
    assert record.stderr is None and record.stderr_method is None
    with pytest.raises(ValueError, match="No uncertainty information"):
        robustness.Uncertainty.from_record(record)


def test_unfinished_block_counts_as_a_block_mid_epoch(eager):
    """Read mid-epoch, the partial epoch is a block of its own (weighted by its size)."""
    seen = {}

    class Peek(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.affinity_state.train_step_counter.numpy()) == 6:
                seen["record"] = self.model.affinity_record()

    model = bn_dropout_model(tag_tf.AffinityConfig(every_n=1))
    series = SeriesRecorder()
    x, y = normal_targets_data(64)
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
              callbacks=[series, Peek()])
    record = seen["record"]  # epoch 0 (4 steps) + 2 steps of epoch 1
    steps = np.stack(series.values["lookahead"])
    blocks = np.stack([steps[:4].mean(axis=0), steps[4:6].mean(axis=0)])
    counts = np.stack([np.full((3, 3), 4), np.full((3, 3), 2)])
    expected = uncertainty.from_block_means(blocks, counts)
    np.testing.assert_array_equal(record.stderr_blocks, 2)
    np.testing.assert_allclose(record.stderr, expected.stderr, rtol=1e-10)


# ------------------------------------------------------------- state handling
def test_state_is_bookkeeping_reset_with_the_accumulators(eager):
    model = bn_dropout_model(tag_tf.AffinityConfig(every_n=1))
    x, y = normal_targets_data(64)
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    assert int(model.affinity_state.stderr_lookahead_blocks.numpy()[0, 0]) == 2
    skipped = {id(v) for v in model.affinity_state.variables}
    assert len(model.get_weights()) == len([v for v in model.weights if id(v) not in skipped])
    model.set_weights(model.get_weights())  # EarlyStopping's restore leaves the SE alone
    assert int(model.affinity_state.stderr_lookahead_blocks.numpy()[0, 0]) == 2
    model.reset_affinity()
    for name, value in stderr_state(model).items():
        assert not value.any(), name
    assert np.isnan(model.affinity_record().stderr).all()


def test_save_and_load_round_trip(tmp_path, eager):
    config = tag_tf.AffinityConfig(every_n=1, measures=MEASURES, stderr_block=3)
    x, y = normal_targets_data(64)
    model = bn_dropout_model(config, dropout=0)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)  # 4 records: 1 + 1/3
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.affinity_config.stderr_block == 3
    assert_same_stderr(model, loaded)
    weights = str(tmp_path / "model.weights.h5")
    model.save_weights(weights)
    other = bn_dropout_model(config, seed=2, dropout=0)
    other.load_weights(weights)
    assert_same_stderr(model, other)
    # Training on from the loaded state continues the same blocks (the open one included).
    for m in (model, loaded):
        m.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_array_equal(loaded.affinity_state.stderr_lookahead_blocks.numpy(), 2)
    for measure in MEASURES:
        np.testing.assert_allclose(loaded.affinity_record(measure).stderr,
                                   model.affinity_record(measure).stderr, rtol=1e-6)


def test_config_option_is_validated_and_saved():
    for bad in (0, -1, True, "step", 2.0):
        with pytest.raises(ValueError, match="stderr_block"):
            tag_tf.AffinityConfig(stderr_block=bad)
    config = tag_tf.AffinityConfig(stderr_block=7)
    assert config.to_json()["stderr_block"] == 7
    assert tag_tf.AffinityConfig.from_json(config.to_json()) == config
    legacy = {k: v for k, v in config.to_json().items() if k != "stderr_block"}
    assert tag_tf.AffinityConfig.from_json(legacy).stderr_block == "epoch"


# --------------------------------------------------------------------- resume
def test_backup_and_restore_gives_the_same_stderr(tmp_path, eager):
    """Keras' BackupAndRestore saves at the epoch end: after the block was folded."""
    x, y = normal_targets_data(64)
    config = tag_tf.AffinityConfig(every_n=1)
    straight = bn_dropout_model(config)
    straight.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0)
    backup = str(tmp_path / "backup")
    first = bn_dropout_model(config)
    with pytest.raises(RuntimeError):
        first.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0,
                  callbacks=[keras.callbacks.BackupAndRestore(backup), toys.CrashAtEpoch(2)])
    resumed = bn_dropout_model(config, seed=1)  # other init: everything comes from the backup
    resumed.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0,
                callbacks=[keras.callbacks.BackupAndRestore(backup)])
    np.testing.assert_array_equal(resumed.affinity_state.stderr_lookahead_blocks.numpy(), 4)
    assert_same_stderr(straight, resumed)


def _epoch_data(epoch):
    return toys.shuffled_epoch_batches(epoch, num=32)  # 4 steps


@pytest.mark.parametrize("block", ["epoch", pytest.param(3, marks=pytest.mark.slow)])
def test_step_exact_resume_after_a_mid_epoch_crash_gives_the_same_stderr(tmp_path, eager,
                                                                         block):
    config = tag_tf.AffinityConfig(every_n=1, measures=MEASURES, stderr_block=block)

    def run(name, crash=None, seed=0):
        model = bn_dropout_model(config, seed=seed)
        keras.utils.set_random_seed(0)
        callbacks = [toys.CrashAfterSteps(crash)] if crash else []
        resume.resumable_fit(model, _epoch_data, backup_dir=str(tmp_path / name),
                             save_freq=2, epochs=3, callbacks=callbacks, verbose=0)
        return model

    straight = run("straight")
    with pytest.raises(RuntimeError, match="crash"):
        run("resumed", crash=7)  # epoch 1, batch 3 of 4: backup after its 2nd batch
    assert resume.read_resume_point(str(tmp_path / "resumed"), 4) == (1, 2)
    resumed = run("resumed", seed=1)
    assert int(resumed.affinity_state.train_step_counter.numpy()) == 12
    expected_blocks = 3 if block == "epoch" else 4  # 12 records in blocks of 3
    np.testing.assert_array_equal(resumed.affinity_record().stderr_blocks, expected_blocks)
    assert_same_stderr(straight, resumed)


# ---------------------------------------------------------------- distribution
@pytest.mark.usefixtures("float64_keras")
@pytest.mark.parametrize("block", [
    2, pytest.param("epoch", marks=pytest.mark.slow)])
def test_mirrored_strategy_equals_one_device(block):
    config = tag_tf.AffinityConfig(every_n=1, measures=MEASURES, stderr_block=block)

    def train(strategy):
        with strategy.scope():
            model = tag_tf.MultiTaskModel(toys.tanh_network(), shared=["trunk"], affinity=config)
            model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse",
                          loss_weights=toys.LOSS_WEIGHTS)
        dataset = tf.data.Dataset.from_tensor_slices(toys.tanh_mixture_data(3 * 32)).batch(32)
        model.fit(dataset, epochs=2, verbose=0)  # 6 records
        return {m: model.affinity_record(m) for m in MEASURES}

    one, many = train(toys.one_device_strategy()), train(toys.mirrored_strategy())
    for measure in MEASURES:
        np.testing.assert_array_equal(many[measure].stderr_blocks, 3 if block == 2 else 2)
        np.testing.assert_array_equal(many[measure].stderr_blocks, one[measure].stderr_blocks)
        assert np.all(one[measure].stderr[~np.eye(len(TASKS), dtype=bool)] > 0)
        np.testing.assert_allclose(many[measure].stderr, one[measure].stderr, rtol=1e-5,
                                   atol=1e-14, err_msg=measure)  # cos(g, g): SE ~1e-16


# ----------------------------------------------------------------- outputs
def test_logger_writes_stderr_to_json_npz_png_and_tensorboard(tmp_path, eager):
    x, y = normal_targets_data(64)
    model = bn_dropout_model(tag_tf.AffinityConfig(every_n=1))
    out, logs = str(tmp_path / "out"), str(tmp_path / "tb")
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
              callbacks=[tag_tf.AffinityLogger(output_dir=out, log_dir=logs)])
    expected = model.affinity_record()
    for name in ("affinity.json", "affinity.npz"):
        record = affinity_io.load_affinity(os.path.join(out, name))
        np.testing.assert_allclose(record.stderr, expected.stderr, rtol=1e-12)
        np.testing.assert_array_equal(record.stderr_blocks, 2)
        assert record.stderr_method == "batch means, one block per epoch"
    with open(os.path.join(out, "affinity.json")) as f:
        assert len(json.load(f)["stderr"]) == len(TASKS)
    tags = set()
    for name in os.listdir(logs):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(logs, name)):
            tags.update(v.tag for v in event.summary.value)
    assert "affinity_stderr/a->b" in tags and "affinity_overall/a->b" in tags
    assert "affinity_stderr/within_2se" in tags and "affinity_overall_heatmap" in tags


def test_record_heatmap_hatches_cells_within_two_standard_errors():
    record = affinity_io.AffinityRecord(
        TASKS, np.array([[1.0, 0.1, -0.5], [0.3, 1.0, 0.05], [0.0, 0.15, 1.0]]),
        stderr=np.array([[0.1, 0.1, 0.1], [0.1, 0.1, 0.1], [np.nan, 0.1, 0.1]]))
    hatched = [p for p in heatmap.record_figure(record).axes[0].patches if p.get_hatch()]
    corners = sorted((round(p.get_y() + 0.5), round(p.get_x() + 0.5)) for p in hatched)
    assert corners == [(0, 1), (1, 2), (2, 1)]  # |mean| < 0.2; NaN stderr: no mark
    plain = heatmap.record_figure(record, mark_uncertain=False)
    assert not [p for p in plain.axes[0].patches if p.get_hatch()]
