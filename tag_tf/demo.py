r"""TAG on the built-in planted-cluster data: train once, print affinities and groups.

  python -m tag_tf.demo --output_dir=runs/demo
  python -m tag_tf.demo --seeds=5 --output_dir=runs/demo_seeds   # robust across seeds?

See :func:`tag_tf.synthetic.demo.run_demo` for what it does and writes. It ends with two
verdicts: whether every task trained, and whether b = --clusters recovered the planted clusters.
One run can only say whether the grouping is stable against its own batch noise;
``--seeds=K`` trains K seeds on the same problem, pools them
(:func:`tag_tf.synthetic.demo.run_demo_seeds`) and says whether it is robust across seeds.
Installed with pip, the same tool is the ``tag-tf-demo`` command; a bad flag value prints one
``error: ...`` line and exits with status 2 (:mod:`tag_tf.cli.errors`).
"""

import tag_tf.cli.quiet  # noqa: F401  (first: quiets TensorFlow's C++ logs without a GPU)

from absl import flags

from tag_tf.cli import errors
from tag_tf.cli.checks import check_budgets, parse_budgets
from tag_tf.synthetic.demo import DEFAULTS, run_demo, run_demo_seeds

FLAGS = flags.FLAGS
flags.DEFINE_integer("tasks", DEFAULTS["num_tasks"], "Number of synthetic tasks.", lower_bound=2)
flags.DEFINE_integer("clusters", DEFAULTS["num_clusters"],
                     "Number of planted task clusters (1 to --tasks).", lower_bound=1)
flags.DEFINE_integer("steps", DEFAULTS["steps"], "Training steps.", lower_bound=1)
flags.DEFINE_integer("steps_per_epoch", DEFAULTS["steps_per_epoch"],
                     "Steps per epoch (one affinity trace entry each).", lower_bound=1)
flags.DEFINE_integer("batch_size", DEFAULTS["batch_size"], "Batch size.", lower_bound=1)
flags.DEFINE_float("learning_rate", DEFAULTS["learning_rate"], "SGD learning rate (momentum 0.9).")
flags.DEFINE_integer("every_n", DEFAULTS["every_n"], "Record the affinity every n steps.",
                     lower_bound=1)
flags.DEFINE_integer("bottleneck", DEFAULTS["bottleneck"],
                     "Width of the shared bottleneck layer (shared_2).", lower_bound=1)
flags.DEFINE_enum("activation", DEFAULTS["activation"], ["tanh", "relu", "leaky_relu", "gelu"],
                  "Hidden activation of trunk and heads (tanh cannot die, unlike relu).")
flags.DEFINE_enum("rule", DEFAULTS["rule"], ["sgd", "optimizer"], "Lookahead update rule.")
flags.DEFINE_integer("seed", DEFAULTS["seed"],
                     "Seed of the data, the initialisation and the shuffling.")
flags.DEFINE_list("budgets", [str(b) for b in DEFAULTS["budgets"]],
                  "Network budgets to select groups for (1 to --tasks).")
flags.DEFINE_string("output_dir", "runs/demo", "Where to write affinity.json/.npz/.png.")
flags.DEFINE_integer("seeds", 1, "Trainings with seeds seed, seed+1, ... on one problem, pooled "
                     "(K >= 2: the verdict can say 'robust' across seeds; each run in "
                     "output_dir/seed_<s>/).", lower_bound=1)
flags.register_validator("learning_rate", lambda value: value > 0,
                         message="--learning_rate must be > 0")
flags.register_multi_flags_validator(
    ["tasks", "clusters"], lambda v: v["clusters"] <= v["tasks"],
    message="--clusters cannot exceed --tasks (each cluster holds at least one task)")


def main(argv):
    if len(argv) > 1:
        raise errors.UsageError(f"Unexpected arguments: {argv[1:]}. Pass flags only; --help "
                                "lists them.")
    budgets = check_budgets(parse_budgets(FLAGS.budgets), FLAGS.tasks)
    settings = dict(num_tasks=FLAGS.tasks, num_clusters=FLAGS.clusters, steps=FLAGS.steps,
                    steps_per_epoch=FLAGS.steps_per_epoch, batch_size=FLAGS.batch_size,
                    learning_rate=FLAGS.learning_rate, every_n=FLAGS.every_n, rule=FLAGS.rule,
                    seed=FLAGS.seed, budgets=budgets, output_dir=FLAGS.output_dir,
                    bottleneck=FLAGS.bottleneck, activation=FLAGS.activation)
    if FLAGS.seeds > 1:
        run_demo_seeds(seeds=FLAGS.seeds, **settings)
    else:
        run_demo(**settings)


def run() -> None:
    """The ``tag-tf-demo`` console script (and ``python -m tag_tf.demo``)."""
    errors.run(main)


if __name__ == "__main__":
    run()
