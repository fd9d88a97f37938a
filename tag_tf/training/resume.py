"""Step-exact resumes for ``fit()``: a run backed up every N batches and resumed equals an
uninterrupted one (same steps, same data, same weights and affinity state).

Keras' ``BackupAndRestore(save_freq=N)`` restores mid-epoch weights but replays the
interrupted epoch from its first batch (and, after one resume, records epoch 0 in its
metadata). Here the training data is one deterministic *stream* of batches in which epoch
``k`` is batches ``[k * steps_per_epoch, (k + 1) * steps_per_epoch)``; a resume skips the
batches already trained and ends the interrupted epoch after its remaining steps::

    history = tag_tf.training.resume.resumable_fit(
        model, make_train_data,              # make_train_data(epoch) -> that epoch's batches
        backup_dir="runs/backup", save_freq=500, epochs=20,
        validation_data=val, callbacks=[tag_tf.AffinityLogger(output_dir="runs/tag")])

or by hand with the two pieces (the callback first in the list)::

    backup = tag_tf.training.resume.StepBackupAndRestore("runs/backup", save_freq=500)
    stream = tag_tf.training.resume.resumable_dataset(make_train_data, steps_per_epoch=spe,
                                             epochs=20, start=backup.resume_point)
    model.fit(stream, epochs=20, steps_per_epoch=spe, callbacks=[backup, ...])

The data may be a factory ``epoch -> tf.data.Dataset`` (cheap: a resume skips batches of
one epoch only) or one seeded ``tf.data.Dataset`` (re-iterated every epoch when finite,
used as is when infinite; a resume then reads and drops every batch already trained).
Either way it must be a deterministic function of the epoch: seeded shuffles. On one device
a dataset reshuffled every iteration is fine (a fresh dataset object repeats its sequence
of orders). Under a ``tf.distribute`` strategy, Keras' ``fit()`` iterates the data once
more before training (it reads a batch to build the model), so there the epoch data must
not depend on how often it was iterated: a factory whose shuffle is seeded by the epoch
with ``reshuffle_each_iteration=False``, e.g.::

    def make_train_data(epoch):
        return files.shuffle(len(files), seed=1000 * seed + epoch,
                             reshuffle_each_iteration=False).map(load).batch(256)

Runs that are not resumed consume the same stream, so both agree step for step.

Callbacks with state to keep (``EarlyStopping``, or any :class:`StatefulCallback`: one with
``get_state()`` / ``set_state()``) are backed up with the model; ``resumable_fit`` finds them
in ``callbacks``. Under ``MultiWorkerMirroredStrategy`` every worker passes the same shared
``backup_dir``; only the chief commits it, and all workers resume from it.

Backups are atomic (:mod:`tag_tf.training.backup_store`): each is written whole into a fresh
directory, flushed and then made current by one rename; the previous complete backup stays
until the next one is committed. A process killed at any instant, even in the middle of
writing a backup, resumes from the newest complete one; a committed backup damaged later
(truncated, a disk error: its files no longer match their recorded sizes and CRC32) is
skipped with a warning naming it and the previous complete backup used instead.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from typing import Any, Callable, NamedTuple, Optional, Protocol, Sequence, Union, \
    runtime_checkable

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tag_tf.io import atomic
from tag_tf.training import backup_store
from tag_tf.training.backup_store import MANIFEST_FILE, METADATA_FILE  # noqa: F401

REPLICA_FILE = "replicas{}.npz"  # one per process: per-replica metric sums and variables
STATE_FILE = "callback_state.json"  # History so far and the stateful callbacks' states
WEIGHTS_FILE = "latest.weights.h5"  # BackupAndRestore's file name
BEST_WEIGHTS_FILE = "callback_{}_best_weights.npz"
_EARLY_STOPPING_STATE = ("wait", "stopped_epoch", "best", "best_epoch")

TrainData = Union[tf.data.Dataset, Callable[[int], tf.data.Dataset]]


@runtime_checkable
class StatefulCallback(Protocol):
    """A callback whose state :class:`StepBackupAndRestore` backs up and restores.

    ``get_state()`` returns a JSON-ready dict (numbers, strings, lists, dicts);
    ``set_state(state)`` is called with it on a resume, after every callback's
    ``on_train_begin`` and before the resumed epoch's ``on_epoch_begin`` of the callbacks
    listed after the backup (so a callback can keep a mid-epoch state through its
    ``on_epoch_begin``).
    """

    def get_state(self) -> dict: ...

    def set_state(self, state: dict) -> None: ...


def has_state(callback: Any) -> bool:
    """Whether :class:`StepBackupAndRestore` can back up ``callback``'s state: a
    :class:`StatefulCallback`, or a ``keras.callbacks.EarlyStopping``."""
    return isinstance(callback, (StatefulCallback, keras.callbacks.EarlyStopping))


def _get_state(callback: Any) -> dict:
    if isinstance(callback, StatefulCallback):
        return callback.get_state()
    return {name: _plain(getattr(callback, name)) for name in _EARLY_STOPPING_STATE
            if getattr(callback, name, None) is not None}


def _set_state(callback: Any, state: dict) -> None:
    if isinstance(callback, StatefulCallback):
        callback.set_state(state)
        return
    for name in _EARLY_STOPPING_STATE:
        if name in state:
            setattr(callback, name, state[name])


def _strategy(model: keras.Model) -> tf.distribute.Strategy:
    return getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()


def _replica_file(model: keras.Model) -> str:
    """This process's file of per-replica states (one per worker under multi-worker)."""
    resolver = getattr(_strategy(model), "cluster_resolver", None)
    if resolver is not None and getattr(resolver, "task_type", None):
        return REPLICA_FILE.format(f"_{resolver.task_type}_{resolver.task_id}")
    return REPLICA_FILE.format("")


def _all_replica_files(model: keras.Model) -> list:
    """Every process's replica file name (all the chief and worker tasks of the cluster)."""
    resolver = getattr(_strategy(model), "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return [REPLICA_FILE.format("")]
    spec = resolver.cluster_spec()
    return [REPLICA_FILE.format(f"_{job}_{i}") for job in ("chief", "worker")
            if job in spec.jobs for i in range(spec.num_tasks(job))]


def _is_legacy_file(name: str) -> bool:
    """A file of the flat layout written before atomic backups (and by Keras' own
    ``BackupAndRestore``: weights, metadata and their ``.bkp`` copies)."""
    return (name.startswith((WEIGHTS_FILE, METADATA_FILE, STATE_FILE, "replicas"))
            or (name.startswith("callback_") and name.endswith("_best_weights.npz")))


def _local_copies(model: keras.Model, variables: Sequence[Any]) -> list:
    """This process's copies of ``variables``: each replica's for a distributed variable
    (SyncOnRead metric sums, per-replica statistics), the variable itself otherwise."""
    strategy = _strategy(model)
    copies = []
    for variable in variables:
        value = getattr(variable, "value", variable)
        if isinstance(value, tf.distribute.DistributedValues):
            copies.extend(strategy.experimental_local_results(value))
        else:
            copies.append(value)
    return copies


def _replica_variables(model: keras.Model) -> list:
    """The model's non-trainable variables held per replica (e.g. BatchNormalization's
    moving statistics, which Keras updates on each replica from its own share of the batch:
    the replicas' copies differ, and a weights file keeps the first replica's only)."""
    return [v for v in model.non_trainable_variables
            if isinstance(getattr(v, "value", v), tf.distribute.DistributedValues)]


def is_chief(model: keras.Model) -> bool:
    """Whether this process writes the backups: always, except under a multi-worker
    strategy, where only the chief (worker 0 without a chief task) does."""
    return bool(getattr(_strategy(model).extended, "should_checkpoint", True))


class ResumePoint(NamedTuple):
    """Where a run resumes: ``batches`` batches of epoch ``epoch`` are already trained."""

    epoch: int = 0
    batches: int = 0


def latest_backup(backup_dir: str) -> Optional[str]:
    """The directory of the newest complete backup in ``backup_dir`` (the one a resume
    uses), or None."""
    return backup_store.latest(backup_dir)


def _source(backup_dir: str) -> tuple:
    """``(directory, scan)``: where a resume reads from (the newest complete backup, or a
    flat backup of an older version / Keras' ``BackupAndRestore`` when there is no
    committed one; None: nothing to resume) and the scan of the committed backups."""
    found = backup_store.scan(backup_dir)
    if found.newest is not None:
        return found.newest, found
    if not found.unusable and tf.io.gfile.exists(os.path.join(backup_dir, METADATA_FILE)):
        return backup_dir, found  # the flat layout
    return None, found


def read_resume_point(backup_dir: str, steps_per_epoch: Optional[int] = None) -> ResumePoint:
    """The point recorded in ``backup_dir`` by :class:`StepBackupAndRestore`; (0, 0) if none.

    The point of the newest complete backup (see :mod:`tag_tf.training.backup_store`). A
    point at the end of an epoch (``batches == steps_per_epoch``) is the next epoch's
    start. A plain ``BackupAndRestore`` file (no batch count) resumes at its epoch's start.
    """
    return _point_of(_source(backup_dir)[0], steps_per_epoch)


def _point_of(source: Optional[str], steps_per_epoch: Optional[int]) -> ResumePoint:
    """The point recorded in the backup directory ``source`` ((0, 0) if None)."""
    if source is None:
        return ResumePoint()
    path = os.path.join(source, METADATA_FILE)
    with tf.io.gfile.GFile(path) as f:
        try:
            metadata = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e
    epoch = int(metadata["epoch"])
    if "batches_done" not in metadata:
        logging.warning("%s has no batch count (written by keras BackupAndRestore?): "
                        "resuming at the start of epoch %d.", path, epoch)
        return ResumePoint(epoch, 0)
    batches = int(metadata["batches_done"])
    if steps_per_epoch and batches >= steps_per_epoch:
        return ResumePoint(epoch + 1, 0)
    return ResumePoint(epoch, batches)


class StepBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` that records and resumes the exact batch of the epoch.

    Saves every ``save_freq`` batches (when the next batch begins, so that the other
    callbacks' states include the batch) and after every epoch, recording the epoch and
    the number of its batches trained (``batches_done``). On restore, the interrupted epoch
    runs only its remaining steps: feed the batches from :attr:`resume_point` on (see
    :func:`resumable_dataset`) with ``fit(steps_per_epoch=...)``. Put it first in the
    callback list (it ends the short epoch through ``model.stop_training`` and clears the
    flag again before other callbacks' ``on_epoch_end``, e.g. ``EarlyStopping``).

    Args:
      backup_dir: the backup directory (used by this run only).
      save_freq: ``"epoch"`` or a number of batches.
      steps_per_epoch: the run's steps per epoch (default: ``fit``'s); normalises a point
        recorded at an epoch's last batch to the next epoch's start.
      double_checkpoint: accepted for ``keras.callbacks.BackupAndRestore``'s signature;
        the previous complete backup is always kept (see below).
      delete_checkpoint: as ``keras.callbacks.BackupAndRestore``: delete the backups when
        ``fit`` ends.
      async_commit: flush and commit each backup in a background thread while training
        goes on (the next backup waits for it); False: commit before training continues.

    Backups are atomic (:mod:`tag_tf.training.backup_store`): each one is written into a
    fresh ``.staging-*`` directory, flushed to disk, then renamed to
    ``backup-e<epoch>-b<batches>`` in one step; the previous complete backup is deleted
    only after the next one is committed. A restore uses the newest complete backup
    (every file matching the sizes and CRC32 of its ``manifest.json``), falls back to the
    previous one with a warning naming both when the newest is damaged, and deletes the
    leftovers of a killed run.

    The running training metrics of the epoch are saved too, so the resumed epoch's logged
    ``loss`` / metrics average over all its steps, and so is the history so far
    (:meth:`complete_history` prepends it to the resumed ``fit``'s ``History``). The
    callbacks listed in ``stateful_callbacks`` keep their state: a
    :class:`StatefulCallback`'s ``get_state()``, an ``EarlyStopping``'s ``wait``,
    ``stopped_epoch``, ``best``, ``best_epoch`` and ``best_weights``; other callbacks'
    state is not saved, as with Keras' callback.

    Multi-worker (``MultiWorkerMirroredStrategy``): every worker runs this callback on the
    same ``backup_dir``, which must be storage all workers share. Only the chief writes
    it, commits it (once every worker's replica file is in it) and deletes it at the end;
    the other workers do the same saving work (in case reading a variable is a
    collective) into a private temporary directory deleted at once. Every worker resumes
    from the same committed backup, so all resume at one point.

    Per-replica copies: under a ``tf.distribute`` strategy Keras updates non-trainable
    variables such as ``BatchNormalization``'s moving statistics on each replica from its
    share of the batch, so the copies differ and a weights file holds only the first.
    Every process also writes its replicas' copies (``replicas*.npz``, one file per
    worker; with the running metric sums, also per replica) and restores them, so
    evaluation and the logged metrics after a resume are exact too.
    """

    def __init__(self, backup_dir: str, save_freq: Union[str, int] = "epoch", *,
                 steps_per_epoch: Optional[int] = None, double_checkpoint: bool = False,
                 delete_checkpoint: bool = True,
                 stateful_callbacks: Sequence[keras.callbacks.Callback] = (),
                 async_commit: bool = True):
        if not (save_freq == "epoch" or (isinstance(save_freq, int) and save_freq >= 1)):
            raise ValueError("save_freq must be 'epoch' or a positive number of batches. "
                             f"Received: save_freq={save_freq!r}")
        super().__init__(backup_dir, save_freq=save_freq, double_checkpoint=double_checkpoint,
                         delete_checkpoint=delete_checkpoint)
        self.steps_per_epoch = steps_per_epoch
        self.async_commit = async_commit
        self._commit: Optional[backup_store.Commit] = None  # the latest, maybe running
        self._legacy_files: list = []  # a flat backup's files, stale after the first commit
        self._source, found = _source(backup_dir)  # where the resume reads
        self._warning = found.warning()
        if self._warning:
            logging.warning(self._warning)
        self.resume_point = _point_of(self._source, steps_per_epoch)
        self._pending = ResumePoint()  # the restored point, applied at its epoch's begin
        self._offset = 0  # batches of the current epoch trained before this fit() call
        self._done = 0  # batches of the current epoch trained so far
        self._since_save = 0
        self._save_due = False
        self._stopped_short = False
        self._metric_values = None  # the restored epoch's metric sums (this process's copies)
        self._replica_state = None
        self._metrics_to_add = None
        self.stateful_callbacks = list(stateful_callbacks)
        for k, callback in enumerate(self.stateful_callbacks):
            if not has_state(callback):
                raise ValueError(
                    f"stateful_callbacks[{k}] ({type(callback).__name__}) has no get_state() "
                    "/ set_state() (tag_tf.training.resume.StatefulCallback) and is not an "
                    "EarlyStopping: its state cannot be backed up.")
        self.restored_history: Optional[dict] = None  # {"epoch": [...], "history": {...}}
        self._restored_callbacks: Optional[list] = None
        self._ended = None  # (epoch, logs) of an epoch that ended, until it is saved
        self._history_epochs: list = []  # this fit's finished epochs and their logs
        self._history_logs: dict = {}

    def _metric_variables(self) -> list:
        return [v for metric in self.model.metrics for v in metric.variables]

    def _steps(self) -> Optional[int]:
        return self.steps_per_epoch or (self.params or {}).get("steps")

    def on_train_begin(self, logs=None):
        self._history_epochs, self._history_logs, self._ended = [], {}, None
        self._load_model()  # (Keras' own fallback to ``*.bkp`` files is not used)

    def _load_model(self):
        backup_store.wait(self.backup_dir)
        chief = is_chief(self.model)
        if chief:
            removed = backup_store.remove_leftovers(self.backup_dir)
            if removed:
                logging.info("Removed the incomplete backup(s) %s a killed run left in %s.",
                             removed, self.backup_dir)
        source, found = _source(self.backup_dir)
        warning = found.warning()
        if warning and warning != self._warning:
            logging.warning(warning)
        if chief:
            for path, _ in found.discarded:  # damaged: never used, so never in the way
                backup_store.discard(path)
            self._legacy_files = backup_store.legacy_files(self.backup_dir, _is_legacy_file)
        self._replica_state = None
        self.restored_history, self._restored_callbacks = None, None
        point = ResumePoint()
        if source is not None:
            self._weights_path = os.path.join(source, WEIGHTS_FILE)
            self._training_metadata_path = os.path.join(source, METADATA_FILE)
            try:
                super()._load_model()  # weights (with the affinity state), Keras' epoch
            except OSError as e:
                e.add_note(f"(loading the backup in {source}, whose files match its manifest: "
                           "was it written by another model?)")
                raise
            if tf.io.gfile.exists(self._weights_path):
                self._restore_replica_state(source)
            point = _point_of(source, self._steps())
        loaded = source is not None and tf.io.gfile.exists(self._weights_path)
        if point != self.resume_point and loaded:
            raise ValueError(
                f"The backup in {self.backup_dir} records {point}, but this callback was "
                f"created when it recorded {self.resume_point}: build the data from "
                "resume_point right before fit().")
        self._pending = point
        self._current_epoch = point.epoch
        state_path = os.path.join(source or self.backup_dir, STATE_FILE)
        if loaded and tf.io.gfile.exists(state_path):
            with tf.io.gfile.GFile(state_path) as f:
                state = json.load(f)
            self.restored_history = state["history"]
            self._restored_callbacks = state["callbacks"]
            for k, saved in enumerate(self._restored_callbacks):
                weights = os.path.join(source, BEST_WEIGHTS_FILE.format(k))
                if saved.get("has_best_weights") and tf.io.gfile.exists(weights):
                    with tf.io.gfile.GFile(weights, "rb") as f:
                        stored = np.load(io.BytesIO(f.read()))
                    saved["best_weights"] = [stored[f"v{i}"] for i in range(len(stored.files))]
        if point.batches and self._replica_state is not None:
            self._metric_values = self._replica_state["metrics"]
        if loaded:
            self.model._initial_epoch = point.epoch  # pylint: disable=protected-access

    def complete_history(self, history: keras.callbacks.History) -> keras.callbacks.History:
        """Prepends the epochs trained before the resume to ``fit``'s ``History``."""
        saved = self.restored_history
        if saved:
            history.epoch = list(saved["epoch"]) + list(history.epoch)
            keys = set(saved["history"]) | set(history.history)
            history.history = {k: list(saved["history"].get(k, [])) +
                               list(history.history.get(k, [])) for k in keys}
        return history

    def on_epoch_begin(self, epoch, logs=None):
        self._save_due = False  # (a batch-count save due at an epoch's end: the end's save)
        if self._ended is not None:
            self._save_epoch_end()
        if self._restored_callbacks is not None:  # after their on_train_begin reset them
            for callback, saved in zip(self.stateful_callbacks, self._restored_callbacks):
                _set_state(callback, saved.get("state", saved))  # (older files: flat)
                if "best_weights" in saved:
                    callback.best_weights = saved["best_weights"]
            self._restored_callbacks = None
        self._current_epoch = epoch
        self._offset = self._pending.batches if epoch == self._pending.epoch else 0
        self._pending = ResumePoint()
        self._done = self._offset
        # fit() reset the metrics just before; the saved sums are added after the first step
        # (the compiled metrics exist by then): exact for additive states (Mean, counts).
        self._metrics_to_add = self._metric_values if self._offset else None
        self._metric_values = None

    def on_train_batch_end(self, batch, logs=None):
        if self._metrics_to_add is not None:
            if self._add_saved_metrics(self._metrics_to_add) and logs is not None:
                # This batch's logs (shared by the callbacks after this one) were computed
                # before the addition: refresh them to the means over all the epoch's steps.
                for key, value in self.model.get_metrics_result().items():
                    if key in logs:
                        logs[key] = _plain(value)
            self._metrics_to_add = None
        done = self._offset + batch + 1  # `batch` is the last step of the execution
        self._since_save += done - self._done
        self._done = done
        steps = self._steps()
        last = bool(steps) and done >= steps  # the epoch's end is saved when it has ended
        if self.save_freq != "epoch" and self._since_save >= self.save_freq and not last:
            self._save_due = True  # saved when the next batch begins: by then the callbacks
            # after this one have processed this batch (their state includes it)
        if self._offset and steps and done >= steps and not self.model.stop_training:
            self.model.stop_training = True  # the resumed epoch has run its remaining steps
            self._stopped_short = True

    def on_train_batch_begin(self, batch, logs=None):
        if self._save_due:
            self._save_model()

    def _add_saved_metrics(self, values) -> bool:
        # Each replica's copy gets its own saved sum back: the sums then equal the
        # uninterrupted run's bit for bit (the same additions, in another order).
        variables = _local_copies(self.model, self._metric_variables())
        if len(variables) != len(values) or any(
                tuple(v.shape) != np.shape(a) for v, a in zip(variables, values)):
            logging.warning("The saved epoch metrics do not match the model's metrics: the "
                            "resumed epoch's logs average its remaining steps only.")
            return False
        for variable, value in zip(variables, values):
            variable.assign(np.asarray(variable.numpy()) + value)
        return True

    def _resume_training(self):
        if self._stopped_short:
            self.model.stop_training = False
            self._stopped_short = False

    def on_test_begin(self, logs=None):  # validation runs before any on_epoch_end
        self._resume_training()

    def on_epoch_end(self, epoch, logs=None):
        self._resume_training()
        # Saved when the next epoch begins: by then the other callbacks have finished this
        # epoch (EarlyStopping's counters, val_summed_loss in the logs, the affinity trace).
        self._ended = (epoch, logs)

    def _save_epoch_end(self):
        epoch, logs = self._ended
        self._ended = None
        self._history_epochs.append(int(epoch))
        for key, value in (logs or {}).items():
            self._history_logs.setdefault(key, []).append(_plain(value))
        self._current_epoch = epoch + 1
        self._done = 0
        self._offset = 0
        self._save_model()  # a point at an epoch boundary: no epoch is replayed

    def _save_model(self):
        self._since_save = 0
        self._save_due = False
        self._last_batch_seen = self._done
        name = backup_store.backup_name(self._current_epoch, self._done)
        staging = os.path.join(self.backup_dir, backup_store.staging_name(name))
        backup_store.makedirs(staging)
        chief = is_chief(self.model)
        self._write_replica_state(staging, shared=not chief)
        if not chief:
            scratch = tempfile.mkdtemp(prefix="tag_tf_backup_worker_")
            try:  # the same reads as the chief (if any is a collective), written nowhere read
                self._write_backup(scratch)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            return
        self._write_backup(staging)
        # The previous backup's commit ran meanwhile (through the steps since and this
        # write); commits stay in order: it finishes before this one starts.
        self._finish_commit()
        commit = backup_store.Commit(
            self.backup_dir, staging, os.path.join(self.backup_dir, name),
            expected=_all_replica_files(self.model), legacy_files=self._legacy_files)
        self._legacy_files = []  # (deleted by the first commit)
        self._commit = commit
        if self.async_commit:
            commit.start()
        else:
            commit.run()

    def _finish_commit(self):
        """Waits for the background commit of the previous backup; raises if it failed."""
        if self._commit is not None:
            commit, self._commit = self._commit, None
            commit.join()

    def _write_replica_state(self, directory: str, shared: bool = False):
        """Every process writes its own replicas' copies (no collective: local reads) of
        the running metric sums and the per-replica variables, into its own file
        (``shared``: atomically, as the chief commits the directory once it appears)."""
        metrics = _local_copies(self.model, self._metric_variables()) if self._done else []
        copies = _local_copies(self.model, _replica_variables(self.model))
        arrays = {f"m{i}": np.asarray(c.numpy()) for i, c in enumerate(metrics)}
        arrays.update({f"r{i}": np.asarray(c.numpy()) for i, c in enumerate(copies)})
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        path = os.path.join(directory, _replica_file(self.model))
        if shared:
            atomic.atomic_write_bytes(path, buffer.getvalue())
        else:
            backup_store.write_file(path, buffer.getvalue())

    def _restore_replica_state(self, directory: str):
        path = os.path.join(directory, _replica_file(self.model))
        if not tf.io.gfile.exists(path):
            return
        with tf.io.gfile.GFile(path, "rb") as f:
            stored = np.load(io.BytesIO(f.read()))

        def group(prefix):
            count = sum(name.startswith(prefix) for name in stored.files)
            return [stored[f"{prefix}{i}"] for i in range(count)]

        self._replica_state = {"metrics": group("m")}
        copies = _local_copies(self.model, _replica_variables(self.model))
        arrays = group("r")
        if len(arrays) != len(copies) or any(
                tuple(c.shape) != a.shape for c, a in zip(copies, arrays)):
            raise ValueError(f"{path} does not match the model's per-replica variables "
                             f"({len(arrays)} arrays for {len(copies)} replica copies): "
                             "resume with the strategy and model of the backed-up run.")
        for copy, array in zip(copies, arrays):
            copy.assign(array)

    def _write_backup(self, directory: str):
        """Weights (with the optimizer and affinity state), the point with its batch count
        and the callback states (the running metrics: :meth:`_write_replica_state`), into
        ``directory`` (the staging directory, flushed and committed afterwards)."""
        self.model.save_weights(filepath=os.path.join(directory, WEIGHTS_FILE),
                                overwrite=True)
        backup_store.write_file(os.path.join(directory, METADATA_FILE), json.dumps(
            {"epoch": self._current_epoch, "batch": max(self._done - 1, 0),
             "batches_done": self._done}).encode())
        self._save_callback_state(directory)

    def on_train_end(self, logs=None):
        self._finish_commit()
        if self.delete_checkpoint and is_chief(self.model) and \
                tf.io.gfile.exists(self.backup_dir):
            tf.io.gfile.rmtree(self.backup_dir)

    def _save_callback_state(self, directory: str):
        before = self.restored_history or {"epoch": [], "history": {}}
        history = {"epoch": list(before["epoch"]) + self._history_epochs,
                   "history": {k: list(before["history"].get(k, [])) +
                               self._history_logs.get(k, [])
                               for k in set(before["history"]) | set(self._history_logs)}}
        callbacks = []
        for k, callback in enumerate(self.stateful_callbacks):
            saved = {"state": _get_state(callback)}
            best_weights = getattr(callback, "best_weights", None)
            saved["has_best_weights"] = best_weights is not None
            if best_weights is not None:
                _write_arrays(os.path.join(directory, BEST_WEIGHTS_FILE.format(k)),
                              best_weights)
            callbacks.append(saved)
        backup_store.write_file(os.path.join(directory, STATE_FILE), json.dumps(
            {"history": history, "callbacks": callbacks}).encode())


def _write_arrays(path: str, arrays: Sequence[Any]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **{f"v{i}": np.asarray(a) for i, a in enumerate(arrays)})
    backup_store.write_file(path, buffer.getvalue())


def _plain(value: Any) -> Any:
    """A JSON-ready Python number (logs hold NumPy / tensor scalars)."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    array = np.asarray(value)
    return array.item() if array.ndim == 0 else array.tolist()


def steps_of(data: TrainData) -> int:
    """Batches per epoch of a finite dataset (or of the factory's epoch 0)."""
    dataset = data(0) if callable(data) else data
    steps = int(dataset.cardinality())
    if steps < 0:
        raise ValueError("Cannot tell the steps per epoch of an infinite or unknown-length "
                         f"dataset (cardinality {steps}); pass steps_per_epoch.")
    if steps == 0:
        raise ValueError("The training dataset is empty.")
    return steps


def resumable_dataset(data: TrainData, *, steps_per_epoch: int, epochs: Optional[int] = None,
                      start: ResumePoint = ResumePoint()) -> tf.data.Dataset:
    """The training stream from ``start`` on: epoch ``k`` is ``steps_per_epoch`` batches.

    Args:
      data: a factory ``epoch -> tf.data.Dataset`` of that epoch's batches (at least
        ``steps_per_epoch`` of them), or one dataset (finite: repeated, each repetition
        being the next epoch's order; infinite: the stream itself).
      steps_per_epoch: batches per epoch; pass the same to ``fit``.
      epochs: needed with a factory: the stream ends after epoch ``epochs - 1``.
      start: the :class:`ResumePoint` (``StepBackupAndRestore.resume_point``).
    """
    if steps_per_epoch is None or steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1. Received: {steps_per_epoch!r}")
    start = ResumePoint(*start)
    if start.epoch < 0 or not 0 <= start.batches < steps_per_epoch:
        raise ValueError(f"start must be (epoch >= 0, 0 <= batches < {steps_per_epoch}). "
                         f"Received: {start}")
    if not callable(data):
        if not isinstance(data, tf.data.Dataset):
            raise ValueError("data must be a tf.data.Dataset or a function epoch -> "
                             f"tf.data.Dataset. Received: {type(data).__name__}")
        infinite = int(data.cardinality()) == tf.data.INFINITE_CARDINALITY
        stream = data if infinite else data.repeat()
        skip = start.epoch * steps_per_epoch + start.batches
        return stream.skip(skip) if skip else stream
    if epochs is None:
        raise ValueError("resumable_dataset(factory) needs epochs (where the stream ends).")
    parts = []
    for epoch in range(start.epoch, epochs):
        dataset = data(epoch)
        if not isinstance(dataset, tf.data.Dataset):
            raise ValueError(f"The data factory must return a tf.data.Dataset. Received for "
                             f"epoch {epoch}: {type(dataset).__name__}")
        size = int(dataset.cardinality())
        if 0 <= size < steps_per_epoch:
            raise ValueError(f"Epoch {epoch}'s dataset has {size} batches, fewer than "
                             f"steps_per_epoch={steps_per_epoch}.")
        dataset = dataset.take(steps_per_epoch)
        if epoch == start.epoch and start.batches:
            dataset = dataset.skip(start.batches)
        parts.append(dataset)
    if not parts:
        raise ValueError(f"Nothing left to train: start epoch {start.epoch} >= epochs {epochs}.")
    stream = parts[0]
    for part in parts[1:]:
        stream = stream.concatenate(part)
    return stream


def resumable_fit(model: keras.Model, data: TrainData, *, backup_dir: str,
                  save_freq: Union[str, int] = "epoch", epochs: int = 1,
                  steps_per_epoch: Optional[int] = None, callbacks: Sequence[Any] = (),
                  **fit_kwargs) -> keras.callbacks.History:
    """``model.fit`` on ``data`` that backs up to ``backup_dir`` and resumes step-exactly.

    Calling it again after a crash (same arguments, a freshly built model) continues at
    the backed-up batch; the finished run equals an uninterrupted one (the returned
    ``History`` includes the epochs before the resume); the state of the ``callbacks``
    that have one (:func:`has_state`) is backed up too. ``steps_per_epoch``
    defaults to the length of a finite dataset (or of the factory's epoch 0).
    ``fit_kwargs`` go to ``fit`` (``validation_data``, ``verbose``, ...).
    """
    for key in ("initial_epoch", "x", "y", "shuffle", "batch_size"):
        if key in fit_kwargs:
            raise ValueError(f"resumable_fit sets {key!r} itself (the stream decides the "
                             "batches and the backup the first epoch).")
    steps = steps_per_epoch or steps_of(data)
    backup = StepBackupAndRestore(backup_dir, save_freq, steps_per_epoch=steps,
                                  stateful_callbacks=[c for c in callbacks if has_state(c)])
    stream = resumable_dataset(data, steps_per_epoch=steps, epochs=epochs,
                               start=backup.resume_point)
    # shuffle=False: the stream decides the batches (Keras ignores shuffle=True for a
    # tf.data.Dataset, with a warning).
    history = model.fit(stream, epochs=epochs, steps_per_epoch=steps, shuffle=False,
                        callbacks=[backup, *callbacks], **fit_kwargs)
    return backup.complete_history(history)
