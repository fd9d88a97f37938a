"""Atomic backups (tag_tf.training.backup_store): a backup interrupted in the middle of its
commit, or damaged after it, never stops a resume; the previous complete backup is used."""

import logging
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tag_tf
from tag_tf.training import backup_store, resume
from tests.toys import CrashAfterSteps, bn_dropout_model, shuffled_epoch_batches

STEPS = 4  # one epoch of 4 batches (of test_resume's data), a backup after every batch


class Interrupted(Exception):
    pass


def fit(tmp_path, *, crash=None, seed=0, async_commit=True, epochs=1, callbacks=()):
    """resumable_fit by hand (to choose async_commit); returns (model, history, steps run)."""
    # Records at step 0 only (the state is in every backup; recording steps are slow in
    # eager mode, and the slow fault-injection test records every step).
    model = bn_dropout_model(tag_tf.AffinityConfig(every_n=100), seed=seed)
    keras.utils.set_random_seed(0)
    steps = []

    class Count(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            steps.append(batch)

    backup = resume.StepBackupAndRestore(str(tmp_path / "backup"), 1, steps_per_epoch=STEPS,
                                         async_commit=async_commit)
    stream = resume.resumable_dataset(shuffled_epoch_batches, steps_per_epoch=STEPS, epochs=epochs,
                                      start=backup.resume_point)
    extra = [CrashAfterSteps(crash)] if crash else []
    history = model.fit(stream, epochs=epochs, steps_per_epoch=STEPS, verbose=0,
                        callbacks=[backup, Count(), *callbacks, *extra])
    return model, backup.complete_history(history), steps


def state(model):
    """Everything the model holds (weights, optimizer, affinity state, RNG), as arrays."""
    return [np.asarray(v.numpy()) for v in model.variables + model.optimizer.variables]


def assert_same(a, b):
    for x, y in zip(state(a), state(b), strict=True):
        np.testing.assert_array_equal(x, y)
    for measure in ("lookahead",):
        ra, rb = a.affinity_record(measure), b.affinity_record(measure)
        np.testing.assert_array_equal(ra.affinity, rb.affinity)
        np.testing.assert_array_equal(ra.counts, rb.counts)


def listing(directory):
    return sorted(os.listdir(directory))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run (eager, like the tests)."""
    tf.config.run_functions_eagerly(True)
    try:
        model, history, _ = fit(tmp_path_factory.mktemp("straight"))
    finally:
        tf.config.run_functions_eagerly(False)
    return model, history


@pytest.mark.parametrize("async_commit", [
    True, pytest.param(False, marks=pytest.mark.slow)], ids=["async", "sync"])
def test_backup_interrupted_mid_commit_uses_the_previous_one(tmp_path, eager, monkeypatch,
                                                             straight, async_commit):
    """The 3rd backup's writer raises after the weights file is written: the staging
    directory is left half written, the 2nd backup stays current, and the rerun resumes
    from it, removes the leftover and ends equal to the uninterrupted run."""
    original = resume.StepBackupAndRestore._save_callback_state
    calls = []

    def half_written(self, directory):
        calls.append(directory)
        if len(calls) == 3:
            assert os.path.exists(os.path.join(directory, resume.WEIGHTS_FILE))
            raise Interrupted("killed in the middle of the backup")
        original(self, directory)

    monkeypatch.setattr(resume.StepBackupAndRestore, "_save_callback_state", half_written)
    with pytest.raises(Interrupted):
        fit(tmp_path, async_commit=async_commit)
    monkeypatch.undo()
    backup_dir = tmp_path / "backup"
    # Backups after batches 1 and 2 were committed, the 3rd is staged.
    assert listing(backup_dir) == [".staging-e000000-b000000003", "backup-e000000-b000000001",
                                   "backup-e000000-b000000002"]
    staged = listing(backup_dir / ".staging-e000000-b000000003")
    assert resume.WEIGHTS_FILE in staged and resume.MANIFEST_FILE not in staged
    assert resume.read_resume_point(str(backup_dir), STEPS) == (0, 2)
    assert resume.latest_backup(str(backup_dir)) == str(backup_dir / "backup-e000000-b000000002")

    model, history, steps = fit(tmp_path, seed=1, async_commit=async_commit)
    assert len(steps) == STEPS - 2
    assert not backup_dir.exists()  # deleted at the end, leftovers included
    assert_same(straight[0], model)
    assert history.history == straight[1].history


def test_failed_background_commit_is_raised_and_keeps_the_previous(tmp_path, eager,
                                                                   monkeypatch):
    """A commit that fails in the background thread (here: its rename) stops training at
    the next backup with the error, and the backup before it stays current."""
    rename = backup_store._rename  # pylint: disable=protected-access
    renames = []

    def failing(src, dst):
        if os.path.basename(src).startswith(backup_store.STAGING_PREFIX):
            renames.append(dst)
            if len(renames) == 2:
                raise OSError("no space left on device")
        return rename(src, dst)

    monkeypatch.setattr(backup_store, "_rename", failing)
    with pytest.raises(RuntimeError, match="Committing the backup .*b000000002 failed: no space"):
        fit(tmp_path)
    monkeypatch.undo()
    assert resume.read_resume_point(str(tmp_path / "backup"), STEPS) == (0, 1)


def test_damaged_newest_backup_falls_back_with_a_warning_naming_both(tmp_path, eager, caplog,
                                                                     straight):
    with pytest.raises(RuntimeError, match="crash"):
        fit(tmp_path, crash=3)  # backups after batches 1 and 2 remain
    backup_dir = tmp_path / "backup"
    newest, previous = (str(backup_dir / n) for n in ("backup-e000000-b000000002",
                                                     "backup-e000000-b000000001"))
    assert resume.latest_backup(str(backup_dir)) == newest
    weights = os.path.join(newest, resume.WEIGHTS_FILE)
    with open(weights, "r+b") as f:  # truncated by something else after the commit
        f.truncate(200)
    with caplog.at_level(logging.WARNING):
        model, history, steps = fit(tmp_path, seed=1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(newest in w and previous in w and "200 bytes" in w for w in warnings), warnings
    assert len(steps) == STEPS - 1  # resumed from the previous backup
    assert_same(straight[0], model)
    assert history.history == straight[1].history


@pytest.mark.slow  # ~10 s under load
def test_every_backup_damaged_starts_over_instead_of_crashing(tmp_path, eager, caplog,
                                                              straight):
    with pytest.raises(RuntimeError, match="crash"):
        fit(tmp_path, crash=3)
    backup_dir = tmp_path / "backup"
    for name in listing(backup_dir):
        os.remove(backup_dir / name / resume.MANIFEST_FILE)
    with caplog.at_level(logging.WARNING):
        model, _, steps = fit(tmp_path)
    assert any("training starts from the beginning" in r.getMessage() for r in caplog.records)
    assert len(steps) == STEPS
    assert_same(straight[0], model)


def test_verify_and_leftovers(tmp_path):
    """The manifest check names what is wrong; leftovers are removed; the chosen backup is
    the newest complete one."""
    root = tmp_path / "b"

    def commit(epoch, batches, files):
        name = backup_store.backup_name(epoch, batches)
        staging = root / backup_store.staging_name(name)
        staging.mkdir(parents=True)
        for file, data in files.items():
            (staging / file).write_bytes(data)
        backup_store.Commit(str(root), str(staging), str(root / name)).run()
        return root / name

    meta = b'{"epoch": 0, "batch": 0, "batches_done": 1}'
    first = commit(0, 1, {resume.METADATA_FILE: meta, "w": b"abc"})
    second = commit(0, 2, {resume.METADATA_FILE: meta, "w": b"abcd"})
    assert backup_store.latest(str(root)) == str(second)
    third = commit(1, 0, {resume.METADATA_FILE: meta, "w": b"x"})
    assert listing(root) == [second.name, third.name]  # the oldest was deleted
    assert not first.exists()
    (third / "w").write_bytes(b"y")  # same size, other bytes
    with pytest.raises(backup_store.Unusable, match="CRC32"):
        backup_store.verify(str(third))
    found = backup_store.scan(str(root))
    assert found.newest == str(second)
    assert str(third) in found.warning() and str(second) in found.warning()
    os.remove(second / "w")
    with pytest.raises(backup_store.Unusable, match="w is missing"):
        backup_store.verify(str(second))
    (root / ".staging-e000002-b000000000").mkdir()
    (root / ".trash-1234-x").mkdir()
    assert sorted(backup_store.remove_leftovers(str(root))) == [
        ".staging-e000002-b000000000", ".trash-1234-x"]
    assert listing(root) == [second.name, third.name]
