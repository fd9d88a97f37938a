"""Subprocess body of test_resume.test_mirrored_two_replicas_resume and of
test_strategy_cli.test_mirrored_cli_resume_is_exact (not a test module).

Splits the CPU into 2 logical devices before TensorFlow starts, then either

- ``python -m tests.training.mirrored_resume_run WORK_DIR``: trains a MultiTaskModel under
  MirroredStrategy straight and crashed-then-resumed (tag_tf.training.resume), and prints one JSON
  line comparing the two runs; or
- ``python -m tests.training.mirrored_resume_run cli CRASH_AT CELEBA_MAIN_FLAGS...``: runs
  ``celeba.main`` with those flags, its experiment's callbacks extended by one raising
  ``RuntimeError("crash")`` after the ``CRASH_AT``-th step (0: never).
"""

import dataclasses
import json
import os
import sys

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tag_tf  # noqa: E402
from tag_tf.training import resume  # noqa: E402
from tests import toys  # noqa: E402


def run(strategy, work, name, crash=None, seed=0):
    with strategy.scope():
        model = toys.bn_dropout_model(tag_tf.AffinityConfig(every_n=3), seed=seed,
                                      optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    keras.utils.set_random_seed(0)
    callbacks = [toys.CrashAfterSteps(crash)] if crash else []
    history = resume.resumable_fit(model, toys.shuffled_epoch_batches,
                                   backup_dir=os.path.join(work, name),
                                   save_freq=toys.RESUME_SAVE_FREQ, epochs=toys.RESUME_EPOCHS,
                                   callbacks=callbacks, verbose=0)
    return model, history


def main(work):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    straight, _ = run(strategy, work, "straight")
    try:
        run(strategy, work, "resumed", crash=17)
    except RuntimeError:
        pass
    resumed, history = run(strategy, work, "resumed", seed=1)
    diff = max(float(np.max(np.abs(a.numpy() - b.numpy())))
               for a, b in zip(straight.network.variables, resumed.network.variables))
    print(json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "resumed_epochs": history.epoch,
        "steps": [int(m.affinity_state.train_step_counter.numpy()) for m in (straight, resumed)],
        "max_weight_diff": diff,
        "counts_equal": bool(np.array_equal(straight.affinity_state.affinity_count.numpy(),
                                            resumed.affinity_state.affinity_count.numpy())),
        "affinity_steps_equal": int(straight.affinity_state.affinity_steps.numpy()) ==
        int(resumed.affinity_state.affinity_steps.numpy()),
        "max_affinity_sum_diff": float(np.max(np.abs(straight.affinity_state.affinity_sum.numpy() -
                                                     resumed.affinity_state.affinity_sum.numpy()))),
    }))


def cli(crash_at: int, argv: list) -> None:
    from absl import app  # pylint: disable=g-import-not-at-top

    from celeba import experiment as celeba_experiment  # pylint: disable=g-import-not-at-top
    from celeba import main as celeba_main  # pylint: disable=g-import-not-at-top
    from tag_tf.cli import flags as flags_lib  # pylint: disable=g-import-not-at-top
    build = celeba_experiment.build_experiment

    def with_crash(*args, **kwargs):
        experiment = build(*args, **kwargs)
        callbacks_fn = experiment.callbacks_fn
        return dataclasses.replace(
            experiment, callbacks_fn=lambda: [*callbacks_fn(), toys.CrashAfterSteps(crash_at)])

    if crash_at:
        celeba_experiment.build_experiment = with_crash
    app.run(celeba_main.main, argv=["celeba.main", *argv],
            flags_parser=flags_lib.parser(celeba_main.FLAGS, celeba_main.__doc__))


if __name__ == "__main__":
    if sys.argv[1] == "cli":
        cli(int(sys.argv[2]), sys.argv[3:])
    else:
        main(sys.argv[1])
