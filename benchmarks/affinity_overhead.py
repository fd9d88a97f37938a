r"""Cost of TAG's affinity step on the CelebA trunk, measured side by side in one run.

  python -m benchmarks.affinity_overhead            # batch 256, 64x64, 9 tasks (minutes on CPU)
  python -m benchmarks.affinity_overhead --batch_size=32 --image_size=32   # quick
  python -m benchmarks.affinity_overhead --strategy=mirrored --batch_size=32 --image_size=32

Step times are measured in ONE process with the modes taking turns step by step (this
machine is noisy; medians of interleaved steps compare fairly); peak RSS is measured per
mode in its own short subprocess. Modes:
  plain       MultiTaskModel(affinity=None): exactly Keras' train_step.
  tag_every_1 TAG recording on every step: the cost of one affinity step.
  tag_every_10 TAG every 10 steps (the paper's setting): 10 consecutive steps.
  naive       the loop a Keras user would write: per task, the tape's gradient of the
              shared variables, assign_sub on them, a full forward pass, restore; then a
              normal training step.
Prints per-step seconds, ratios to plain training and peak RSS. Never used by tests.

``--strategy=mirrored`` instead compares TAG / plain under one replica (default strategy)
and under ``--replicas`` replicas of ``tf.distribute.MirroredStrategy`` (the local GPUs, or
without GPUs the CPU split into that many logical devices), all modes interleaved in one
process; ``--batch_size`` is the global batch in both.
"""

from __future__ import annotations

import tag_tf.quiet  # noqa: F401  (first: quiets TensorFlow's C++ logs without a GPU)

import json
import os
import resource
import subprocess
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_enum("mode", None, ["plain", "tag_every_1", "tag_every_10", "naive"],
                  "Run one mode (internal); unset runs all and prints the table.")
flags.DEFINE_integer("batch_size", 256, "Batch size (paper: 256).")
flags.DEFINE_integer("image_size", 64, "Image side (paper: 64).")
flags.DEFINE_integer("tasks", 9, "Number of Dense(2) heads.")
flags.DEFINE_integer("steps", 3, "Timed rounds; tag_every_10 times 10 steps per round.")
flags.DEFINE_integer("warmup", 1, "Untimed steps (tracing) per mode.")
flags.DEFINE_enum("strategy", "default", ["default", "mirrored"],
                  "mirrored: TAG / plain under --replicas replicas beside one replica.")
flags.DEFINE_integer("replicas", 2, "--strategy=mirrored: logical CPU devices to create "
                     "when there is no GPU.")

MODES = ("plain", "tag_every_1", "tag_every_10", "naive")


def _data(batch_size, image_size, tasks):
    import numpy as np  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(0)
    x = rng.random((batch_size, image_size, image_size, 3), dtype=np.float32)
    y = {t: rng.integers(0, 2, size=(batch_size,)) for t in tasks}
    return x, y


def _build(mode, tasks, image_size):
    import keras  # pylint: disable=import-outside-toplevel
    import tag_tf  # pylint: disable=import-outside-toplevel
    from celeba.model import TRUNK_LAYERS, celeba_network  # pylint: disable=import-outside-toplevel
    network = celeba_network(tasks, image_size=image_size)
    every_n = {"tag_every_1": 1, "tag_every_10": 10}.get(mode)
    config = tag_tf.AffinityConfig(every_n=every_n) if every_n else None
    model = tag_tf.MultiTaskModel(network, shared=list(TRUNK_LAYERS), affinity=config)
    model.compile(optimizer=keras.optimizers.SGD(5e-4, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _naive_step_fn(model):
    """The straightforward TAG loop, as a user would write it (inside tf.function)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    losses = model._task_losses  # pylint: disable=protected-access
    shared = model.shared_variables
    lr = 5e-4

    @tf.function
    def step(x, y):
        with tf.GradientTape(persistent=True) as tape:
            before = losses.compute(y, model(x, training=True))
        rows = []
        for loss in before:
            grads = tape.gradient(loss, shared)
            for variable, grad in zip(shared, grads):
                variable.assign_sub(lr * grad)
            after = losses.compute(y, model(x, training=True))
            for variable, grad in zip(shared, grads):
                variable.assign_add(lr * grad)
            rows.append(tf.stack([1.0 - a / b for a, b in zip(after, before)]))
        del tape
        return tf.stack(rows)

    return step


def _step_fns(modes, batch_size, image_size, num_tasks, strategy=None):
    """One callable per mode, each doing one training step of that mode on a fixed batch
    (models built under ``strategy`` when given)."""
    import contextlib  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tasks = [f"task_{k}" for k in range(num_tasks)]
    x, y = _data(batch_size, image_size, tasks)
    fns = {}
    for mode in modes:
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            model = _build(mode, tasks, image_size)
        if mode == "naive":
            naive = _naive_step_fn(model)
            xt, yt = tf.constant(x), {t: tf.constant(v) for t, v in y.items()}

            def step(model=model, naive=naive, xt=xt, yt=yt):
                naive(xt, yt).numpy()
                model.train_on_batch(x, y)
        else:
            def step(model=model):
                model.train_on_batch(x, y)
        fns[mode] = (model, step)
    return fns


def peak_memory(mode, batch_size, image_size, num_tasks):
    """Peak RSS (MiB) of a process that traces and runs a few steps of one mode."""
    (model, step), = _step_fns([mode], batch_size, image_size, num_tasks).values()
    for _ in range(2 if mode != "tag_every_10" else 1):
        step()  # step 0 records in every TAG mode
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def interleaved_times(batch_size, image_size, num_tasks, rounds, warmup):
    """Median seconds per step of each mode, the modes taking turns step by step.

    tag_every_10 is timed over whole 10-step windows (one recording step each), reported
    per step; the others per single step.
    """
    import numpy as np  # pylint: disable=import-outside-toplevel
    fns = _step_fns(MODES, batch_size, image_size, num_tasks)
    for _, step in fns.values():
        for _ in range(warmup):
            step()
    times = {mode: [] for mode in MODES}
    for _ in range(rounds):
        for mode, (model, step) in fns.items():
            if mode == "tag_every_10":
                model.train_step_counter.assign(0)
                start = time.perf_counter()
                for _ in range(10):
                    step()
                times[mode].append((time.perf_counter() - start) / 10)
            else:
                start = time.perf_counter()
                step()
                times[mode].append(time.perf_counter() - start)
    return {mode: float(np.median(values)) for mode, values in times.items()}


def _time_rounds(fns, rounds, warmup):
    """Median seconds per step of each entry of ``fns``, taking turns step by step."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    for _, step in fns.values():
        for _ in range(warmup):
            step()
    times = {key: [] for key in fns}
    for _ in range(rounds):
        for key, (model, step) in fns.items():
            steps = 10 if key[-1] == "tag_every_10" else 1
            if steps > 1:
                model.train_step_counter.assign(0)
            start = time.perf_counter()
            for _ in range(steps):
                step()
            times[key].append((time.perf_counter() - start) / steps)
    return {key: float(np.median(values)) for key, values in times.items()}


def mirrored_comparison(batch_size, image_size, num_tasks, rounds, warmup, replicas):
    """TAG / plain under one replica and under ``replicas`` MirroredStrategy replicas."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tag_tf import pipeline  # pylint: disable=import-outside-toplevel
    if not tf.config.list_physical_devices("GPU"):
        pipeline.split_cpu(replicas)  # before TensorFlow starts
    mirrored = pipeline.make_strategy("mirrored")
    modes = ("plain", "tag_every_1", "tag_every_10")
    fns = {}
    for label, strategy in (("1", None), (str(mirrored.num_replicas_in_sync), mirrored)):
        for mode, entry in _step_fns(modes, batch_size, image_size, num_tasks,
                                     strategy).items():
            fns[(label, mode)] = entry
    seconds = _time_rounds(fns, rounds, warmup)
    labels = sorted({label for label, _ in fns}, key=int)
    devices = list(mirrored.extended.worker_devices)
    print(f"\nglobal batch {batch_size}, {image_size}x{image_size}, {num_tasks} tasks, "
          f"{os.cpu_count()} CPU cores; mirrored over {devices}")
    print("| replicas | plain s/step | TAG every 1 s/step | TAG every 10 s/step | "
          "TAG step / plain | TAG every 10 / plain |")
    print("|---|---|---|---|---|---|")
    for label in labels:
        plain = seconds[(label, "plain")]
        every_1, every_10 = seconds[(label, "tag_every_1")], seconds[(label, "tag_every_10")]
        print(f"| {label} | {plain:.3f} | {every_1:.3f} | {every_10:.3f} | "
              f"{every_1 / plain:.2f} | {every_10 / plain:.2f} |")


def main(argv):
    del argv
    if FLAGS.strategy == "mirrored":
        mirrored_comparison(FLAGS.batch_size, FLAGS.image_size, FLAGS.tasks, FLAGS.steps,
                            FLAGS.warmup, FLAGS.replicas)
        return
    if FLAGS.mode:
        print("RESULT " + json.dumps({"peak_rss_mib": peak_memory(
            FLAGS.mode, FLAGS.batch_size, FLAGS.image_size, FLAGS.tasks)}))
        return
    peaks = {}
    for mode in MODES:
        cmd = [sys.executable, "-m", "benchmarks.affinity_overhead", f"--mode={mode}",
               f"--batch_size={FLAGS.batch_size}", f"--image_size={FLAGS.image_size}",
               f"--tasks={FLAGS.tasks}"]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
        peaks[mode] = json.loads(out.split("RESULT ", 1)[1])["peak_rss_mib"]
        print(f"{mode:>13}: peak RSS {peaks[mode]:.0f} MiB", flush=True)
    seconds = interleaved_times(FLAGS.batch_size, FLAGS.image_size, FLAGS.tasks, FLAGS.steps,
                                FLAGS.warmup)
    for mode in MODES:
        print(f"{mode:>13}: {seconds[mode]:.3f} s/step (median of {FLAGS.steps}, interleaved)")
    plain, affinity = seconds["plain"], seconds["tag_every_1"]
    naive, every_10 = seconds["naive"], seconds["tag_every_10"]
    print(f"\nbatch {FLAGS.batch_size}, {FLAGS.image_size}x{FLAGS.image_size}, "
          f"{FLAGS.tasks} tasks, {os.cpu_count()} CPU cores")
    print("| measure | value | target |")
    print("|---|---|---|")
    print(f"| naive affinity step / plain step | {naive / plain:.2f} | (reference) |")
    print(f"| TAG affinity step / plain step | {affinity / plain:.2f} | |")
    print(f"| TAG affinity step / naive step | {affinity / naive:.2f} | <= 0.6 |")
    print(f"| TAG every 10 / plain (overall) | {every_10 / plain:.2f} | <= 1.35 |")
    print(f"| naive every 10 / plain (overall) | {(9 * plain + naive) / 10 / plain:.2f} | |")
    for mode in MODES[1:]:
        print(f"| peak RSS {mode} / plain | {peaks[mode] / peaks['plain']:.2f} | "
              f"{'<= 1.5' if mode.startswith('tag') else ''} |")


if __name__ == "__main__":
    app.run(main)
