"""Step-exact resume (tag_tf.training.resume): a run crashed mid-epoch and resumed equals an
uninterrupted one: same steps, bit-identical weights, affinity state and per-epoch trace."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tag_tf
from tag_tf.training import resume
from tests import toys
from tests.toys import CrashAfterSteps, bn_dropout_model, shuffled_epoch_batches

STEPS, EPOCHS, SAVE_FREQ = toys.RESUME_STEPS, toys.RESUME_EPOCHS, toys.RESUME_SAVE_FREQ
STATE = ["affinity_sum", "affinity_count", "affinity_skipped", "affinity_steps",
         "train_step_counter"]


def one_dataset():
    """One seeded dataset reshuffled every epoch (re-iterated: the stream is its repeat)."""
    x, y = toys.normal_targets_data(80)
    return tf.data.Dataset.from_tensor_slices((x, y)).shuffle(
        80, seed=7, reshuffle_each_iteration=True).batch(8)


def run(tmp_path, name, *, data=shuffled_epoch_batches, crash=None, seed=0, logger=True):
    """One (possibly crashing) resumable_fit; the same seeds every time, as a restarted job."""
    model = bn_dropout_model(tag_tf.AffinityConfig(every_n=3), seed=seed)
    keras.utils.set_random_seed(0)  # the data's shuffles depend on the global seed too
    callbacks = [tag_tf.AffinityLogger(output_dir=str(tmp_path / name / "out"))] if logger else []
    if crash:
        callbacks.append(CrashAfterSteps(crash))
    history = resume.resumable_fit(model, data() if data is one_dataset else data,
                                   backup_dir=str(tmp_path / name / "backup"),
                                   save_freq=SAVE_FREQ, epochs=EPOCHS, callbacks=callbacks,
                                   verbose=0)
    return model, history, (callbacks[0] if logger else None)


def assert_same_run(straight, resumed, exact=True):
    for name in STATE:
        np.testing.assert_array_equal(getattr(straight.affinity_state, name).numpy(),
                                      getattr(resumed.affinity_state, name).numpy(),
                                      err_msg=name)
    for a, b in zip(straight.network.variables + straight.optimizer.variables,
                    resumed.network.variables + resumed.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def backup_point(tmp_path, name):
    return resume.read_resume_point(str(tmp_path / name / "backup"), STEPS)


@pytest.mark.slow  # ~35 s on 2 shared cores (3 trainings)
def test_crash_mid_epoch_resumes_exactly(tmp_path, eager):
    straight, history, straight_log = run(tmp_path, "straight")
    assert int(straight.affinity_state.train_step_counter.numpy()) == EPOCHS * STEPS
    assert not os.path.exists(tmp_path / "straight" / "backup")  # deleted when finished

    with pytest.raises(RuntimeError, match="crash"):
        run(tmp_path, "resumed", crash=17)  # step 17 = epoch 1, batch 7
    assert backup_point(tmp_path, "resumed") == (1, 4)  # saved after epoch 1's 4th batch

    steps = []

    class Count(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            steps.append(batch)

    model = bn_dropout_model(tag_tf.AffinityConfig(every_n=3), seed=1)  # other init: restored
    keras.utils.set_random_seed(0)
    logger = tag_tf.AffinityLogger(output_dir=str(tmp_path / "resumed" / "out"))
    resumed_history = resume.resumable_fit(
        model, shuffled_epoch_batches, backup_dir=str(tmp_path / "resumed" / "backup"),
        save_freq=SAVE_FREQ, epochs=EPOCHS, callbacks=[logger, Count()], verbose=0)
    assert len(steps) == EPOCHS * STEPS - 14  # 10 + 4 steps were trained before the crash
    assert resumed_history.epoch == [0, 1, 2]  # epoch 0's entries come from the backup
    assert_same_run(straight, model)
    assert resumed_history.history == history.history
    # The per-epoch trace: epoch 1's mean covers all its steps, not just the resumed ones.
    assert straight_log.epochs == logger.epochs


@pytest.mark.slow
def test_second_crash_in_the_resumed_epoch(tmp_path, eager):
    straight, _, _ = run(tmp_path, "straight", logger=False)
    with pytest.raises(RuntimeError):
        run(tmp_path, "resumed", crash=17, logger=False)  # backup (1, 4)
    with pytest.raises(RuntimeError):
        run(tmp_path, "resumed", crash=5, logger=False)  # steps (1,5)..(1,9): backup (1, 8)
    assert backup_point(tmp_path, "resumed") == (1, 8)
    resumed, history, _ = run(tmp_path, "resumed", logger=False)
    assert history.epoch == [0, 1, 2]
    assert_same_run(straight, resumed)


@pytest.mark.slow
def test_one_seeded_dataset_resumes_exactly(tmp_path, eager):
    """A plain reshuffling dataset (no factory) is exact too: the resume re-reads its stream."""
    straight, _, _ = run(tmp_path, "straight", data=one_dataset, logger=False)
    with pytest.raises(RuntimeError):
        run(tmp_path, "resumed", data=one_dataset, crash=17, logger=False)
    assert backup_point(tmp_path, "resumed") == (1, 4)
    resumed, history, _ = run(tmp_path, "resumed", data=one_dataset, logger=False)
    assert history.epoch == [0, 1, 2]
    assert_same_run(straight, resumed)


@pytest.mark.slow
def test_keras_backup_and_restore_replays_the_epoch(tmp_path, eager):
    """The problem solved here: Keras' own callback trains the interrupted epoch again."""
    model = bn_dropout_model(None)
    stream = resume.resumable_dataset(shuffled_epoch_batches, steps_per_epoch=STEPS, epochs=EPOCHS)
    backup = str(tmp_path / "keras")
    with pytest.raises(RuntimeError):
        model.fit(stream, epochs=EPOCHS, steps_per_epoch=STEPS, verbose=0, callbacks=[
            keras.callbacks.BackupAndRestore(backup, save_freq=SAVE_FREQ), CrashAfterSteps(17)])
    model = bn_dropout_model(None)
    history = model.fit(stream, epochs=EPOCHS, steps_per_epoch=STEPS, verbose=0, callbacks=[
        keras.callbacks.BackupAndRestore(backup, save_freq=SAVE_FREQ)])
    assert history.epoch == [1, 2]
    assert int(model.optimizer.iterations.numpy()) == 16 + 2 * STEPS  # 36 steps, not 30


def test_resume_point_file(tmp_path):
    assert resume.read_resume_point(str(tmp_path)) == (0, 0)
    path = tmp_path / resume.METADATA_FILE
    path.write_text(json.dumps({"epoch": 3, "batch": 4, "batches_done": 5}))
    assert resume.read_resume_point(str(tmp_path)) == (3, 5)
    path.write_text(json.dumps({"epoch": 3, "batch": 9, "batches_done": 10}))
    assert resume.read_resume_point(str(tmp_path), steps_per_epoch=10) == (4, 0)
    path.write_text(json.dumps({"epoch": 2, "batch": 3}))  # keras' own: epoch start
    assert resume.read_resume_point(str(tmp_path)) == (2, 0)
    path.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        resume.read_resume_point(str(tmp_path))


def test_resumable_dataset_skips_exactly_the_trained_batches():
    def ids(epoch):
        return tf.data.Dataset.range(epoch * 100, epoch * 100 + 5)

    stream = resume.resumable_dataset(ids, steps_per_epoch=4, epochs=3,
                                      start=resume.ResumePoint(1, 3))
    assert [int(v) for v in stream] == [103, 200, 201, 202, 203]
    one = tf.data.Dataset.range(6)
    stream = resume.resumable_dataset(one, steps_per_epoch=4, start=resume.ResumePoint(1, 1))
    assert [int(v) for v in stream.take(6)] == [5, 0, 1, 2, 3, 4]  # [0..3][4,5,0,1][...]


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="save_freq"):
        resume.StepBackupAndRestore("/tmp/x", save_freq=0)
    with pytest.raises(ValueError, match="fewer than steps_per_epoch"):
        resume.resumable_dataset(lambda e: tf.data.Dataset.range(3), steps_per_epoch=4,
                                 epochs=1)
    with pytest.raises(ValueError, match="needs epochs"):
        resume.resumable_dataset(lambda e: tf.data.Dataset.range(3), steps_per_epoch=2)
    with pytest.raises(ValueError, match="start"):
        resume.resumable_dataset(tf.data.Dataset.range(3), steps_per_epoch=2,
                                 start=resume.ResumePoint(0, 2))
    with pytest.raises(ValueError, match="steps per epoch"):
        resume.steps_of(tf.data.Dataset.range(3).repeat())
    with pytest.raises(ValueError, match="initial_epoch"):
        resume.resumable_fit(bn_dropout_model(None), shuffled_epoch_batches, backup_dir="/tmp/x",
                             initial_epoch=1)


@pytest.mark.slow
def test_mirrored_two_replicas_resume(tmp_path):
    """Under MirroredStrategy on 2 logical CPUs (a subprocess: devices are set before TF
    starts): weights and step/record counts equal an uninterrupted run's."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS="0",
               CUDA_VISIBLE_DEVICES="")
    out = subprocess.run([sys.executable, "-m", "tests.training.mirrored_resume_run", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=900,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["resumed_epochs"] == [0, 1, 2]
    assert result["steps"] == [30, 30]
    assert result["max_weight_diff"] <= 1e-6
    assert result["counts_equal"] and result["affinity_steps_equal"]
    # Resumed vs straight, both mirrored: the affinity sums (reduced across the replicas to
    # what one device records) are held to the weights' bound, 1e-6.
    assert result["max_affinity_sum_diff"] <= 1e-6


@pytest.mark.slow
def test_pipeline_backup_dir_resumes_exactly(tmp_path, eager):
    """pipeline.run(backup_dir=...): a run crashed mid-epoch and rerun gives the same
    results (affinity matrix and trace, history, early stopping, test losses) as an
    uninterrupted one."""
    from tag_tf.runner import pipeline  # pylint: disable=g-import-not-at-top
    from tag_tf.runner.config import RunConfig  # pylint: disable=g-import-not-at-top

    def run_pipeline(name, crash=None):
        keras.utils.set_random_seed(0)  # the datasets' shuffles depend on the global seed
        experiment = toys.planted_experiment(
            callbacks_fn=(lambda: [CrashAfterSteps(crash)]) if crash else list)
        options = RunConfig().replace(epochs=3, patience=1, every_n=2, verbose=0,
                                      backup_dir=str(tmp_path / name / "backup"), save_freq=2)
        return pipeline.run("affinity", experiment, options,
                            output_dir=str(tmp_path / name / "out"))

    straight = run_pipeline("straight")
    with pytest.raises(RuntimeError):
        run_pipeline("resumed", crash=7)  # 4 batches per epoch: backup at (1, 2)
    assert resume.read_resume_point(str(tmp_path / "resumed" / "backup" / "network_0"),
                                    4) == (1, 2)
    resumed = run_pipeline("resumed")
    assert resumed["affinity"]["matrix"] == straight["affinity"]["matrix"]
    assert resumed["test_loss"] == straight["test_loss"]
    network, straight_network = (r["networks"][0] for r in (resumed, straight))
    # EarlyStopping's state and the history before the crash come from the backup.
    for key in ("history", "epochs_run", "best_epoch", "stopped_early",
                "best_validation_loss", "test"):
        assert network[key] == straight_network[key], key
    with open(tmp_path / "straight" / "out" / "affinity.json") as f:
        expected = json.load(f)
    with open(tmp_path / "resumed" / "out" / "affinity.json") as f:
        assert json.load(f)["epochs"] == expected["epochs"]


class LearningRates(keras.callbacks.Callback):
    """The learning rate after every step."""

    def __init__(self):
        super().__init__()
        self.rates = []

    def on_train_batch_end(self, batch, logs=None):
        self.rates.append(float(self.model.optimizer.learning_rate.numpy()))


def _plateau_run(tmp_path, crash=None):
    from taskonomy.training import PlateauHalving  # pylint: disable=g-import-not-at-top
    model = bn_dropout_model(None)
    keras.utils.set_random_seed(0)
    plateau = PlateauHalving(8, window=64, max_window=64, min_learning_rate=1e-9,
                             start_epoch=0)
    rates = LearningRates()
    callbacks = [plateau, rates] + ([CrashAfterSteps(crash)] if crash else [])
    try:
        resume.resumable_fit(model, shuffled_epoch_batches, backup_dir=str(tmp_path / "backup"),
                             save_freq=SAVE_FREQ, epochs=EPOCHS, callbacks=callbacks,
                             verbose=0)
    except RuntimeError:
        pass
    return plateau, rates.rates


@pytest.mark.slow  # ~10 s: 3 short trainings
def test_taskonomy_plateau_schedule_resumes_exactly(tmp_path, eager):
    """Taskonomy's PlateauHalving keeps its state (loss window, halvings) in the backups:
    a run crashed mid-epoch and resumed halves the learning rate at the same steps."""
    straight, expected = _plateau_run(tmp_path / "straight")
    assert straight.halvings >= 2  # the schedule does something in these 30 steps
    _, before = _plateau_run(tmp_path / "resumed", crash=17)
    point = resume.read_resume_point(str(tmp_path / "resumed" / "backup"), STEPS)
    assert point == (1, 4)
    resumed, after = _plateau_run(tmp_path / "resumed")
    kept = point.epoch * STEPS + point.batches
    assert len(after) == EPOCHS * STEPS - kept
    assert len(set(after)) > 1  # the learning rate changes after the resume
    assert before[:kept] + after == expected
    assert resumed.get_state() == straight.get_state()


def test_stateful_callbacks_need_a_state():
    with pytest.raises(ValueError, match="get_state"):
        resume.StepBackupAndRestore("/tmp/x", stateful_callbacks=[keras.callbacks.History()])
    assert resume.has_state(keras.callbacks.EarlyStopping())
    assert not resume.has_state(keras.callbacks.History())


@pytest.mark.slow  # ~25 s on 2 loaded cores (a fake tree, 5 small pipelines)
def test_taskonomy_epoch_data_is_the_stream_cut_into_epochs(tmp_path):
    """taskonomy.data.epoch_data_fn: epoch k is the k-th slice of one endless stream (every
    pass a seeded permutation with flips), the same on every iteration."""
    from taskonomy import data  # pylint: disable=g-import-not-at-top
    from taskonomy import testing  # pylint: disable=g-import-not-at-top
    root = str(tmp_path / "data")
    testing.write_fake_taskonomy(root, size=16, frames=3)
    examples = data.split_examples(root, "n", "train")
    size = len(examples)
    fn = data.epoch_data_fn(examples, batch_size=2, steps_per_epoch=2, seed=3, image_size=16)
    reference = [x for x, _ in data.make_dataset(examples, batch_size=1, training=False,
                                                  image_size=16).unbatch().as_numpy_iterator()]

    def ids(dataset):
        out = []
        for x, _ in dataset.unbatch().as_numpy_iterator():
            match = [i for i, r in enumerate(reference) if np.array_equal(r, x)]
            mirrored = [i for i, r in enumerate(reference) if np.array_equal(r[:, ::-1], x)]
            out.append((match or mirrored)[0] if match or mirrored else None)
        return out

    assert 2 * size % 4 == 0 and size % 4, size  # (6) epochs cross the passes' boundary
    epochs = [ids(fn(k)) for k in range(2 * size // 4)]  # 4 examples per epoch: 2 passes
    assert all(len(e) == 4 and None not in e for e in epochs)
    assert int(fn(0).cardinality()) == 2  # known: fit() and resume.steps_of can count it
    assert ids(fn(1)) == epochs[1]  # re-iterating gives the same batches
    stream = [i for e in epochs for i in e]
    passes = [stream[:size], stream[size:]]
    assert all(sorted(p) == list(range(size)) for p in passes)  # each pass is a permutation
    assert passes[0] != passes[1]  # reshuffled between passes
    other = data.epoch_data_fn(examples, batch_size=2, steps_per_epoch=2, seed=4,
                               image_size=16)
    assert ids(other(0)) != epochs[0]
