"""MultiTaskModel inside fit(): schedule, state, training equivalence, resume, errors."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tag_tf
from tag_tf import synthetic
from tests.toys import TASKS, CrashAtEpoch, bn_dropout_model, bn_dropout_network, \
    normal_targets_data


# ------------------------------------------------------------------ schedule
@pytest.mark.parametrize("config,expected_steps", [
    (tag_tf.AffinityConfig(every_n=3), [0, 3, 6, 9]),
    (tag_tf.AffinityConfig(every_n=2, step_range=(3, 9)), [4, 6, 8]),
    (tag_tf.AffinityConfig(every_n=1, window="final"), [9, 10, 11]),  # 12 steps: [9, 12)
    (tag_tf.AffinityConfig(every_n=2, window=(0.25, 0.5)), [4]),  # [3, 6) -> 4
])
def test_schedule_records_exactly_the_expected_steps(config, expected_steps):
    model = bn_dropout_model(config)
    recorded = []

    class Watch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.affinity_state.affinity_steps.numpy()) > len(recorded):
                recorded.append(int(self.model.affinity_state.train_step_counter.numpy()) - 1)

    x, y = normal_targets_data(96)
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0, callbacks=[Watch()])
    assert recorded == expected_steps
    assert int(model.affinity_state.affinity_steps.numpy()) == len(expected_steps)
    np.testing.assert_array_equal(model.affinity_state.affinity_count.numpy(), len(expected_steps))


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="every_n"):
        tag_tf.AffinityConfig(every_n=0)
    with pytest.raises(ValueError, match="rule"):
        tag_tf.AffinityConfig(rule="newton")
    with pytest.raises(ValueError, match="window"):
        tag_tf.AffinityConfig(window="late")
    with pytest.raises(ValueError, match="window"):
        tag_tf.AffinityConfig(window=(0.5, 0.2))
    with pytest.raises(ValueError, match="validation_data"):
        tag_tf.AffinityConfig(batch="validation")


# ----------------------------------------------------- no mutation, training
@pytest.mark.usefixtures("eager")  # a few steps: tracing would cost more than they do
@pytest.mark.parametrize("rule", ["sgd", "optimizer"])
def test_lookahead_mutates_no_variable(rule):
    """The lookahead measurement leaves every weight, BN statistic, optimizer slot and RNG
    state bit-identical: steps that measure lookahead affinities train exactly as steps that
    only measure gradient cosines (the same per-task gradients, no lookahead)."""
    x, y = normal_targets_data(16)
    models = {measure: bn_dropout_model(tag_tf.AffinityConfig(every_n=1, rule=rule,
                                                              measures=(measure,)))
              for measure in ("lookahead", "cosine")}
    for model in models.values():
        for _ in range(3):  # from the second step on, with momentum in the optimizer slots
            model.train_on_batch(x, y)
    lookahead, cosine = models["lookahead"], models["cosine"]
    assert int(lookahead.affinity_state.affinity_steps.numpy()) == int(cosine.affinity_state.affinity_steps.numpy()) == 3
    np.testing.assert_array_equal(lookahead.affinity_state.affinity_count.numpy(), 3)  # the lookahead ran
    np.testing.assert_array_equal(cosine.affinity_state.affinity_count.numpy(), 0)
    untrained = bn_dropout_network(0)
    assert not np.array_equal(untrained.get_layer("trunk").kernel.numpy(),
                              lookahead.network.get_layer("trunk").kernel.numpy())
    watched = [m.network.variables + m.optimizer.variables for m in (lookahead, cosine)]
    assert len(watched[0]) == len(watched[1])
    for a, b in zip(*watched):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


@pytest.mark.parametrize("every_n", [1, 3])
def test_training_with_tag_equals_training_without(every_n):
    """Weights, BN statistics and optimizer state match plain Keras fit()."""
    x, y = normal_targets_data(96)
    plain = bn_dropout_network(0)
    # Keras reads a partial loss_weights dict with a single loss as a global factor; spell
    # out what MultiTaskModel means by loss="mse", loss_weights={"b": 2.0}.
    plain.compile(optimizer=keras.optimizers.Adam(0.01), loss={t: "mse" for t in TASKS},
                  loss_weights={"a": 1.0, "b": 2.0, "c": 1.0})
    plain_history = plain.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)

    model = bn_dropout_model(tag_tf.AffinityConfig(every_n=every_n),
                       optimizer=keras.optimizers.Adam(0.01))
    history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    assert int(model.affinity_state.affinity_steps.numpy()) > 0
    for a, b in zip(plain.variables, model.network.variables):
        # Recording steps sum per-task gradients instead of differentiating the sum:
        # equal up to float32 rounding.
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
    np.testing.assert_allclose(plain_history.history["loss"], history.history["loss"], rtol=1e-5)
    assert set(plain_history.history) == set(history.history)


def test_without_affinity_is_exactly_keras():
    x, y = normal_targets_data(64)
    plain = bn_dropout_network(0)
    plain.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  loss={t: "mse" for t in TASKS}, loss_weights={"a": 1.0, "b": 2.0, "c": 1.0})
    plain.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    model = bn_dropout_model(None)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(plain.variables, model.network.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


# ------------------------------------------------------------ state, resume
def test_backup_and_restore_resumes_accumulators_exactly(tmp_path):
    # With Dropout: MultiTaskModel also saves the RNG state that Keras weight files omit.
    x, y = normal_targets_data(96)
    straight = bn_dropout_model(tag_tf.AffinityConfig(every_n=2))
    straight.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0)

    backup = str(tmp_path / "backup")
    logger_dir = str(tmp_path / "out")
    first = bn_dropout_model(tag_tf.AffinityConfig(every_n=2))
    with pytest.raises(RuntimeError):
        first.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0,
                  callbacks=[keras.callbacks.BackupAndRestore(backup),
                             tag_tf.AffinityLogger(output_dir=logger_dir), CrashAtEpoch(2)])
    resumed = bn_dropout_model(tag_tf.AffinityConfig(every_n=2), seed=1)  # other init: restored
    logger = tag_tf.AffinityLogger(output_dir=logger_dir)
    resumed.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0,
                callbacks=[keras.callbacks.BackupAndRestore(backup), logger])
    for name in ["affinity_sum", "affinity_count", "affinity_skipped", "affinity_steps",
                 "train_step_counter"]:
        np.testing.assert_array_equal(getattr(straight.affinity_state, name).numpy(),
                                      getattr(resumed.affinity_state, name).numpy(),
                                      err_msg=name)
    for a, b in zip(straight.network.variables, resumed.network.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    assert [e["epoch"] for e in logger.epochs["lookahead"]] == [0, 1, 2, 3]


def test_checkpoint_carries_affinity_state(tmp_path):
    x, y = normal_targets_data(32)
    model = bn_dropout_model()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = str(tmp_path / "ckpt")
    tf.train.Checkpoint(model=model).write(path)
    other = bn_dropout_model(seed=3)
    tf.train.Checkpoint(model=other).read(path).assert_existing_objects_matched()
    for name in ("affinity_sum", "affinity_count"):
        np.testing.assert_array_equal(getattr(other.affinity_state, name).numpy(),
                                      getattr(model.affinity_state, name).numpy())


def test_save_and_load_keras_file(tmp_path):
    x, y = normal_targets_data(32)
    model = bn_dropout_model(tag_tf.AffinityConfig(every_n=2, window="middle"))
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.tasks == TASKS
    assert loaded.affinity_config == model.affinity_config
    np.testing.assert_array_equal(loaded.affinity_state.affinity_sum.numpy(),
                                  model.affinity_state.affinity_sum.numpy())
    for a, b in zip(model.predict(x, verbose=0).values(), loaded.predict(x, verbose=0).values()):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    # Compiled on load (losses, optimizer and its state): training resumes as the original.
    assert loaded.compiled and int(loaded.optimizer.iterations) == int(model.optimizer.iterations)
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert loaded.evaluate(x, y, verbose=0) == pytest.approx(model.evaluate(x, y, verbose=0),
                                                             rel=1e-6)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    loaded.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    np.testing.assert_allclose(loaded.affinity_state.affinity_sum.numpy(),
                               model.affinity_state.affinity_sum.numpy(),
                               rtol=1e-5, atol=1e-7)
    assert int(loaded.affinity_state.affinity_steps.numpy()) == \
        int(model.affinity_state.affinity_steps.numpy())


def test_loaded_validation_batch_model_asks_for_its_dataset(tmp_path):
    x, y = normal_targets_data(32)
    validation = tf.data.Dataset.from_tensor_slices(normal_targets_data(32, seed=1)).batch(16)
    config = tag_tf.AffinityConfig(every_n=1, batch="validation", validation_data=validation)
    model = bn_dropout_model(config)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.affinity_config == config and loaded.affinity_config.validation_data is None
    with pytest.raises(ValueError, match="attach_validation_data"):
        loaded.fit(x, y, batch_size=16, epochs=1, verbose=0)
    loaded.attach_validation_data(validation)
    loaded.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert int(loaded.affinity_state.affinity_steps.numpy()) == 4
    assert np.all(np.isfinite(loaded.affinity_record().affinity[~np.eye(3, dtype=bool)]))
    with pytest.raises(ValueError, match="batch='validation'"):
        bn_dropout_model().attach_validation_data(validation)


# ------------------------------------------------------------------ bad input
class ZeroLossOnLargeTargets(keras.losses.Loss):
    """MSE, but exactly zero when a target exceeds 100 (a batch where the task is 'solved')."""

    def call(self, y_true, y_pred):
        return tf.reduce_mean(tf.square(y_true - y_pred), axis=-1) * tf.cast(
            tf.reduce_max(tf.abs(y_true)) < 100.0, y_pred.dtype)


def test_zero_losses_are_skipped_and_counted_not_averaged():
    model = tag_tf.MultiTaskModel(bn_dropout_network(0), shared=["trunk"],
                                  affinity=tag_tf.AffinityConfig(every_n=1))
    model.compile(optimizer=keras.optimizers.SGD(0.01),
                  loss={"a": "mse", "b": "mse", "c": ZeroLossOnLargeTargets()})
    x, y = normal_targets_data(32)
    model.train_on_batch(x, y)  # every loss > 0: all recorded
    np.testing.assert_array_equal(model.affinity_state.affinity_skipped.numpy(), 0)
    first = model.affinity_record().affinity
    model.train_on_batch(x, dict(y, c=y["c"] + 1000.0))  # L_c == 0: column c skipped
    record = model.affinity_record()
    np.testing.assert_array_equal(record.skipped[:, 2], [1, 1, 1])
    np.testing.assert_array_equal(record.skipped[:, :2], 0)
    np.testing.assert_array_equal(record.counts[:, 2], [1, 1, 1])
    np.testing.assert_array_equal(record.counts[:, :2], 2)
    np.testing.assert_array_equal(record.affinity[:, 2], first[:, 2])  # not diluted by a 0
    assert np.all(np.isfinite(record.affinity))


def test_clear_errors():
    network = bn_dropout_network()
    with pytest.raises(ValueError, match="unknown layer 'nope'"):
        tag_tf.MultiTaskModel(network, shared=["nope"])
    with pytest.raises(ValueError, match="shared set is empty"):
        tag_tf.MultiTaskModel(network, shared=[])
    with pytest.raises(ValueError, match="Duplicate task names"):
        tag_tf.MultiTaskModel(network, shared=["trunk"], tasks=["a", "a", "b"])
    model = tag_tf.MultiTaskModel(network, shared=["trunk"])
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['d'\]"):
        model.compile(loss={"a": "mse", "b": "mse", "c": "mse", "d": "mse"})
    with pytest.raises(ValueError, match=r"no loss for task\(s\) \['c'\]"):
        model.compile(loss={"a": "mse", "b": "mse"})
    with pytest.raises(ValueError, match="rule 'optimizer' supports"):
        tag_tf.MultiTaskModel(network, shared=["trunk"], affinity=tag_tf.AffinityConfig(
            rule="optimizer")).compile(optimizer="rmsprop", loss="mse")


def test_task_that_ignores_the_shared_trunk_is_rejected():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    trunk = keras.layers.Dense(4, name="trunk")(inputs)
    outputs = {"a": keras.layers.Dense(1, name="a")(trunk),
               "b": keras.layers.Dense(1, name="b")(inputs)}  # skips the trunk
    model = tag_tf.MultiTaskModel(keras.Model(inputs, outputs), shared=["trunk"],
                                  affinity=tag_tf.AffinityConfig(every_n=1))
    model.compile(optimizer="sgd", loss="mse")
    x = np.ones((8, 4), "float32")
    with pytest.raises(ValueError, match="task 'b' does not depend on the shared"):
        model.fit(x, {"a": np.ones((8, 1)), "b": np.ones((8, 1))}, verbose=0)


def test_fractional_window_needs_known_steps():
    model = bn_dropout_model(tag_tf.AffinityConfig(window="first"))
    x, y = normal_targets_data(32)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()
    with pytest.raises(ValueError, match="fractional affinity window"):
        model.fit(ds.filter(lambda *_: True).take(4), epochs=1, verbose=0)


# ---------------------------------------------------- reproducibility, demo
def run_planted(seed, steps=500):
    keras.utils.set_random_seed(seed)
    problem = synthetic.planted_tasks(6, 2, seed=seed)
    network = synthetic.planted_network(problem.tasks, problem.input_dim, seed=seed)
    model = tag_tf.MultiTaskModel(network, shared=list(synthetic.SHARED_LAYERS),
                                  affinity=tag_tf.AffinityConfig(every_n=5))
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    ds = problem.dataset(4096, batch_size=64, seed=seed + 1).repeat()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    return problem, model.affinity_record()


def test_seeded_runs_are_identical_and_recover_planted_clusters():
    tf.config.experimental.enable_op_determinism()
    problem, first = run_planted(0)
    _, second = run_planted(0)
    np.testing.assert_array_equal(first.affinity, second.affinity)
    same = np.equal.outer(problem.cluster_of, problem.cluster_of)
    off = ~np.eye(len(problem.tasks), dtype=bool)
    within, across = first.affinity[same & off].mean(), first.affinity[~same].mean()
    assert within > 3 * abs(across) and within > across + 0.002, (within, across)


def test_logger_exports_json_npz_png_and_tensorboard(tmp_path):
    x, y = normal_targets_data(64)
    model = bn_dropout_model(tag_tf.AffinityConfig(every_n=2))
    out, logs = str(tmp_path / "out"), str(tmp_path / "tb")
    model.fit(x, y, batch_size=16, epochs=3, verbose=0,
              callbacks=[tag_tf.AffinityLogger(output_dir=out, log_dir=logs)])
    record = tag_tf.load_affinity(os.path.join(out, "affinity.json"))
    assert record.tasks == TASKS
    np.testing.assert_allclose(record.affinity, model.affinity_record().affinity)
    assert [e["epoch"] for e in record.epochs] == [0, 1, 2]
    assert sum(np.asarray(e["counts"])[0, 0] for e in record.epochs) == record.counts[0, 0] == 6
    with open(os.path.join(out, "affinity.json")) as f:
        assert "source" in json.load(f)["orientation"]
    npz = np.load(os.path.join(out, "affinity.npz"))
    assert npz["epoch_affinity"].shape == (3, 3, 3)
    png = tf.io.decode_png(tf.io.read_file(os.path.join(out, "affinity.png")))
    assert png.shape[-1] == 3 and png.shape[0] > 0
    assert any(name.startswith("events") for name in os.listdir(logs))


def test_early_stopping_restores_weights_but_keeps_the_recorded_affinities():
    x, y = normal_targets_data(64)
    model = bn_dropout_model(tag_tf.AffinityConfig(every_n=1), dropout=0)
    weights_after_first = []

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                weights_after_first.extend(v.numpy().copy() for v in model.network.weights)

    # mode="max" on the training loss: epoch 0 stays "best", so its weights are restored.
    stop = keras.callbacks.EarlyStopping(monitor="loss", mode="max", patience=5,
                                         restore_best_weights=True)
    model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0,
              callbacks=[Snapshot(), stop])
    for before, variable in zip(weights_after_first, model.network.weights):
        np.testing.assert_array_equal(before, variable.numpy(), err_msg=variable.path)
    # 3 epochs x 4 steps, none rolled back
    assert int(model.affinity_state.affinity_steps.numpy()) == 12
    assert int(model.affinity_state.train_step_counter.numpy()) == 12
    np.testing.assert_array_equal(model.affinity_state.affinity_count.numpy(), 12)
