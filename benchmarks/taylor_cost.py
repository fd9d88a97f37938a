r"""Cost of a first-order ("taylor") recording step against an exact lookahead one.

  python -m benchmarks.taylor_cost --batch_size=32 --image_size=32 --tasks=9

CelebA trunk with ``--tasks`` Dense(2) heads, SGD with momentum, a recording step on every
step (``every_n=1``). The modes (plain Keras step, TAG lookahead, Taylor, and cosine: the
per-task gradients alone, a floor for any gradient-based measure) take turns
step by step in one process (medians of interleaved steps compare fairly on a noisy
machine). Prints seconds per step and the ratios. Never used by tests.
"""

from __future__ import annotations

import tag_tf.quiet  # noqa: F401  (first: quiets TensorFlow's C++ logs without a GPU)

import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 32, "Batch size (paper: 256).")
flags.DEFINE_integer("image_size", 32, "Image side (paper: 64).")
flags.DEFINE_integer("tasks", 9, "Number of Dense(2) heads.")
flags.DEFINE_integer("steps", 5, "Timed rounds (one step of each mode per round).")
flags.DEFINE_integer("warmup", 2, "Untimed steps (tracing) per mode.")

MODES = {"plain": None, "lookahead": ("lookahead",), "taylor": ("taylor",), "cosine": ("cosine",)}


def step_functions(batch_size: int, image_size: int, num_tasks: int) -> dict:
    """One training-step callable per mode, on a fixed random batch."""
    import keras  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel

    import tag_tf  # pylint: disable=import-outside-toplevel
    from celeba.model import TRUNK_LAYERS, celeba_network  # pylint: disable=import-outside-toplevel
    tasks = [f"task_{k}" for k in range(num_tasks)]
    rng = np.random.default_rng(0)
    x = rng.random((batch_size, image_size, image_size, 3), dtype=np.float32)
    y = {t: rng.integers(0, 2, size=(batch_size,)) for t in tasks}
    fns = {}
    for mode, measures in MODES.items():
        keras.utils.set_random_seed(0)
        config = tag_tf.AffinityConfig(every_n=1, measures=measures) if measures else None
        model = tag_tf.MultiTaskModel(celeba_network(tasks, image_size=image_size),
                                      shared=list(TRUNK_LAYERS), affinity=config)
        model.compile(optimizer=keras.optimizers.SGD(5e-4, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        fns[mode] = lambda model=model: model.train_on_batch(x, y)
    return fns


def interleaved_medians(fns: dict, rounds: int, warmup: int) -> dict:
    """Median seconds per step of each mode, the modes taking turns."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    for step in fns.values():
        for _ in range(warmup):
            step()
    times = {mode: [] for mode in fns}
    for _ in range(rounds):
        for mode, step in fns.items():
            start = time.perf_counter()
            step()
            times[mode].append(time.perf_counter() - start)
    return {mode: float(np.median(values)) for mode, values in times.items()}


def main(argv):
    del argv
    seconds = interleaved_medians(step_functions(FLAGS.batch_size, FLAGS.image_size,
                                                 FLAGS.tasks), FLAGS.steps, FLAGS.warmup)
    print(f"batch {FLAGS.batch_size}, {FLAGS.image_size}x{FLAGS.image_size}, {FLAGS.tasks} "
          f"tasks, medians of {FLAGS.steps} interleaved steps")
    print("| plain s/step | lookahead s/step | taylor s/step | taylor / lookahead | "
          "lookahead / plain | taylor / plain |")
    print("|---|---|---|---|---|---|")
    plain, exact, taylor = seconds["plain"], seconds["lookahead"], seconds["taylor"]
    print(f"| {plain:.3f} | {exact:.3f} | {taylor:.3f} | {taylor / exact:.2f} | "
          f"{exact / plain:.2f} | {taylor / plain:.2f} |")
    print(f"cosine (per-task gradients only): {seconds['cosine']:.3f} s/step = "
          f"{seconds['cosine'] / exact:.2f} x lookahead")


if __name__ == "__main__":
    app.run(main)
