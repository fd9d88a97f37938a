r"""TAG on the built-in planted-cluster data: train once, print affinities and groups.

  python -m tag_tf.demo --output_dir=runs/demo

See :func:`tag_tf.planted_demo.run_demo` for what it does and writes.
"""

import tag_tf.quiet  # noqa: F401  (first: quiets TensorFlow's C++ logs without a GPU)

from absl import app, flags

from tag_tf.planted_demo import run_demo

FLAGS = flags.FLAGS
flags.DEFINE_integer("tasks", 9, "Number of synthetic tasks.")
flags.DEFINE_integer("clusters", 3, "Number of planted task clusters.")
flags.DEFINE_integer("steps", 2000, "Training steps.")
flags.DEFINE_integer("steps_per_epoch", 200, "Steps per epoch (one affinity trace entry each).")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_float("learning_rate", 0.05, "SGD learning rate (momentum 0.9).")
flags.DEFINE_integer("every_n", 10, "Record the affinity every n steps.")
flags.DEFINE_enum("rule", "sgd", ["sgd", "optimizer"], "Lookahead update rule.")
flags.DEFINE_integer("seed", 0, "Seed of the data, the initialisation and the shuffling.")
flags.DEFINE_list("budgets", ["2", "3", "4"], "Network budgets to select groups for.")
flags.DEFINE_string("output_dir", "runs/demo", "Where to write affinity.json/.npz/.png.")


def main(argv):
    del argv
    budgets = [int(b) for b in FLAGS.budgets]
    run_demo(num_tasks=FLAGS.tasks, num_clusters=FLAGS.clusters, steps=FLAGS.steps,
             steps_per_epoch=FLAGS.steps_per_epoch, batch_size=FLAGS.batch_size,
             learning_rate=FLAGS.learning_rate, every_n=FLAGS.every_n, rule=FLAGS.rule,
             seed=FLAGS.seed, budgets=budgets, output_dir=FLAGS.output_dir)


if __name__ == "__main__":
    app.run(main)
