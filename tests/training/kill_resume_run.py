"""Subprocess body of test_kill_resume (not a test module).

``python -m tests.training.kill_resume_run WORK_DIR [PAUSE_SECONDS]`` trains the toy
(tests.core.test_model: BatchNorm, Dropout, three heads, TAG recording every 2nd step,
validation every epoch, an AffinityLogger) with ``resumable_fit(save_freq=1)`` backing up to
``WORK_DIR/backup``. It prints ``STARTED`` once training begins (after any restore) and,
when training has finished, writes ``WORK_DIR/result.npz`` / ``result.json`` (every model
and optimizer variable, the affinity record, history, the logger's trace) and prints
``DONE``. Killed at any instant and run again, it continues from its last complete backup.

``PAUSE_SECONDS`` (fault injection): every backup sleeps that long in the middle of its
write (after the weights and metadata are in the staging directory, before the callback
states), which widens the window in which a kill lands inside a backup.
"""

import os
import sys
import time

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import json  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tag_tf  # noqa: E402
from tag_tf.experiments import harness  # noqa: E402
from tag_tf.io import atomic  # noqa: E402
from tag_tf.training import resume  # noqa: E402
from tests.toys import bn_dropout_model, normal_targets_data, shuffled_epoch_batches  # noqa: E402

EPOCHS, STEPS = 3, 4  # 4 of shuffled_epoch_batches's 10 batches per epoch: 12 steps in all


class Started(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        print("STARTED", flush=True)


def main(work: str, pause: float) -> None:
    harness.make_deterministic()  # op determinism, one inter-op thread
    tf.config.run_functions_eagerly(True)  # no tracing at every restart
    if pause:
        write_state = resume.StepBackupAndRestore._save_callback_state

        def paused(self, directory):
            time.sleep(pause)  # weights, metadata and replica file written, the rest not
            write_state(self, directory)

        resume.StepBackupAndRestore._save_callback_state = paused
    model = bn_dropout_model(tag_tf.AffinityConfig(every_n=2), seed=0)
    keras.utils.set_random_seed(0)
    logger = tag_tf.AffinityLogger(output_dir=os.path.join(work, "out"))
    x, y = normal_targets_data(80)
    validation = tf.data.Dataset.from_tensor_slices(
        (x[:16], {t: v[:16] for t, v in y.items()})).batch(8)
    history = resume.resumable_fit(model, shuffled_epoch_batches,
                                   backup_dir=os.path.join(work, "backup"),
                                   save_freq=1, epochs=EPOCHS, steps_per_epoch=STEPS,
                                   callbacks=[logger, Started()],
                                   validation_data=validation, verbose=0)
    arrays = {f"v{i}": np.asarray(v.numpy())
              for i, v in enumerate(model.variables + model.optimizer.variables)}
    record = model.affinity_record()
    arrays.update(affinity=record.affinity, counts=record.counts)
    with atomic.atomic_path(os.path.join(work, "result.npz")) as tmp:
        np.savez(tmp, **arrays)
    with open(os.path.join(work, "out", "affinity.json")) as f:
        affinity_file = f.read()
    atomic.atomic_write_json(os.path.join(work, "result.json"), {
        "steps": int(model.affinity_state.train_step_counter.numpy()), "epoch": history.epoch,
        "history": history.history, "trace": json.dumps(logger.epochs),
        "affinity_file": affinity_file})
    print("DONE", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 0.0)
