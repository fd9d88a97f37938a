r"""Cost of one backup of StepBackupAndRestore: today's atomic commit vs the write before it.

  python -m benchmarks.backup_cost                 # the toy and the paper's CelebA trunk
  python -m benchmarks.backup_cost --rounds=40

Every mode backs up the same trained model, in turns within each round (this machine is
noisy: medians of interleaved calls compare fairly), into its own directory:

  keras        keras.callbacks.BackupAndRestore's own write (save_weights + metadata JSON).
  before       StepBackupAndRestore's write before atomic commits (kept here only, as
               ``_FlatBackup``): the per-replica NPZ, weights, metadata and callback state
               written straight into the backup directory (overwriting; no flush).
  atomic_sync  today's backup with ``async_commit=False``: staging directory, the same
               files, fsync of each file, manifest (sizes, CRC32), rename, directory fsync,
               deletion of the backup before the previous one, all before training goes on.
  atomic       today's default (``async_commit=True``): the training thread writes the
               files into the staging directory; flushing and committing run in a
               background thread while the next steps train and the next backup is
               written. Its columns: what the training thread pays when the previous
               commit has finished (``atomic``: training steps longer than a commit), in
               the worst case (``atomic, back to back``: right after another backup with no
               step between, so the previous commit runs alongside and may be waited for),
               and the background thread's own time per commit (``commit thread``).

Models: ``toy`` (3 small heads on an 8-unit trunk with BatchNorm, TAG state) at
``save_freq=1``, and ``celeba`` (celeba.model: the paper's ResNet trunk, 9 Dense(2) heads,
64x64, SGD momentum, TAG state: a 4.4 MB weights file). Prints one table of median
milliseconds and the ratio to ``before``. Never used by tests.
"""

from __future__ import annotations

import tag_tf.cli.quiet  # noqa: F401  (first: quiets TensorFlow's C++ logs without a GPU)

import io
import json
import os
import shutil
import statistics
import tempfile
import time

import numpy as np
from absl import flags

from tag_tf.cli import errors

FLAGS = flags.FLAGS
flags.DEFINE_integer("rounds", 25, "Timed backups per mode and model (after 2 untimed).")
flags.DEFINE_list("models", ["toy", "celeba"], "Models to back up: toy, celeba.")
flags.DEFINE_string("dir", None, "Where to write (default: a temporary directory on the "
                    "same disk as the system's temp dir).")


def _toy():
    import keras  # pylint: disable=g-import-not-at-top

    import tag_tf  # pylint: disable=g-import-not-at-top
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, use_bias=False, name="trunk")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Activation("relu")(h)
    tasks = ["a", "b", "c"]
    network = keras.Model(inputs, {t: keras.layers.Dense(1, name=t)(h) for t in tasks})
    model = tag_tf.MultiTaskModel(network, shared=["trunk", "bn"],
                                  affinity=tag_tf.AffinityConfig(every_n=1))
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    x = np.random.default_rng(0).normal(size=(16, 6)).astype("float32")
    return model, x, {t: x[:, :1] for t in tasks}


def _celeba():
    import keras  # pylint: disable=g-import-not-at-top

    import tag_tf  # pylint: disable=g-import-not-at-top
    from celeba import model as celeba_model  # pylint: disable=g-import-not-at-top
    tasks = [f"t{k}" for k in range(9)]
    network = celeba_model.celeba_network(tasks)
    model = tag_tf.MultiTaskModel(network, shared=list(celeba_model.TRUNK_LAYERS),
                                  affinity=tag_tf.AffinityConfig(every_n=1))
    model.compile(optimizer=keras.optimizers.SGD(5e-4, momentum=0.9),
                  loss={t: celeba_model.task_loss() for t in tasks})
    x = np.zeros((4, 64, 64, 3), "float32")
    return model, x, {t: np.zeros((4,), "int32") for t in tasks}


def _flat_backup_class():
    """StepBackupAndRestore's write as it was before atomic commits (for comparison)."""
    from tag_tf.training import resume  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    class _FlatBackup(resume.StepBackupAndRestore):
        def _save_model(self):
            self._since_save = 0
            self._save_due = False
            self._last_batch_seen = self._done
            metrics = (resume._local_copies(self.model, self._metric_variables())  # pylint: disable=protected-access
                       if self._done else [])
            copies = resume._local_copies(self.model, resume._replica_variables(self.model))  # pylint: disable=protected-access
            arrays = {f"m{i}": np.asarray(c.numpy()) for i, c in enumerate(metrics)}
            arrays.update({f"r{i}": np.asarray(c.numpy()) for i, c in enumerate(copies)})
            tf.io.gfile.makedirs(self.backup_dir)
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            with tf.io.gfile.GFile(os.path.join(self.backup_dir, "replicas.npz"), "wb") as f:
                f.write(buffer.getvalue())
            self.model.save_weights(filepath=os.path.join(self.backup_dir,
                                                          resume.WEIGHTS_FILE), overwrite=True)
            with tf.io.gfile.GFile(os.path.join(self.backup_dir, resume.METADATA_FILE),
                                   "w") as f:
                json.dump({"epoch": self._current_epoch, "batch": max(self._done - 1, 0),
                           "batches_done": self._done}, f)
            with tf.io.gfile.GFile(os.path.join(self.backup_dir, resume.STATE_FILE),
                                   "w") as f:
                json.dump({"history": {"epoch": [], "history": {}}, "callbacks": []}, f)

    return _FlatBackup


def measure(name, build, root, rounds):
    import keras  # pylint: disable=g-import-not-at-top

    from tag_tf.training import backup_store, resume  # pylint: disable=g-import-not-at-top
    model, x, y = build()
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)  # builds the optimizer state
    flat = _flat_backup_class()
    callbacks = {
        "keras": keras.callbacks.BackupAndRestore(os.path.join(root, name, "keras")),
        "before": flat(os.path.join(root, name, "before"), 1),
        "atomic_sync": resume.StepBackupAndRestore(os.path.join(root, name, "sync"), 1,
                                                   async_commit=False),
        "atomic": resume.StepBackupAndRestore(os.path.join(root, name, "async"), 1),
        "atomic, back to back": resume.StepBackupAndRestore(
            os.path.join(root, name, "async2"), 1),
    }
    commit_seconds = []
    run = backup_store.Commit.run

    def timed_run(self):
        start = time.perf_counter()
        run(self)
        if self.backup_dir.endswith("async"):
            commit_seconds.append(time.perf_counter() - start)

    backup_store.Commit.run = timed_run
    for callback in callbacks.values():
        callback.set_model(model)
        callback.set_params({"steps": 10**6, "epochs": 1})
    times = {mode: [] for mode in callbacks}
    for k in range(rounds + 2):
        for mode, callback in callbacks.items():
            callback._current_epoch, callback._done = 0, k + 1  # pylint: disable=protected-access
            if mode == "atomic":
                callback._finish_commit()  # pylint: disable=protected-access
            if mode == "atomic, back to back":  # the previous backup just before (no step
                callback._done += 10**5  # between): its commit overlaps this one's write,
                callback._save_model()  # and this one waits for the rest
                callback._done -= 10**5  # pylint: disable=protected-access
            start = time.perf_counter()
            callback._save_model()  # pylint: disable=protected-access
            if k >= 2:
                times[mode].append(time.perf_counter() - start)
    for mode in ("atomic", "atomic, back to back"):
        callbacks[mode]._finish_commit()  # pylint: disable=protected-access
    backup_store.Commit.run = run
    size = os.path.getsize(os.path.join(resume.latest_backup(os.path.join(root, name, "sync")),
                                        resume.WEIGHTS_FILE))
    out = {mode: statistics.median(t) for mode, t in times.items()}
    out["atomic (commit thread)"] = statistics.median(commit_seconds[2:])
    return out, size


def main(argv):
    del argv
    builders = {"toy": _toy, "celeba": _celeba}
    root = FLAGS.dir or tempfile.mkdtemp(prefix="tag_tf_backup_cost_")
    try:
        print(f"Median ms per backup over {FLAGS.rounds} interleaved rounds, in {root}:")
        modes = ("keras", "before", "atomic_sync", "atomic", "atomic, back to back",
                 "atomic (commit thread)")
        print(f"{'model':8} {'weights':>9}  " + "  ".join(f"{m:>22}" for m in modes))
        for name in FLAGS.models:
            times, size = measure(name, builders[name], root, FLAGS.rounds)
            base = times["before"]
            cells = []
            for mode in modes:
                cells.append(f"{1000 * times[mode]:8.1f} ({times[mode] / base:4.2f}x)")
            print(f"{name:8} {size / 1e6:7.2f}MB  " + "  ".join(f"{c:>22}" for c in cells))
    finally:
        if FLAGS.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    errors.run(main)
